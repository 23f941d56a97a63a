"""Canaries for crawlguard.proxy.compat: what each patch of mitmproxy relies on, by name.

Each patch wraps a mitmproxy function and works only while mitmproxy still calls that function
the way it did when the patch was written. An upgrade that renames it, changes its signature
or stops calling it would not make the patch fail: it would silently stop applying (the
request-head caps would turn off). So each canary names the symbol, the signature and the
source lines the patch depends on, and fails with what would stop working; the functional
ones drive mitmproxy's own HTTP/1 server in-process, with and without the patch.

Every test here leaves no patch installed (`clean`), whatever ran before it in the process.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import addonmanager, http, master, options
from mitmproxy.addons import proxyserver
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, context, events, mode_servers, server
from mitmproxy.proxy.layers.http import HttpStream, ResponseProtocolError, _http1
from mitmproxy.proxy.layers.http._events import ErrorCode
from mitmproxy.test import tflow
from mitmproxy.utils import signals
from mitmproxy.version import VERSION

from crawlguard.policy.decisions import DECISION_HEADER
from crawlguard.proxy import compat

PKG = Path(inspect.getfile(http)).parent  # mitmproxy's package directory


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    compat.uninstall()
    yield
    compat.uninstall()


def expect(ok: bool, symbol: str, patch: str, effect: str) -> None:
    if not ok:
        pytest.fail(
            f"mitmproxy {VERSION} moved {symbol}: compat.{patch} {effect}; re-check "
            "crawlguard/proxy/compat.py against this mitmproxy's source",
            pytrace=False,
        )


def params(func: Any) -> list[tuple[str, Any]]:
    """A signature's parameter names and defaults (annotations vary with Python)."""
    return [(p.name, p.default) for p in inspect.signature(func).parameters.values()]


def has_lines(func: Any, *lines: str) -> bool:
    """Whether `func`'s source holds these lines (stripped), in this order."""
    source = [line.strip() for line in inspect.getsource(func).splitlines()]
    at = 0
    for line in lines:
        try:
            at = source.index(line, at) + 1
        except ValueError:
            return False
    return True


def callers(name: str) -> set[str]:
    """mitmproxy's modules (relative paths) whose source names `name`."""
    return {
        str(path.relative_to(PKG))
        for path in PKG.rglob("*.py")
        if "test" not in path.parts and name in path.read_text(encoding="utf-8")
    }


def drive(layer: Any, *evs: events.Event) -> list[commands.Command]:
    """Feed events to a layer as mitmproxy's server would, completing every hook at once."""
    out: list[commands.Command] = []

    def run(gen: Any) -> None:
        for command in gen:
            out.append(command)
            if isinstance(command, commands.StartHook):
                run(layer.handle_event(events.HookCompleted(command)))

    for event in evs:
        run(layer.handle_event(event))
    return out


def http1_server() -> tuple[_http1.Http1Server, Any]:
    client = tflow.tclient_conn()
    client.state = ConnectionState.OPEN
    srv = _http1.Http1Server(context.Context(client, options.Options()))
    drive(srv, events.Start())
    return srv, client


def sent(cmds: list[commands.Command]) -> bytes:
    return b"".join(c.data for c in cmds if isinstance(c, commands.SendData))


def kinds(cmds: list[commands.Command]) -> list[str]:
    return [type(c).__name__ for c in cmds]


# -- installing ----------------------------------------------------------------------------------


def test_install_is_idempotent_and_uninstall_restores() -> None:
    originals = (_http1.make_error_response, _http1.Http1Server.read_headers)
    compat.install()
    first = compat.installed()
    compat.install()
    assert (
        compat.installed()
        == first
        == [
            "mitmproxy.proxy.layers.http._http1.make_error_response",
            "mitmproxy.proxy.layers.http._http1.Http1Server.read_headers",
            "mitmproxy.proxy.layers.http._http1.Http1Server.send",
            "mitmproxy.proxy.layers.http.HttpStream.start_request_stream",
            "mitmproxy.proxy.server.ConnectionHandler.handle_connection",
        ]
    )
    assert (_http1.make_error_response, _http1.Http1Server.read_headers) != originals
    compat.uninstall()
    assert (_http1.make_error_response, _http1.Http1Server.read_headers) == originals
    assert compat.installed() == []


def test_constructing_the_addons_installs_nothing() -> None:
    from crawlguard.proxy.addon import CrawlGuardAddon
    from crawlguard.proxy.client_limits import ClientLimitsAddon

    CrawlGuardAddon()
    ClientLimitsAddon(lambda: None)
    assert compat.installed() == []


# -- make_error_response: the decision header on the engine's own error responses --------------


def test_make_error_response_canary() -> None:
    symbol = "mitmproxy.proxy.layers.http._http1.make_error_response"
    expect(
        params(_http1.make_error_response) == [("status_code", inspect.Parameter.empty),
                                               ("message", "")],
        f"{symbol}(status_code, message='')", "install",
        "would no longer add X-Crawlguard-Decision to mitmproxy's own error responses",
    )  # fmt: skip
    expect(
        callers("make_error_response") == {"proxy/layers/http/_http1.py"},
        f"{symbol} (now also named in {sorted(callers('make_error_response'))})",
        "install",
        "wraps the module global only: a caller that imported it by name would send error "
        "responses without X-Crawlguard-Decision",
    )
    raw = _http1.make_error_response(502, "x")
    expect(
        raw.startswith(b"HTTP/1.1 502 ") and raw.count(b"\r\n\r\n") == 1,
        f"{symbol}'s output (one head, then the body)",
        "install",
        "puts the decision header after the first empty line: it would land in the body",
    )


def test_error_responses_say_the_decision() -> None:
    compat.install()
    for status, message, decision in (
        (400, "bad request line", "request-invalid"),
        (502, "connection refused", "allowed"),
        (502, "crawlguard: destination refused", "destination-forbidden"),
    ):
        head = _http1.make_error_response(status, message).split(b"\r\n\r\n")[0]
        assert f"{DECISION_HEADER}: {decision}".encode() in head.split(b"\r\n")


# -- read_headers: request-head caps, empty lines, engine refusals -------------------------------


def test_read_headers_canary() -> None:
    cls = "mitmproxy.proxy.layers.http._http1.Http1Server"
    expect(
        params(_http1.Http1Server.read_headers) == [("self", inspect.Parameter.empty),
                                                    ("event", inspect.Parameter.empty)],
        f"{cls}.read_headers(self, event)", "install",
        "would no longer cap request lines and heads: one client could make it buffer "
        "gigabytes before any hook runs",
    )  # fmt: skip
    expect(
        inspect.isgeneratorfunction(_http1.Http1Server.read_headers),
        f"{cls}.read_headers (no longer a generator of commands)",
        "install",
        "yields its commands through it: the head caps would break",
    )
    expect(
        has_lines(_http1.Http1Connection._handle_event, "self.buf += event.data",
                  "yield from self.state(event)")
        and has_lines(_http1.Http1Connection.start, "self.state = self.read_headers")
        and has_lines(_http1.Http1Connection.mark_done, "self.state = self.read_headers"),
        f"{cls}: bytes appended to self.buf, then self.state = self.read_headers called",
        "install", "checks self.buf in read_headers: the head caps would silently turn off",
    )  # fmt: skip
    expect(
        has_lines(_http1.Http1Server.read_headers,
                  "request_head = self.buf.maybe_extract_lines()",
                  "yield commands.SendData(self.conn, make_error_response(400, str(e)))"),
        f"{cls}.read_headers' parse of self.buf and its 400 answer", "install",
        "records a 400 of an unreadable head as an engine refusal only if it is sent there",
    )  # fmt: skip


def test_the_request_buffer_canary() -> None:
    """h11's ReceiveBuffer, as mitmproxy's `Http1Connection.buf`: the wrapper reads it with
    bytes(), replaces it with a new empty one and appends to it."""
    buf_type = inspect.get_annotations(_http1.Http1Connection, eval_str=True)["buf"]
    buf = buf_type()
    buf += b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    expect(
        bytes(buf) == b"\r\n\r\nGET / HTTP/1.1\r\n\r\n" and len(buf) == 22,
        f"{buf_type.__module__}.{buf_type.__qualname__} (Http1Connection.buf: bytes(), len, +=)",
        "install",
        "reads and refills the request buffer that way: the head caps would break",
    )
    expect(
        buf.maybe_extract_lines() == [] and bytes(buf) == b"\r\nGET / HTTP/1.1\r\n\r\n",
        f"{buf_type.__qualname__}.maybe_extract_lines (one leading empty line per call)",
        "install",
        "drops all leading empty lines because h11 drops one per read and then waits; "
        "check whether that is still needed",
    )


def test_an_oversized_request_line_or_head_is_refused_only_with_the_patch() -> None:
    line = b"GET /" + b"a" * (compat.HeadLimits.line + 1)
    head = b"GET / HTTP/1.1\r\n" + b"X-A: " + b"b" * compat.HeadLimits.head
    for data, status in ((line, 414), (head, 431)):
        srv, client = http1_server()
        assert drive(srv, events.DataReceived(client, data)) == []  # mitmproxy buffers it
        compat.install()
        srv, client = http1_server()
        cmds = drive(srv, events.DataReceived(client, data))
        assert kinds(cmds) == ["EngineRefusalHook", "SendData", "CloseConnection"]
        assert sent(cmds).startswith(b"HTTP/1.1 %d " % status)
        assert f"{DECISION_HEADER}: request-invalid".encode() in sent(cmds)
        assert len(srv.buf) == 0  # nothing held
        assert kinds(drive(srv, events.DataReceived(client, b"more"))) == ["CloseConnection"]
        compat.uninstall()


def test_empty_lines_before_a_request_are_dropped_only_with_the_patch() -> None:
    data = b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    srv, client = http1_server()
    assert drive(srv, events.DataReceived(client, data)) == []  # h11 dropped one, and waits
    compat.install()
    srv, client = http1_server()
    cmds = drive(srv, events.DataReceived(client, data))
    assert kinds(cmds) == ["ReceiveHttp", "ReceiveHttp"]
    assert cmds[0].event.request.path == "/"  # type: ignore[attr-defined]


def test_an_unreadable_head_is_announced_before_the_400() -> None:
    data = b"NOT-A-REQUEST\r\n\r\n"
    srv, client = http1_server()
    assert kinds(drive(srv, events.DataReceived(client, data))) == [
        "SendData", "CloseConnection", "Log",
    ]  # fmt: skip
    compat.install()
    srv, client = http1_server()
    cmds = drive(srv, events.DataReceived(client, data))
    assert kinds(cmds) == ["EngineRefusalHook", "SendData", "CloseConnection", "Log"]
    refusal = cmds[0].refusal  # type: ignore[attr-defined]
    assert (refusal.status, refusal.head, refusal.client) == (400, data, client)


# -- send: engine refusals of a parsed request ---------------------------------------------------


def test_send_canary() -> None:
    cls = "mitmproxy.proxy.layers.http._http1.Http1Server"
    expect(
        params(_http1.Http1Server.send) == [("self", inspect.Parameter.empty),
                                            ("event", inspect.Parameter.empty)]
        and inspect.isgeneratorfunction(_http1.Http1Server.send),
        f"{cls}.send(self, event)", "install",
        "would no longer announce the engine's refusals of parsed requests "
        "(crawlguard_engine_refusal): they would go unrecorded",
    )  # fmt: skip
    expect(
        has_lines(_http1.Http1Server.send, "elif isinstance(event, ResponseProtocolError):",
                  "status = event.code.http_status_code()",
                  "if not self.response and status is not None:"),
        f"{cls}.send's answer to a ResponseProtocolError", "install",
        "announces a refusal exactly when that branch sends an error response",
    )  # fmt: skip


def test_a_protocol_error_is_announced_before_its_error_response() -> None:
    def refuse() -> list[commands.Command]:
        srv, client = http1_server()
        drive(srv, events.DataReceived(client, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
        return drive(
            srv, ResponseProtocolError(1, "nested CONNECT", ErrorCode.GENERIC_CLIENT_ERROR)
        )

    assert kinds(refuse()) == ["SendData", "CloseConnection"]
    compat.install()
    cmds = refuse()
    assert kinds(cmds) == ["EngineRefusalHook", "SendData", "CloseConnection"]
    assert cmds[0].refusal.request.path == "/"  # type: ignore[attr-defined]


# -- start_request_stream: a refused request whose body would be streamed -----------------------


def test_start_request_stream_canary() -> None:
    symbol = "mitmproxy.proxy.layers.http.HttpStream.start_request_stream"
    expect(
        params(HttpStream.start_request_stream) == [("self", inspect.Parameter.empty)]
        and inspect.isgeneratorfunction(HttpStream.start_request_stream),
        f"{symbol}(self)", "install",
        "would no longer answer a refused request whose body is streamed: mitmproxy would "
        "raise and log an error per chunk",
    )  # fmt: skip
    expect(
        has_lines(HttpStream.start_request_stream, "if self.flow.response:",
                  "raise NotImplementedError(")
        and callers("start_request_stream") == {"proxy/layers/http/__init__.py"},
        f"{symbol} (raises when a hook set a response)", "install",
        "replaces that raise; check whether mitmproxy now answers such a request itself",
    )  # fmt: skip
    for name in ("send_response", "state_errored"):
        expect(
            callable(getattr(HttpStream, name, None)),
            f"mitmproxy.proxy.layers.http.HttpStream.{name}",
            "install",
            "answers the refusal with it: a refused streamed request would fail",
        )
    expect(
        has_lines(HttpStream.__init__, "self.client_state = self.state_uninitialized")
        and has_lines(HttpStream._handle_event, "yield from self.client_state(event)"),
        "mitmproxy.proxy.layers.http.HttpStream.client_state",
        "install",
        "sets client_state to drop the rest of the body unread",
    )


# -- handle_connection: a cancelled connection's socket is closed -------------------------------


def test_handle_connection_canary() -> None:
    symbol = "mitmproxy.proxy.server.ConnectionHandler.handle_connection"
    expect(
        params(server.ConnectionHandler.handle_connection)
        == [("self", inspect.Parameter.empty), ("connection", inspect.Parameter.empty)]
        and inspect.iscoroutinefunction(server.ConnectionHandler.handle_connection),
        f"async {symbol}(self, connection)",
        "install",
        "would no longer close a connection cancelled while it waited: its socket would stay "
        "open, unread and uncounted by ClientLimits until garbage collection",
    )
    expect(
        has_lines(server.ConnectionHandler.__init__, "self.transports = {}")
        and has_lines(server.ConnectionHandler.handle_connection,
                      "writer = self.transports[connection].writer", "writer.close()",
                      "self.transports.pop(connection)")
        and {"writer"} <= {f for f in server.ConnectionIO.__dataclass_fields__},
        f"{symbol}: transports[connection].writer closed and popped on the normal path",
        "install", "closes what that path leaves in self.transports",
    )  # fmt: skip


# -- install_lean: mitmproxy's debug-mode type check of every message --------------------------


def test_message_debug_check_canary() -> None:
    symbol = "mitmproxy.http.MessageData.__post_init__"
    expect(
        not __debug__ or "__post_init__" in vars(http.MessageData),
        symbol,
        "install_lean",
        "would no longer skip the debug type check (~4 % of the proxy's CPU)",
    )
    expect(
        "__post_init__" in http.RequestData.__init__.__code__.co_names,
        "the dataclass __init__ of mitmproxy.http.RequestData (no longer calls __post_init__)",
        "install_lean",
        "keeps a no-op __post_init__ for it: check whether it is still needed",
    )


def test_the_debug_check_is_skipped_only_when_lean() -> None:
    def wrong_type() -> Any:
        data = http.Request.make("GET", "http://example.com/").data
        return type(data)(**{**vars(data), "http_version": "HTTP/1.1"})

    if __debug__:
        with pytest.raises(TypeError):
            wrong_type()  # a str where bytes belong
    compat.install_lean()
    assert wrong_type() is not None
    assert compat.installed() == ["mitmproxy.http.MessageData.__post_init__"]


# -- listen_on_sockets: a --workers N worker accepts on the parent's socket ---------------------


def test_listen_canary() -> None:
    symbol = "mitmproxy.proxy.mode_servers.RegularInstance.listen"
    expect(
        issubclass(mode_servers.RegularInstance, mode_servers.AsyncioServerInstance)
        and params(mode_servers.RegularInstance.listen)
        == [("self", inspect.Parameter.empty), ("host", inspect.Parameter.empty),
            ("port", inspect.Parameter.empty)]
        and has_lines(mode_servers.AsyncioServerInstance._start,
                      "self._servers = await self.listen(host, port)"),
        f"{symbol}(self, host, port), awaited by AsyncioServerInstance._start", "listen_on_sockets",
        "would no longer make a --workers N worker accept on the shared socket: each worker "
        "would bind the port itself (or fail to)",
    )  # fmt: skip
    expect(
        params(mode_servers.ServerInstance.handle_stream)
        == [("self", inspect.Parameter.empty), ("reader", inspect.Parameter.empty),
            ("writer", None)],
        "mitmproxy.proxy.mode_servers.ServerInstance.handle_stream(self, reader, writer=None)",
        "listen_on_sockets", "passes it to asyncio.start_server as the connection callback",
    )  # fmt: skip


# -- close_client and the lean master's addon manager -----------------------------------------


def test_close_client_canary() -> None:
    expect(
        has_lines(proxyserver.Proxyserver.register_connection,
                  "self.connections[connection_id] = handler")
        and has_lines(mode_servers.ServerInstance.handle_stream,
                      "with self.manager.register_connection(handler.layer.context.client.id, "
                      "handler):"),
        "mitmproxy.addons.proxyserver.Proxyserver.connections (client id -> handler)",
        "close_client", "would find no connection to close: the connection cap and the header "
        "timeout would stop closing connections",
    )  # fmt: skip
    expect(
        inspect.iscoroutinefunction(server.ConnectionHandler.on_timeout)
        and params(server.ConnectionHandler.on_timeout) == [("self", inspect.Parameter.empty)]
        and has_lines(server.ConnectionHandler.on_timeout, 'handler.cancel("timeout")'),
        "async mitmproxy.proxy.server.ConnectionHandler.on_timeout(self)",
        "close_client",
        "closes a connection as the inactivity timeout does: the cap and the header timeout "
        "would stop closing connections",
    )


def test_replace_addon_manager_canary() -> None:
    expect(
        has_lines(master.Master.__init__, "self.addons = addonmanager.AddonManager(self)")
        and has_lines(addonmanager.AddonManager.__init__,
                      "master.options.changed.connect(self._configure_all)")
        and has_lines(signals._SignalMixin.connect, "receiver = make_weak_ref(receiver)"),
        "mitmproxy.master.Master.addons (an AddonManager, weakly connected to options.changed)",
        "replace_addon_manager", "assumes the manager it replaces stops receiving option "
        "changes once dropped; tests/test_hook_dispatch.py checks the replacement behaves alike",
    )  # fmt: skip


def mitmproxy_names(tree: ast.Module) -> set[str]:
    """Names a module binds to mitmproxy's modules and classes by importing them."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mitmproxy"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names
                      if a.name.startswith("mitmproxy")}  # fmt: skip
    return names


def test_only_compat_changes_mitmproxy_and_only_proxy_imports_it() -> None:
    """`crawlguard/proxy/` is the only package that imports mitmproxy or h11, and in it only
    compat.py assigns to an attribute of something imported from mitmproxy."""
    root = Path(compat.__file__).parents[1]
    importers, patchers = [], []
    for path in sorted(root.rglob("*.py")):
        where = str(path.relative_to(root.parent))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = mitmproxy_names(tree)
        if imported or any(
            isinstance(n, ast.Import | ast.ImportFrom)
            and any((getattr(n, "module", None) or a.name).startswith("h11") for a in n.names)
            for n in ast.walk(tree)
        ):
            importers.append(where)
        if path.name == "compat.py":
            continue
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
                targets = node.args[:1]
            for target in targets:
                base = target.value if isinstance(target, ast.Attribute) else target
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in imported and base is not target:
                    patchers.append(f"{where}:{node.lineno}")
    assert [w for w in importers if not w.startswith("crawlguard/proxy/")] == []
    assert patchers == []
