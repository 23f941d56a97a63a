"""The one place crawlguard changes mitmproxy's behaviour beyond its addon API.

* mitmproxy writes some HTTP/1 error responses itself (an unreadable request: 400; an origin
  it could not reach: 502), bypassing every hook. crawlguard's contract is that every response
  it or its engine makes says `X-Crawlguard-Decision`; `make_error_response` is wrapped.
* Those engine-made refusals are also decisions about a tenant's request when the tenant is
  known (inside its tunnel, or from the head's `Proxy-Authorization`): before the engine sends
  one, `Http1Server` yields an `EngineRefusalHook`, a blocking hook like mitmproxy's own, so
  crawlguard records it (durably, before the answer) like any refusal it makes itself.
* mitmproxy buffers a client's request head without limit before any hook (and so before
  authentication) runs: one client could make it hold gigabytes. `Http1Server.read_headers`
  is wrapped to answer 414 / 431 and close once the request line or head passes its cap, and
  400 once the empty lines before a request line pass theirs (RFC 9112 §2.2 asks a server to
  ignore at least one, not millions; mitmproxy drops one per read and buffers the rest).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar

from mitmproxy.proxy import commands

from crawlguard.policy.decisions import DECISION_HEADER, Kind

_MARK = "_crawlguard_wrapped"
_EMPTY_LINES = re.compile(rb"(?:\r?\n)+")


class HeadLimits:
    """Caps on what a client sends before a request head is complete: the engine's request
    reader (here) and the tunnel sniffer (crawlguard.proxy.sniff) read the running values.
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


@dataclass
class EngineRefusal:
    """An error response mitmproxy's HTTP/1 server is about to send on its own."""

    client: Any  # mitmproxy.connection.Client
    status: int
    message: str
    request: Any | None  # mitmproxy.http.Request, when the head could be parsed
    head: bytes  # the raw head bytes read so far, when it could not


@dataclass
class EngineRefusalHook(commands.StartHook):
    """Calls `crawlguard_engine_refusal(refusal)` on the addons and waits for it."""

    refusal: EngineRefusal
    name: ClassVar[str] = "crawlguard_engine_refusal"


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


# id(bytes) -> (those bytes, status, message) of error responses made and not yet sent: lets
# the read_headers wrapper tell an engine refusal from other data without parsing it back.
_MADE: dict[int, tuple[bytes, int, str]] = {}


def _made(raw: bytes) -> tuple[int, str] | None:
    entry = _MADE.pop(id(raw), None)
    if entry is None or entry[0] is not raw:
        return None
    return entry[1], entry[2]


def _refusal_hook(
    conn: Any, status: int, message: str, request: Any | None, head: bytes
) -> EngineRefusalHook | None:
    if decision_for_error(status, message) == Kind.ALLOWED.value:
        return None  # the origin failed: nothing was refused
    return EngineRefusalHook(EngineRefusal(conn, status, message, request, head))


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
    from mitmproxy.proxy import events
    from mitmproxy.proxy.layers.http import ResponseProtocolError, _http1

    original = _http1.make_error_response
    if getattr(original, _MARK, False):
        return

    def make_error_response(status_code: int, message: str = "") -> bytes:
        raw = original(status_code, message)
        head, sep, body = raw.partition(b"\r\n\r\n")
        header = f"\r\n{DECISION_HEADER}: {decision_for_error(status_code, message)}".encode()
        made = head + header + sep + body
        if len(_MADE) > 64:  # never sent (the connection went first): forget them
            _MADE.clear()
        _MADE[id(made)] = (made, status_code, message)
        return made

    setattr(make_error_response, _MARK, True)
    _http1.make_error_response = make_error_response

    read_headers = _http1.Http1Server.read_headers

    def capped_read_headers(self: Any, event: Any) -> Generator[Any, Any, None]:
        if getattr(self, _MARK, False):  # refused: hold nothing more, ask again to close
            self.buf = type(self.buf)()
            yield commands.CloseConnection(self.conn)
            return
        head = b""
        if isinstance(event, events.DataReceived):
            head = bytes(self.buf)
            problem = head_problem(head)
            if problem is not None:
                status, message = problem
                setattr(self, _MARK, True)
                self.buf = type(self.buf)()  # drop what was held
                hook = _refusal_hook(self.conn, status, message, None, head)
                if hook is not None:
                    yield hook
                yield commands.SendData(self.conn, make_error_response(status, message))
                yield commands.CloseConnection(self.conn)
                return
            if cut := leading_empty_lines(head):  # mitmproxy would drop one per read
                head = head[cut:]
                self.buf = type(self.buf)()
                self.buf += head
        yield from _announce_refusals(read_headers(self, event), self, head)

    _http1.Http1Server.read_headers = capped_read_headers  # type: ignore[method-assign]

    send = _http1.Http1Server.send

    def announced_send(self: Any, event: Any) -> Generator[Any, Any, None]:
        if isinstance(event, ResponseProtocolError) and self.response is None:
            status = event.code.http_status_code()
            if status is not None:
                hook = _refusal_hook(self.conn, status, event.message, self.request, b"")
                if hook is not None:
                    yield hook
        yield from send(self, event)

    _http1.Http1Server.send = announced_send  # type: ignore[method-assign]

    from mitmproxy.proxy.layers.http import HttpStream

    start_request_stream = HttpStream.start_request_stream

    def answer_or_stream(self: Any) -> Generator[Any, Any, None]:
        """A request whose body mitmproxy streams (over `stream_large_bodies`, or a chunked one
        growing past it) and that a hook refused on its head: mitmproxy raises here (a response
        and a stream at once), and the client's every next chunk logs the error again. Answer
        the refusal now instead, read none of the body, and close the connection."""
        if self.flow.response is None:
            yield from start_request_stream(self)
            return
        self.flow.response.headers["Connection"] = "close"
        self.client_state = self.state_errored  # the rest of the body is dropped unread
        yield from self.send_response()
        yield commands.CloseConnection(self.context.client)

    HttpStream.start_request_stream = answer_or_stream  # type: ignore[method-assign]


def _announce_refusals(
    gen: Generator[Any, Any, None], server: Any, head: bytes
) -> Generator[Any, Any, None]:
    """Pass `gen`'s commands through, with an `EngineRefusalHook` before each error response
    it sends (a request line or head mitmproxy could not parse)."""
    sent: Any = None
    while True:
        try:
            command = gen.send(sent)
        except StopIteration:
            return
        if isinstance(command, commands.SendData) and command.connection is server.conn:
            made = _made(command.data)
            if made is not None:
                hook = _refusal_hook(server.conn, made[0], made[1], server.request, head)
                if hook is not None:
                    yield hook
        sent = yield command
