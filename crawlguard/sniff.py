"""What the first bytes inside a CONNECT tunnel are, before mitmproxy picks a layer for them.

mitmproxy relays bytes that do not look like HTTP as raw TCP; a raw relay would skip every
check. crawlguard lets a tunnel carry only TLS or HTTP/1 requests: anything else is closed.
"""

from __future__ import annotations

import re
from enum import StrEnum


class FirstBytes(StrEnum):
    TLS = "tls"
    HTTP = "http"
    MORE = "more"  # could still become an HTTP request line: wait for more bytes
    OTHER = "other"


MAX_REQUEST_LINE = 16 * 1024
# RFC 9112 §3: method SP request-target SP HTTP-version. The target may not hold spaces or
# controls; mitmproxy and the origin parse the rest.
_REQUEST_LINE = re.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} [\x21-\x7e\x80-\xff]+ HTTP/\d\.\d\r?"
)
_PREFIX_OK = re.compile(rb"[\x20-\x7e\x80-\xff\r]*")
_EMPTY_LINES = re.compile(rb"(?:\r?\n)+")


def leading_empty_lines(data: bytes) -> int:
    """Bytes of empty lines before a request line (RFC 9112 §2.2: a server ignores them)."""
    m = _EMPTY_LINES.match(data)
    return m.end() if m else 0


def classify(data: bytes) -> FirstBytes:
    if data[:1] == b"\x16":  # a TLS handshake record; mitmproxy's TLS layer validates the rest
        return FirstBytes.TLS
    data = data[leading_empty_lines(data) :]
    line, newline, _ = data.partition(b"\n")
    if not newline:
        if len(data) > MAX_REQUEST_LINE or not _PREFIX_OK.fullmatch(data):
            return FirstBytes.OTHER
        return FirstBytes.MORE
    return FirstBytes.HTTP if _REQUEST_LINE.fullmatch(line) else FirstBytes.OTHER
