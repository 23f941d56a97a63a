"""Everything crawlguard changes in mitmproxy (and, through mitmproxy's reader, h11) beyond its
addon API, and every mitmproxy internal it reads. No other module of crawlguard patches
mitmproxy or reads its internals; `tests/test_compat.py` has a canary per entry that names the
symbol and signature it relies on and says what would silently stop working on an upgrade.

Nothing here is installed on import, and constructing an addon installs nothing: the entry
points do, once per process (each function is idempotent).

`install()`: mitmproxy's HTTP/1 server, for every connection of the process. `crawlguard run`
(`proxy.master.lean_master`) and the mitmdump script (`addons/crawlguard_addon.py`) call it.

* `_http1.make_error_response`: mitmproxy writes some HTTP/1 error responses itself (an
  unreadable request: 400; an origin it could not reach: 502), bypassing every hook.
  crawlguard's contract is that every response it or its engine makes says
  `X-Crawlguard-Decision`: the wrapper adds it.
* `Http1Server.read_headers`: mitmproxy buffers a client's request head without limit before
  any hook (and so before authentication) runs: one client could make it hold gigabytes. The
  wrapper answers 414 / 431 and closes once the request line or head passes its cap, and 400
  once the empty lines before a request line pass theirs (RFC 9112 §2.2 asks a server to
  ignore at least one, not millions; h11's reader drops one per read and waits, so the wrapper
  drops the rest).
* `Http1Server.read_headers` and `Http1Server.send`: engine-made refusals are decisions about a
  tenant's request when the tenant is known (inside its tunnel, or from the head's
  `Proxy-Authorization`): before the engine sends one, the server yields an
  `EngineRefusalHook`, a blocking hook like mitmproxy's own, so crawlguard records it
  (durably, before the answer) like any refusal it makes itself.
* `HttpStream.start_request_stream`: a request whose body mitmproxy streams and that a hook
  answered on its head makes mitmproxy raise (a response and a stream at once); the wrapper
  answers it, reads none of the body and closes.
* `ConnectionHandler.handle_connection`: a connection whose reading task is cancelled while it
  waits for the connection's event lock ends with its socket open; the wrapper closes it.

`install_lean()`: process-wide, so only for a process that is crawlguard alone (the lean
master); never under mitmdump.

* `http.MessageData.__post_init__`: mitmproxy's debug-mode type check of every HTTP message
  (what `python -O` drops; ~4 % of the proxy's CPU) becomes a no-op.

`listen_on_sockets(socks, backlog)`: a `--workers N` worker only.

* `RegularInstance.listen`: the regular-mode server accepts on sockets the parent bound
  instead of binding host:port itself.

Used, not changed: `replace_addon_manager` (the lean master's `Master.addons`, replaced before
any addon is added), `close_client` (`Proxyserver.connections`, `on_timeout`).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable, Generator
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


def buffered_head_problem(data: bytes | bytearray) -> tuple[int, str] | None:
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


# -- installing and removing patches ---------------------------------------------------------

# (owner, attribute, what it was, whether the owner defined it itself), in install order
_INSTALLED: list[tuple[Any, str, Any, bool]] = []


def _replace(owner: Any, attr: str, make: Callable[[Any], Any]) -> bool:
    """Set `owner.attr` to `make(current)` unless a crawlguard wrapper is already there;
    whether it was installed now."""
    current = getattr(owner, attr)
    if getattr(current, _MARK, False):
        return False
    replacement = make(current)
    setattr(replacement, _MARK, True)
    _INSTALLED.append((owner, attr, current, attr in vars(owner)))
    setattr(owner, attr, replacement)
    return True


def installed() -> list[str]:
    """The patched symbols, as "module.Owner.attribute", in install order."""
    names = []
    for owner, attr, _, _ in _INSTALLED:
        where = getattr(owner, "__qualname__", None)
        module = getattr(owner, "__module__", None) if where else owner.__name__
        names.append(f"{module}.{where}.{attr}" if where else f"{module}.{attr}")
    return names


def uninstall() -> None:
    """Put back everything installed (tests: one process, patched and unpatched)."""
    while _INSTALLED:
        owner, attr, original, owned = _INSTALLED.pop()
        if owned:
            setattr(owner, attr, original)
        else:  # it was inherited: uncover the base class's again
            delattr(owner, attr)


# -- install(): mitmproxy's HTTP/1 server -----------------------------------------------------

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


def install() -> None:
    """The HTTP/1 server patches (the module docstring says what each does and why)."""
    from mitmproxy.proxy import server
    from mitmproxy.proxy.layers.http import HttpStream, _http1

    _replace(_http1, "make_error_response", _decided_error_response)
    _replace(_http1.Http1Server, "read_headers", _capped_read_headers)
    _replace(_http1.Http1Server, "send", _announced_send)
    _replace(HttpStream, "start_request_stream", _answer_or_stream)
    _replace(server.ConnectionHandler, "handle_connection", _closing_handle_connection)


def _decided_error_response(original: Callable[..., bytes]) -> Callable[..., bytes]:
    def make_error_response(status_code: int, message: str = "") -> bytes:
        raw = original(status_code, message)
        head, sep, body = raw.partition(b"\r\n\r\n")
        header = f"\r\n{DECISION_HEADER}: {decision_for_error(status_code, message)}".encode()
        made = head + header + sep + body
        if len(_MADE) > 64:  # never sent (the connection went first): forget them
            _MADE.clear()
        _MADE[id(made)] = (made, status_code, message)
        return made

    return make_error_response


def _error_response(status: int, message: str) -> bytes:
    """mitmproxy's error response as the engine sends it (with the decision header)."""
    from mitmproxy.proxy.layers.http import _http1

    return _http1.make_error_response(status, message)


def _capped_read_headers(read_headers: Callable[..., Any]) -> Callable[..., Any]:
    from mitmproxy.proxy import events

    def capped_read_headers(self: Any, event: Any) -> Generator[Any, Any, None]:
        if getattr(self, _MARK, False):  # refused: hold nothing more, ask again to close
            self.buf = type(self.buf)()
            yield commands.CloseConnection(self.conn)
            return
        head = b""
        if isinstance(event, events.DataReceived):
            head = bytes(self.buf)
            problem = buffered_head_problem(head)
            if problem is not None:
                status, message = problem
                setattr(self, _MARK, True)
                self.buf = type(self.buf)()  # drop what was held
                hook = _refusal_hook(self.conn, status, message, None, head)
                if hook is not None:
                    yield hook
                yield commands.SendData(self.conn, _error_response(status, message))
                yield commands.CloseConnection(self.conn)
                return
            if cut := leading_empty_lines(head):  # h11 would drop one per read
                head = head[cut:]
                self.buf = type(self.buf)()
                self.buf += head
        yield from _announce_refusals(read_headers(self, event), self, head)

    return capped_read_headers


def _announced_send(send: Callable[..., Any]) -> Callable[..., Any]:
    from mitmproxy.proxy.layers.http import ResponseProtocolError

    def announced_send(self: Any, event: Any) -> Generator[Any, Any, None]:
        if isinstance(event, ResponseProtocolError) and self.response is None:
            status = event.code.http_status_code()
            if status is not None:
                hook = _refusal_hook(self.conn, status, event.message, self.request, b"")
                if hook is not None:
                    yield hook
        yield from send(self, event)

    return announced_send


def _answer_or_stream(start_request_stream: Callable[..., Any]) -> Callable[..., Any]:
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

    return answer_or_stream


def _closing_handle_connection(original: Callable[..., Any]) -> Callable[..., Any]:
    async def handle_connection(self: Any, connection: Any) -> None:
        """mitmproxy closes a connection by cancelling the task that reads it. When the
        cancel lands while that task waits for the connection's event lock (a hook of the same
        client is finishing: a 400/414/431 refusal of bytes mitmproxy buffered during
        `next_layer` is one), the task ends without closing its socket: open, unread, no
        longer counted by ClientLimits, its kernel buffers full, until garbage collection."""
        try:
            await original(self, connection)
        finally:
            left = self.transports.pop(connection, None)  # the normal path popped it already
            if left is not None and left.writer is not None and not left.writer.is_closing():
                left.writer.close()

    return handle_connection


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


# -- install_lean(): a process that is crawlguard alone ---------------------------------------


def install_lean() -> None:
    """Process-wide changes only the lean master may make (never under mitmdump)."""
    from mitmproxy import http

    # The dataclasses' generated __init__ calls self.__post_init__() (mitmproxy defines it
    # only when __debug__): keep a no-op.
    if "__post_init__" in vars(http.MessageData):
        _replace(http.MessageData, "__post_init__", lambda _check: _no_check)


def _no_check(self: Any) -> None:
    return None


# -- listen_on_sockets(): a --workers N worker ------------------------------------------------


@dataclass
class _Inherited:
    """The sockets a worker accepts on, and how many connections it takes per wake-up."""

    socks: tuple[socket.socket, ...] = ()
    backlog: int = 100


_INHERITED = _Inherited()


def listen_on_sockets(socks: list[socket.socket], backlog: int) -> None:
    """Make mitmproxy's regular-mode server accept on `socks` (already bound and listening)
    instead of binding host:port itself, taking up to `backlog` connections per wake-up."""
    from mitmproxy.proxy import mode_servers

    _INHERITED.socks, _INHERITED.backlog = tuple(socks), backlog
    _replace(mode_servers.RegularInstance, "listen", _inherited_listen)


def _inherited_listen(listen: Callable[..., Any]) -> Callable[..., Any]:
    async def inherited_listen(self: Any, host: str, port: int) -> list[asyncio.Server]:
        if not _INHERITED.socks:
            return await listen(self, host, port)
        return [
            await asyncio.start_server(self.handle_stream, sock=sock, backlog=_INHERITED.backlog)
            for sock in _INHERITED.socks
        ]

    return inherited_listen


# -- used, not changed ------------------------------------------------------------------------


def replace_addon_manager(master: Any, manager_type: type) -> Any:
    """Give a freshly made master (no addons yet) a `manager_type(master)` for its addons.
    The manager it made holds the options' `changed` signal only by a weak reference, so the
    one replaced stops receiving it once dropped."""
    if master.addons.chain:
        raise RuntimeError("replace the addon manager before adding addons")
    master.addons = manager_type(master)
    return master.addons


def close_client(client_id: str) -> bool:
    """Close one client connection of the running master (cancel mitmproxy's handler for it,
    as its inactivity timeout does); whether it was open."""
    from mitmproxy import ctx
    from mitmproxy.utils import asyncio_utils

    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client_id) if proxyserver is not None else None
    if handler is None:
        return False
    asyncio_utils.create_task(handler.on_timeout(), name="crawlguard close", keep_ref=True)
    return True
