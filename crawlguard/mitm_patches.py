"""The one place crawlguard changes mitmproxy's behaviour beyond its addon API.

mitmproxy writes some HTTP/1 error responses itself (an unreadable request: 400; an origin it
could not reach: 502), bypassing every hook. crawlguard's contract is that every response it
or its engine makes says `X-Crawlguard-Decision`; this wraps that one function.
"""

from __future__ import annotations

from crawlguard.decisions import DECISION_HEADER, Kind

_MARK = "_crawlguard_wrapped"


def decision_for_error(status: int, message: str) -> str:
    """The decision behind an engine-made error: a request it could not read is invalid; a
    connect refused by crawlguard's last gate is a forbidden destination; any other failure
    came after the request was allowed (the origin failed, not the policy)."""
    if "crawlguard:" in message:
        return Kind.DESTINATION_FORBIDDEN.value
    if 400 <= status < 500:
        return Kind.REQUEST_INVALID.value
    return Kind.ALLOWED.value


def install() -> None:
    from mitmproxy.proxy.layers.http import _http1

    original = _http1.make_error_response
    if getattr(original, _MARK, False):
        return

    def make_error_response(status_code: int, message: str = "") -> bytes:
        raw = original(status_code, message)
        head, sep, body = raw.partition(b"\r\n\r\n")
        header = f"\r\n{DECISION_HEADER}: {decision_for_error(status_code, message)}".encode()
        return head + header + sep + body

    setattr(make_error_response, _MARK, True)
    _http1.make_error_response = make_error_response
