"""The one place crawlguard changes mitmproxy's behaviour beyond its addon API.

* mitmproxy writes some HTTP/1 error responses itself (an unreadable request: 400; an origin
  it could not reach: 502), bypassing every hook. crawlguard's contract is that every response
  it or its engine makes says `X-Crawlguard-Decision`; `make_error_response` is wrapped.
* mitmproxy buffers a client's request head without limit before any hook (and so before
  authentication) runs: one client could make it hold gigabytes. `Http1Server.read_headers`
  is wrapped to answer 414 / 431 and close once the request line or head passes its cap, and
  400 once the empty lines before a request line pass theirs (RFC 9112 §2.2 asks a server to
  ignore at least one, not millions; mitmproxy drops one per read and buffers the rest).
"""

from __future__ import annotations

import re
from typing import Any

from crawlguard.decisions import DECISION_HEADER, Kind

_MARK = "_crawlguard_wrapped"
_EMPTY_LINES = re.compile(rb"(?:\r?\n)+")


class HeadLimits:
    """Caps on what a client sends before a request head is complete: the engine's request
    reader (here) and the tunnel sniffer (crawlguard.sniff) read the running values.
    `line` and `head` are set from the config (`proxy.max_request_line/head`)."""

    line = 16 * 1024
    head = 64 * 1024
    empty_lines = 4 * 1024  # bytes of empty lines before a request line


def leading_empty_lines(data: bytes | bytearray) -> int:
    """Bytes of empty lines before a request line (RFC 9112 §2.2: a server ignores them);
    looks at no more than `HeadLimits.empty_lines + 2` bytes (a CRLF may straddle the cap), so
    a result above the cap means "too many" whatever the buffer holds."""
    m = _EMPTY_LINES.match(data, 0, HeadLimits.empty_lines + 2)
    return m.end() if m else 0


def head_problem(data: bytes | bytearray) -> tuple[int, str] | None:
    """(status, message) when a buffered, still incomplete request head is over its caps."""
    start = leading_empty_lines(data)
    if start > HeadLimits.empty_lines:
        return 400, f"more than {HeadLimits.empty_lines} bytes of empty lines before a request"
    size = len(data) - start
    if size > HeadLimits.line and data.find(b"\n", start, start + HeadLimits.line + 1) < 0:
        return 414, f"request line longer than {HeadLimits.line} bytes"
    end = start + HeadLimits.head
    if (
        size > HeadLimits.head
        and data.find(b"\n\r\n", start, end) < 0
        and (data.find(b"\n\n", start, end) < 0)
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


def install_connection_close() -> None:
    """mitmproxy closes a connection by cancelling the task that reads it. When the cancel
    lands while that task waits for the connection's event lock (a hook of the same client is
    finishing: a 400/414/431 refusal of bytes mitmproxy buffered during `next_layer` is one),
    the task ends without closing its socket: open, unread, no longer counted by
    ClientLimits, its kernel buffers full, until garbage collection. `handle_connection` is
    wrapped to close whatever it leaves open, however it ends."""
    from mitmproxy.proxy import server

    original = server.ConnectionHandler.handle_connection
    if getattr(original, _MARK, False):
        return

    async def handle_connection(self: Any, connection: Any) -> None:
        try:
            await original(self, connection)
        finally:
            left = self.transports.pop(connection, None)  # the normal path popped it already
            if left is not None and left.writer is not None and not left.writer.is_closing():
                left.writer.close()

    setattr(handle_connection, _MARK, True)
    server.ConnectionHandler.handle_connection = handle_connection  # type: ignore[method-assign]


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
            if cut := leading_empty_lines(self.buf._data):  # mitmproxy would drop one per read
                rest = self.buf._data[cut:]
                self.buf = type(self.buf)()
                self.buf += rest
        yield from read_headers(self, event)

    _http1.Http1Server.read_headers = capped_read_headers  # type: ignore[method-assign]
