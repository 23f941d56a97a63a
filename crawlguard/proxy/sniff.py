"""What the first bytes inside a CONNECT tunnel are, before mitmproxy picks a layer for them.

mitmproxy relays bytes that do not look like HTTP as raw TCP; a raw relay would skip every
check. crawlguard lets a tunnel carry only TLS or HTTP/1 requests: anything else is closed.
"""

from __future__ import annotations

import re
from enum import StrEnum

from crawlguard.proxy.compat import HeadLimits, leading_empty_lines

__all__ = ["FirstBytes", "classify", "leading_empty_lines"]


class FirstBytes(StrEnum):
    TLS = "tls"
    HTTP = "http"
    MORE = "more"  # could still become an HTTP request line: wait for more bytes
    OTHER = "other"


# RFC 9112 §3: method SP request-target SP HTTP-version. The target may not hold spaces or
# controls; mitmproxy and the origin parse the rest.
_REQUEST_LINE = re.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} [\x21-\x7e\x80-\xff]+ HTTP/\d\.\d\r?"
)
_PREFIX_OK = re.compile(rb"[\x20-\x7e\x80-\xff\r]*")


def classify(data: bytes) -> FirstBytes:
    """What `data` is; MORE only while it is within the running request-line and empty-line
    caps (`HeadLimits`), since mitmproxy holds every byte of a tunnel until a layer is chosen."""
    if data[:1] == b"\x16":  # a TLS handshake record; mitmproxy's TLS layer validates the rest
        return FirstBytes.TLS
    start = leading_empty_lines(data)
    if start > HeadLimits.empty_lines:
        return FirstBytes.OTHER
    data = data[start:]
    line, newline, _ = data.partition(b"\n")
    if not newline:
        if len(data) > HeadLimits.line or not _PREFIX_OK.fullmatch(data):
            return FirstBytes.OTHER
        return FirstBytes.MORE
    return FirstBytes.HTTP if _REQUEST_LINE.fullmatch(line) else FirstBytes.OTHER
