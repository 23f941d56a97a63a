"""Which headers cross the proxy (RFC 9110 §7.6.1), and which request heads cannot be forwarded
as decided at all.

Hop-by-hop and proxy headers end at the proxy, and `X-Crawlguard-*` is ours alone in both
directions. But a `Connection` token may never take away what frames the message or what a
decision read: mitmproxy has framed the body with `Content-Length` / `Transfer-Encoding`
before any hook runs, so deleting them afterwards turns the body into a second request that
nobody decided on (request smuggling). Such a request is refused whole (`head_problem`), and
the strip never removes those fields (`NEVER_HOP_BY_HOP`), whatever called it.

Pure: works on any mapping with case-insensitive access (mitmproxy's `Headers`, a dict in
tests) and on raw `(name, value)` byte pairs, so the policy is unit-tested without a flow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping

OUR_PREFIX = "x-crawlguard-"

# Hop-by-hop fields (RFC 9110 §7.6.1) plus Via (a tenant could forge a proxy chain) and Upgrade:
# crawlguard forwards no protocol switch, since bytes after a 101 would bypass every check.
# Transfer-Encoding and TE framing is mitmproxy's own business; it re-frames bodies itself.
_REQUEST_DROP = frozenset(
    {"keep-alive", "proxy-connection", "upgrade", "via", "te", "trailer", "http2-settings"}
)
_RESPONSE_DROP = frozenset({"keep-alive", "proxy-connection", "upgrade", "proxy-authenticate"})

FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
"""What delimits a message and names its target: parsed before any hook, so never removable."""
NEVER_HOP_BY_HOP = FRAMING | {"user-agent"}
"""Fields a `Connection` token may not name: the framing, and what the decision keyed on."""

# RFC 9110 §5.5: a field value is VCHAR, obs-text, SP and HTAB. Everything else in the C0 range
# and DEL (NUL, a bare CR or LF, VT, ESC...) is refused, in names as well as values.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def head_problem(fields: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request head cannot be forwarded exactly as decided, or None.

    `fields`: the header fields as received, in order (mitmproxy's `Headers.fields`). A control
    character in any name or value (obs-fold included: mitmproxy keeps its CRLF), a second
    `Host`, or a `Connection` token naming a field in `NEVER_HOP_BY_HOP`, makes the head
    ambiguous between the proxy and the origin.
    """
    connection: set[str] = set()
    hosts = 0
    for name, value in fields:
        if _CONTROL.search(name) or _CONTROL.search(value):
            shown = name.decode("latin-1")[:60]
            return f"header {shown!r} contains a control character (RFC 9110 §5.5)"
        low = name.lower()
        if low == b"connection":
            connection |= _tokens(value.decode("latin-1"))
        elif low == b"host":
            hosts += 1
    if hosts > 1:  # RFC 9112 §3.2: which one an origin reads is anyone's guess
        return "more than one Host header"
    named = sorted(connection & NEVER_HOP_BY_HOP)
    if named:
        return (
            f"the Connection header names {', '.join(named)}, which must reach the origin as "
            "the proxy read it (a proxy that removed it would send the body as another request)"
        )
    return None


def _strip(headers: MutableMapping[str, str], drop: frozenset[str]) -> list[str]:
    """Remove hop-by-hop fields, the ones `Connection` names, `Proxy-*` and `X-Crawlguard-*`.

    `Connection: close` is kept (it only asks to close this hop); any other Connection value
    goes. A `Connection` token never removes a `NEVER_HOP_BY_HOP` field. Returns the names
    removed, lower-case, for tests and debugging.
    """
    tokens = _tokens(headers.get("Connection"))
    named = tokens - NEVER_HOP_BY_HOP
    removed: list[str] = []
    for name in list(headers.keys()):
        low = name.lower()
        if (
            low in drop or low in named or low.startswith("proxy-") or low.startswith(OUR_PREFIX)
        ) and name in headers:
            del headers[name]
            removed.append(low)
    if "connection" in {k.lower() for k in headers}:
        if "close" in tokens:
            headers["Connection"] = "close"
        else:
            del headers["Connection"]
            removed.append("connection")
    return removed


def strip_request(headers: MutableMapping[str, str]) -> list[str]:
    """What a tenant sent that must not reach the origin."""
    return _strip(headers, _REQUEST_DROP)


def strip_response(headers: MutableMapping[str, str]) -> list[str]:
    """What an origin sent that must not reach the tenant (crawlguard then adds its own)."""
    return _strip(headers, _RESPONSE_DROP)
