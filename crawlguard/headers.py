"""Which headers cross the proxy (RFC 9110 §7.6.1): hop-by-hop and proxy headers end at the proxy,
and `X-Crawlguard-*` is ours alone in both directions.

Pure: works on any mapping with case-insensitive `get_all`-free access (mitmproxy's `Headers`,
a dict in tests), so the policy is unit-tested without a flow.
"""

from __future__ import annotations

from collections.abc import MutableMapping

OUR_PREFIX = "x-crawlguard-"

# Hop-by-hop fields (RFC 9110 §7.6.1) plus Via (a tenant could forge a proxy chain) and Upgrade:
# crawlguard forwards no protocol switch, since bytes after a 101 would bypass every check.
# Transfer-Encoding and TE framing is mitmproxy's own business; it re-frames bodies itself.
_REQUEST_DROP = frozenset(
    {"keep-alive", "proxy-connection", "upgrade", "via", "te", "trailer", "http2-settings"}
)
_RESPONSE_DROP = frozenset({"keep-alive", "proxy-connection", "upgrade", "proxy-authenticate"})


def _connection_tokens(headers: MutableMapping[str, str]) -> set[str]:
    value = headers.get("Connection") or ""
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def _strip(headers: MutableMapping[str, str], drop: frozenset[str]) -> list[str]:
    """Remove hop-by-hop fields, the ones `Connection` names, `Proxy-*` and `X-Crawlguard-*`.

    `Connection: close` is kept (it only asks to close this hop); any other Connection value
    goes. Returns the names removed, lower-case, for tests and debugging.
    """
    tokens = _connection_tokens(headers)
    removed: list[str] = []
    for name in list(headers.keys()):
        low = name.lower()
        if (
            low in drop or low in tokens or low.startswith("proxy-") or low.startswith(OUR_PREFIX)
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
