"""The one place crawlguard changes mitmproxy's behaviour beyond its addon API.

* mitmproxy writes some HTTP/1 error responses itself (an unreadable request: 400; an origin
  it could not reach: 502), bypassing every hook. crawlguard's contract is that every response
  it or its engine makes says `X-Crawlguard-Decision`; `make_error_response` is wrapped.
* mitmproxy buffers a client's request head without limit before any hook (and so before
  authentication) runs: one client could make it hold gigabytes. `Http1Server.read_headers`
  is wrapped to answer 414 / 431 and close once the request line or head passes its cap.
"""

from __future__ import annotations

from typing import Any

from crawlguard.decisions import DECISION_HEADER, Kind

_MARK = "_crawlguard_wrapped"


class HeadLimits:
    """Caps on a request head, set from the config (`proxy.max_request_line/head`)."""

    line = 16 * 1024
    head = 64 * 1024


def head_problem(data: bytes | bytearray) -> tuple[int, str] | None:
    """(status, message) when a buffered, still incomplete request head is over its caps."""
    size = len(data)
    if size > HeadLimits.line and data.find(b"\n", 0, HeadLimits.line + 1) < 0:
        return 414, f"request line longer than {HeadLimits.line} bytes"
    if (
        size > HeadLimits.head
        and data.find(b"\n\r\n", 0, HeadLimits.head) < 0
        and (data.find(b"\n\n", 0, HeadLimits.head) < 0)
    ):
        return 431, f"request head longer than {HeadLimits.head} bytes"
    return None


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

    from mitmproxy.proxy import commands, events

    read_headers = _http1.Http1Server.read_headers

    def capped_read_headers(self: Any, event: Any) -> Any:
        if getattr(self, _MARK, False):  # refused: hold nothing more, ask again to close
            self.buf = type(self.buf)()
            yield commands.CloseConnection(self.conn)
            return
        if isinstance(event, events.DataReceived):
            problem = head_problem(self.buf._data)
            if problem is not None:
                status, message = problem
                setattr(self, _MARK, True)
                self.buf = type(self.buf)()  # drop what was held
                yield commands.SendData(self.conn, make_error_response(status, message))
                yield commands.CloseConnection(self.conn)
                return
        yield from read_headers(self, event)

    _http1.Http1Server.read_headers = capped_read_headers  # type: ignore[method-assign]
