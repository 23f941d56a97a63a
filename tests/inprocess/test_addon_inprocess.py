"""CrawlGuardAddon in-process: real Runtime, real sqlite store, real local origin, mitmproxy
test flows. The hooks are called directly (no proxy subprocess, no sockets but loopback):
what is decided is what is sent, and the last gate (`server_connect`) only lets through
what a decision pinned.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import GOOD_UA
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from inprocess import Env, running
from mitmproxy import connection, http
from mitmproxy.net.http.http1.assemble import assemble_request_head
from mitmproxy.proxy import context, events, layer, layers
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import tflow, tutils
from netguard import netguard  # noqa: F401  (fixture)
from origins import RecordingOrigin, respond, routes

from crawlguard.policy.decisions import DECISION_HEADER
from crawlguard.policy.identity import canonical_path
from crawlguard.policy.records import ViolationRecord
from crawlguard.policy.robots import RobotsRules
from crawlguard.proxy.addon import CrawlGuardAddon
from crawlguard.robots.cache import RobotsEntry
from crawlguard.runtime import Runtime

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("netguard")]

ROBOTS = b"User-agent: *\nDisallow: /private/\nDisallow: /*.pdf$\n"
SLOW_ROBOTS = b"User-agent: *\nDisallow: /private/\nCrawl-delay: 5\n"
UA = {"acme": GOOD_UA, "globex": "GlobexCrawler/2.0 (+https://globex.example/bot)"}
UA["initech"] = "InitechBot/3.0 (+https://initech.example/bot)"


def auth(tenant: str) -> str:
    return "Basic " + base64.b64encode(f"{tenant}:{tenant}-secret".encode()).decode()


def make_flow(
    host: str,
    port: int,
    path: str,
    *,
    tenant: str | None = "acme",
    headers: list[tuple[str, str]] | None = None,
    client: connection.Client | None = None,
    method: str = "GET",
    scheme: str = "http",
    authority: str = "",
) -> http.HTTPFlow:
    """A flow as mitmproxy hands it to `requestheaders` (or `http_connect` for CONNECT)."""
    fields: list[tuple[str, str]] = []
    if tenant is not None:
        fields += [("Proxy-Authorization", auth(tenant)), ("User-Agent", UA[tenant])]
    fields += headers or []
    req = tutils.treq(
        host=host,
        port=port,
        path=b"" if method == "CONNECT" else path.encode(),
        method=method.encode(),
        scheme=scheme.encode(),
        authority=(f"{host}:{port}" if method == "CONNECT" else authority).encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in fields]),
        content=b"",
    )
    return tflow.tflow(client_conn=client or tflow.tclient_conn(), req=req)


def records(guard: Runtime, **query: Any) -> list[ViolationRecord]:
    return guard.store.query(**query)


def seed_robots(guard: Runtime, origin: tuple[str, str, int], body: bytes) -> None:
    """Put a fresh, available robots.txt entry for `origin` into the Runtime's cache.

    RobotsCache has no public way to inject an entry, so this uses its internal slot API
    (`_slot`, `_clock`, `_Origin.entry/good/good_at`) exactly as `_settle` does after an `ok`
    fetch: a test-only shortcut that keeps the property test free of per-example servers.
    """
    cache = guard.robots
    rules = RobotsRules.parse(body)
    now = cache._clock()
    slot = cache._slot(origin)
    slot.entry = RobotsEntry(rules, True, rules.sha256, rules.body, "ok", now, now + 3600.0)
    slot.good, slot.good_at = rules, now


@asynccontextmanager
async def robots_origin(body: bytes) -> AsyncIterator[RecordingOrigin]:
    handler = routes(
        {"/robots.txt": respond(body=body, headers={"Content-Type": "text/plain"})},
        default=respond(200, b"page\n"),
    )
    async with RecordingOrigin(handler) as origin:
        yield origin


@pytest.fixture
async def origin() -> AsyncIterator[RecordingOrigin]:
    async with robots_origin(ROBOTS) as o:
        yield o


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running(tmp_path) as e:
        yield e


@pytest.fixture
async def unfolded(tmp_path: Path) -> AsyncIterator[Env]:
    """Every refusal its own record: a property test refuses the same rule many times, which
    `store.fold_after` would otherwise fold into one counted record."""
    store = {"fold_after": 1_000_000, "fold_tenant_after": 1_000_000}
    async with running(tmp_path, store=store) as e:
        yield e


def hook_data(client: connection.Client, host: str, port: int) -> ServerConnectionHookData:
    return ServerConnectionHookData(server=connection.Server(address=(host, port)), client=client)


def assert_refused(flow: http.HTTPFlow, status: int, kind: str) -> None:
    assert flow.response is not None, f"{flow.request.path} was not refused"
    assert (flow.response.status_code, flow.response.headers.get(DECISION_HEADER)) == (
        status,
        kind,
    ), flow.response.get_text()


# -- 1. a disallowed path, however it is spelled ------------------------------------------------

DISALLOWED_SPELLINGS = [
    ("/%70rivate/", "/private/"),
    ("/priv%61te/", "/private/"),
    ("/pri%76%61%74e/", "/private/"),
    ("//private/", "/private/"),
    ("/./private/", "/private/"),
    ("/a/../private/", "/private/"),
    ("/%2e/private/", "/private/"),
    ("/%2E%2e/private/x", "/private/x"),
    ("/private/./%2e%2E/private/", "/private/"),
    ("///private//x", "/private/x"),
    ("/docs/a.p%64f", "/docs/a.pdf"),
    ("/docs/a.%70%64%66", "/docs/a.pdf"),
    ("/docs/x/../a.pdf#frag", "/docs/a.pdf"),
]


@pytest.mark.parametrize(("host", "canonical"), [("LOCALHOST", "localhost"), ("127.0.0.1", None)])
async def test_disallowed_path_refused_in_every_spelling(
    env: Env, origin: RecordingOrigin, host: str, canonical: str | None
) -> None:
    canonical = canonical or host
    for spelled, path in DISALLOWED_SPELLINGS:
        flow = make_flow(host, origin.port, spelled)
        await env.addon.requestheaders(flow)
        assert_refused(flow, 403, "robots-disallow")
        rec = records(env.guard, kind="robots-disallow", limit=1)[0]
        assert rec.url == f"http://{canonical}:{origin.port}{path}", spelled
        assert (rec.tenant, rec.action, rec.method) == ("acme", "blocked", "GET")
    assert len(records(env.guard)) == len(DISALLOWED_SPELLINGS)
    # Only robots.txt was fetched (once for the origin), no page ever reached the origin.
    assert [h.path for h in origin.hits] == ["/robots.txt"]


# -- 2. an allowed request is forwarded exactly as decided --------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "0x7f000001", "2130706433", "127.0.0.1."])
async def test_allowed_request_forwarded_as_decided(
    env: Env, origin: RecordingOrigin, host: str
) -> None:
    flow = make_flow(
        host, origin.port, "/a/./b/../%70age?q=%7e", headers=[("Host", "evil.example")]
    )
    client = flow.client_conn
    await env.addon.requestheaders(flow)
    assert flow.response is None
    assert flow.request.path == "/a/page?q=~"
    assert flow.request.host == "127.0.0.1"
    assert flow.request.port == origin.port
    assert flow.request.headers.get_all("Host") == [f"127.0.0.1:{origin.port}"]
    assert "Proxy-Authorization" not in flow.request.headers
    assert records(env.guard) == []

    ok = hook_data(client, "127.0.0.1", origin.port)
    env.addon.server_connect(ok)
    assert ok.server.error is None
    assert ok.server.sni == "127.0.0.1"

    unpinned = [
        hook_data(client, "10.0.0.1", 80),
        hook_data(client, "127.0.0.1", origin.port + 1 if origin.port < 65535 else 1),
        hook_data(client, "localhost", origin.port),  # a name is never a pinned address
        hook_data(tflow.tclient_conn(), "127.0.0.1", origin.port),  # another client
    ]
    for data in unpinned:
        env.addon.server_connect(data)
        assert data.server.error and "crawlguard:" in data.server.error, data.server.address
    assert [h.path for h in origin.hits] == ["/robots.txt"]  # nothing else connected


async def test_allowed_request_by_name_pins_address_and_sni(
    env: Env, origin: RecordingOrigin
) -> None:
    flow = make_flow("LocalHost.", origin.port, "/x/%7Euser/", headers=[("Host", "a.example")])
    await env.addon.requestheaders(flow)
    assert flow.response is None
    assert (flow.request.host, flow.request.path) == ("127.0.0.1", "/x/~user/")
    assert flow.request.headers["Host"] == f"localhost:{origin.port}"
    data = hook_data(flow.client_conn, "127.0.0.1", origin.port)
    env.addon.server_connect(data)
    assert (data.server.error, data.server.sni) == (None, "localhost")


async def test_default_port_omitted_from_host_header(env: Env) -> None:
    # mode `off`: no robots.txt fetch, so nothing connects to port 80 (only the hook runs).
    flow = make_flow("LOCALHOST", 80, "/x", tenant="initech", headers=[("Host", "x.example")])
    await env.addon.requestheaders(flow)
    assert flow.response is None
    assert flow.request.headers["Host"] == "localhost"
    assert (flow.request.host, flow.request.port) == ("127.0.0.1", 80)


# -- 3. one origin, however its host is spelled -------------------------------------------------


async def test_host_case_shares_robots_and_pacing(tmp_path: Path) -> None:
    async with robots_origin(SLOW_ROBOTS) as origin, running(tmp_path) as env:
        flows = [
            make_flow(h, origin.port, "/page") for h in ("LOCALHOST", "localhost.", "LocalHost")
        ]
        for flow in flows:
            await env.addon.requestheaders(flow)
        assert flows[0].response is None
        for flow in flows[1:]:
            assert_refused(flow, 429, "crawl-delay")
            assert flow.response is not None and flow.response.headers["Retry-After"]
        assert len(origin.hits_for("/robots.txt")) == 1
        assert len(env.guard.robots) == 1
        assert {r.url for r in records(env.guard)} == {f"http://localhost:{origin.port}/page"}


# -- 4. forbidden destinations in every spelling, every mode -------------------------------------

FORBIDDEN_HOSTS = [
    "0x7f000001",
    "2130706433",
    "127.1",
    "0177.0.0.1",
    "0",
    "intranet.test",
    "INTRANET.test.",
    "metadata.test",
    "0xa9fea9fe",
    "100.64.0.1",
    "::ffff:127.0.0.1",
    "[::ffff:7f00:1]",
    "localhost",
]


async def test_forbidden_destinations_every_mode(tmp_path: Path, origin: RecordingOrigin) -> None:
    destinations = {
        "allow_private": False,
        "hosts": {"intranet.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254"]},
    }
    async with running(tmp_path, destinations=destinations) as env:
        for tenant in ("acme", "globex", "initech"):
            for host in FORBIDDEN_HOSTS:
                flow = make_flow(host, origin.port, "/page", tenant=tenant)
                await env.addon.requestheaders(flow)
                assert_refused(flow, 403, "destination-forbidden")
                assert flow.request.host == host  # not rewritten to anything dialable
                data = hook_data(flow.client_conn, "127.0.0.1", origin.port)
                env.addon.server_connect(data)
                assert data.server.error, (tenant, host)
        assert origin.hits == []
        assert len(env.guard.robots) == 0
        recs = records(env.guard, kind="destination-forbidden")
        # enforce and monitor are recorded; `off` refuses without a record
        assert len(recs) == 2 * len(FORBIDDEN_HOSTS)
        assert {r.tenant for r in recs} == {"acme", "globex"}


# -- 5. CONNECT --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0", "0.0", "0x0", "::", "::ffff:0.0.0.0", "255.255.255.255"])
async def test_connect_to_forbidden_spelling_refused(env: Env, host: str) -> None:
    flow = make_flow(host, 443, "", method="CONNECT")
    await env.addon.http_connect(flow)
    assert_refused(flow, 403, "destination-forbidden")
    await env.addon.http_connect_error(flow)
    (rec,) = records(env.guard)
    assert (rec.kind, rec.method, rec.action) == ("destination-forbidden", "CONNECT", "blocked")
    assert env.addon._tunnels.get(flow.client_conn) is None
    data = hook_data(flow.client_conn, host, 443)
    env.addon.server_connect(data)
    assert data.server.error


async def test_connect_without_credentials_is_407(env: Env) -> None:
    flow = make_flow("localhost", 443, "", method="CONNECT", tenant=None)
    await env.addon.http_connect(flow)
    assert flow.response is not None and flow.response.status_code == 407


async def test_connect_pins_and_tunnel_requests_follow_the_tunnel(
    env: Env, origin: RecordingOrigin
) -> None:
    connect = make_flow("LOCALHOST", origin.port, "", method="CONNECT")
    client = connect.client_conn
    await env.addon.http_connect(connect)
    assert connect.response is None
    assert connect.request.host == "127.0.0.1"
    assert connect.server_conn.sni == "localhost"
    assert "Proxy-Authorization" not in connect.request.headers

    # Requests inside the tunnel carry no credentials; the Host header names another site.
    allowed = make_flow(
        "127.0.0.1",
        origin.port,
        "/a/../%70age",
        tenant=None,
        client=client,
        headers=[("User-Agent", GOOD_UA), ("Host", "other.example")],
    )
    await env.addon.requestheaders(allowed)
    assert allowed.response is None
    assert allowed.request.headers["Host"] == f"localhost:{origin.port}"
    assert (allowed.request.host, allowed.request.path) == ("127.0.0.1", "/page")

    # Decided against the tunnel's host whatever the request's own host says.
    for spelled_host in ("127.0.0.1", "other.example", "10.0.0.1"):
        refused = make_flow(
            spelled_host,
            80,
            "/%70rivate/x",
            tenant=None,
            client=client,
            headers=[("User-Agent", GOOD_UA), ("Host", "other.example")],
        )
        await env.addon.requestheaders(refused)
        assert_refused(refused, 403, "robots-disallow")
        rec = records(env.guard, limit=1)[0]
        assert rec.url == f"http://localhost:{origin.port}/private/x"
    assert origin.hits_for("/robots.txt") and not origin.hits_for("/private/x")

    data = hook_data(client, "127.0.0.1", origin.port)
    env.addon.server_connect(data)
    assert (data.server.error, data.server.sni) == (None, "localhost")
    other = hook_data(client, "10.0.0.1", 80)
    env.addon.server_connect(other)
    assert other.server.error


# -- 6. headers --------------------------------------------------------------------------------


async def test_request_and_response_header_stripping(env: Env, origin: RecordingOrigin) -> None:
    flow = make_flow(
        "localhost",
        origin.port,
        "/page",
        headers=[
            ("Proxy-Connection", "keep-alive"),
            ("Via", "1.1 forged"),
            ("X-Crawlguard-Foo", "1"),
            ("x-crawlguard-decision", "allowed"),
            ("Connection", "X-Secret, Keep-Alive"),
            ("X-Secret", "s"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Foo", "1"),
            ("Accept", "text/html"),
        ],
    )
    await env.addon.requestheaders(flow)
    assert flow.response is None
    names = {k.lower() for k in flow.request.headers}
    assert names == {"user-agent", "accept", "host"}, flow.request.headers

    flow.response = http.Response.make(
        200,
        b"ok",
        {
            "X-Crawlguard-Monitor": "robots-disallow",
            "X-Crawlguard-Delayed": "9.000",
            DECISION_HEADER: "forged",
            "X-Crawlguard-Other": "x",
            "Content-Type": "text/plain",
        },
    )
    env.addon.responseheaders(flow)
    headers = flow.response.headers
    assert headers.get_all(DECISION_HEADER) == ["allowed"]
    for name in ("X-Crawlguard-Monitor", "X-Crawlguard-Delayed", "X-Crawlguard-Other"):
        assert name not in headers
    assert headers["Content-Type"] == "text/plain"


async def test_monitor_mode_forwards_and_says_so(env: Env, origin: RecordingOrigin) -> None:
    flow = make_flow("localhost", origin.port, "/%70rivate/", tenant="globex")
    await env.addon.requestheaders(flow)
    assert flow.response is None
    assert flow.request.path == "/private/"
    flow.response = http.Response.make(200, b"ok", {"X-Crawlguard-Monitor": "forged"})
    env.addon.responseheaders(flow)
    assert flow.response.headers.get_all("X-Crawlguard-Monitor") == ["robots-disallow"]
    assert flow.response.headers[DECISION_HEADER] == "allowed"
    (rec,) = records(env.guard)
    assert (rec.tenant, rec.action, rec.url) == (
        "globex",
        "logged",
        f"http://localhost:{origin.port}/private/",
    )


# -- 7. what a tunnel may carry -------------------------------------------------------------------


@pytest.fixture
async def tunnel_client(env: Env, origin: RecordingOrigin) -> connection.Client:
    connect = make_flow("localhost", origin.port, "", method="CONNECT")
    await env.addon.http_connect(connect)
    assert connect.response is None
    return connect.client_conn


def nextlayer_for(env: Env, client: connection.Client, data: bytes, chosen: str) -> layer.NextLayer:
    ctx = context.Context(client, env.tctx.options)
    nl = layer.NextLayer(ctx)
    nl.events.append(events.DataReceived(client, data))
    nl.layer = {
        "tcp": lambda: layers.TCPLayer(ctx),
        "http": lambda: layers.HttpLayer(ctx, HTTPMode.transparent),
        "tls": lambda: layers.ServerTLSLayer(ctx),
    }[chosen]()
    return nl


async def test_next_layer_closes_raw_bytes(
    env: Env, origin: RecordingOrigin, tunnel_client: connection.Client
) -> None:
    nl = nextlayer_for(env, tunnel_client, b"SSH-2.0-x\r\n", "tcp")
    await env.addon.next_layer(nl)
    assert type(nl.layer).__name__ == "_Close"
    assert not isinstance(nl.layer, layers.TCPLayer)
    (rec,) = records(env.guard)
    assert (rec.kind, rec.method, rec.url) == (
        "request-invalid",
        "TUNNEL",
        f"localhost:{origin.port}",
    )


async def test_next_layer_defers_partial_request_line(
    env: Env, tunnel_client: connection.Client
) -> None:
    nl = nextlayer_for(env, tunnel_client, b"GE", "tcp")
    await env.addon.next_layer(nl)
    assert nl.layer is None
    assert records(env.guard) == []


async def test_next_layer_http_after_empty_lines(
    env: Env, tunnel_client: connection.Client
) -> None:
    nl = nextlayer_for(env, tunnel_client, b"\r\nGET / HTTP/1.1\r\n", "tcp")
    await env.addon.next_layer(nl)
    assert isinstance(nl.layer, layers.HttpLayer)
    # passed on as sent: the engine's reader drops the empty lines (compat.install), as for any
    # request; tests/test_compat.py sends one through a tunnel
    (event,) = nl.events
    assert isinstance(event, events.DataReceived) and event.data == b"\r\nGET / HTTP/1.1\r\n"
    assert records(env.guard) == []


async def test_next_layer_keeps_tls_and_ignores_clients_without_tunnel(
    env: Env, tunnel_client: connection.Client
) -> None:
    tls = nextlayer_for(env, tunnel_client, b"\x16\x03\x01\x02\x00\x01", "tls")
    chosen = tls.layer
    await env.addon.next_layer(tls)
    assert tls.layer is chosen
    # No tunnel for this client: not the addon's business (the plain proxy path decides).
    other = nextlayer_for(env, tflow.tclient_conn(), b"SSH-2.0-x\r\n", "tcp")
    chosen = other.layer
    await env.addon.next_layer(other)
    assert other.layer is chosen
    assert records(env.guard) == []


async def test_absolute_form_request_in_tunnel_is_sent_as_decided(
    env: Env, origin: RecordingOrigin, tunnel_client: connection.Client
) -> None:
    # `GET http://other.example/page HTTP/1.1` in the tunnel: mitmproxy's HTTP/1 reader puts
    # "other.example" in request.authority; the transparent layer sets host/port to the
    # tunnel's server address and leaves authority alone.
    flow = make_flow(
        "127.0.0.1",
        origin.port,
        "/page",
        tenant=None,
        client=tunnel_client,
        headers=[("User-Agent", GOOD_UA), ("Host", "other.example")],
        authority="other.example",
    )
    await env.addon.requestheaders(flow)
    assert flow.response is None
    assert flow.request.headers["Host"] == f"localhost:{origin.port}"
    request_line = assemble_request_head(flow.request).split(b"\r\n", 1)[0]
    assert request_line in (
        b"GET /page HTTP/1.1",
        f"GET http://localhost:{origin.port}/page HTTP/1.1".encode(),
    )


# -- 8. property: a disallowed URL is refused in any spelling --------------------------------------

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_RULE_SEGMENT = st.text(alphabet="abcxyz*", min_size=1, max_size=5)
_FILL = st.lists(st.text(alphabet=_LOWER, min_size=1, max_size=4), max_size=3).map("/".join)
_UNRESERVED = frozenset(_LOWER + _LOWER.upper() + "0123456789-._~")


def _rule(segments: list[str], anchored: bool) -> str:
    return "/" + "/".join(segments) + ("$" if anchored else "")


@st.composite
def _rule_and_path(draw: st.DrawFn) -> tuple[str, str]:
    """A Disallow value and a canonical path it matches."""
    segments = draw(st.lists(_RULE_SEGMENT, min_size=1, max_size=3))
    anchored = draw(st.booleans())
    path = "".join(draw(_FILL) if ch == "*" else ch for ch in "/" + "/".join(segments))
    if not anchored:
        path += draw(st.sampled_from(["", "/", "x", "/deep/er", ".html", "?q=1"]))
    assume(canonical_path(path) == path)
    return _rule(segments, anchored), path


@st.composite
def _spelling(draw: st.DrawFn, path: str) -> str:
    """Another spelling of `path` that canonicalises back to it."""
    out: list[str] = []
    in_query = False
    for ch in path:
        in_query = in_query or ch == "?"
        out.append(ch)
        if ch == "/" and not in_query:
            out.append(draw(st.sampled_from(["", "", "", "./", "zz/../", "/", "./zz/../"])))
    spelled: list[str] = []
    for ch in "".join(out):
        if ch in _UNRESERVED and draw(st.integers(0, 2)) == 0:
            hexpair = f"{ord(ch):02x}"
            spelled.append("%" + (hexpair.upper() if draw(st.booleans()) else hexpair))
        else:
            spelled.append(ch)
    return "".join(spelled)


@st.composite
def _case(draw: st.DrawFn) -> dict[str, Any]:
    target_rule, path = draw(_rule_and_path())
    others = draw(st.lists(st.lists(_RULE_SEGMENT, min_size=1, max_size=2), max_size=4))
    rules = [target_rule] + [_rule(o, draw(st.booleans())) for o in others]
    rules = draw(st.permutations(rules))
    host = "".join(c.upper() if draw(st.booleans()) else c for c in "localhost")
    host += draw(st.sampled_from(["", "."]))
    return {
        "robots": ("User-agent: *\n" + "".join(f"Disallow: {r}\n" for r in rules)).encode(),
        "path": path,
        "spelled": draw(_spelling(path)),
        "host": host,
    }


PORT = 8080  # nothing listens: robots.txt is seeded, a refusal never connects


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(case=_case())
async def test_property_disallowed_url_always_refused(unfolded: Env, case: dict[str, Any]) -> None:
    env = unfolded
    seed_robots(env.guard, ("http", "localhost", PORT), case["robots"])
    assert canonical_path(case["spelled"]) == case["path"]  # the generator's own promise
    flow = make_flow(case["host"], PORT, case["spelled"])
    await env.addon.requestheaders(flow)
    assert_refused(flow, 403, "robots-disallow")
    rec = records(env.guard, limit=1)[0]
    assert rec.url == f"http://localhost:{PORT}{case['path']}"


async def test_a_full_record_queue_refuses_instead_of_answering_unrecorded(env: Env) -> None:
    """No refusal (or monitor pass) without its record: a full write queue means 503."""
    async with robots_origin(ROBOTS) as origin:
        env.guard.store_writer.queue_max = 0
        for tenant in ("acme", "globex"):  # enforce, and monitor (which would forward)
            flow = make_flow("127.0.0.1", origin.port, "/private/x", tenant=tenant)
            await env.addon.requestheaders(flow)
            assert_refused(flow, 503, "store-backlogged")
            assert flow.response is not None and flow.response.headers["Retry-After"] == "1"
        flow = make_flow("127.0.0.1", origin.port, "/fine")  # nothing to record: forwarded
        await env.addon.requestheaders(flow)
        assert flow.response is None


def test_pins_per_client_are_bounded() -> None:
    from crawlguard.proxy.addon import MAX_PINS_PER_CLIENT

    addon = CrawlGuardAddon()
    client = tflow.tclient_conn()
    for i in range(MAX_PINS_PER_CLIENT + 50):
        addon._pin(client, f"10.0.{i // 256}.{i % 256}", 80, f"h{i}.example")
    pins = addon._pins[client.id]
    assert len(pins) == MAX_PINS_PER_CLIENT
    assert ("10.0.0.0", 80) not in pins and pins[("10.0.1.49", 80)] == "h305.example"


async def test_the_last_gate_classifies_a_pinned_address_against_the_running_policy(
    env: Env, origin: RecordingOrigin
) -> None:
    """A pin made before a reload that forbids the address no longer opens a connection:
    `server_connect` asks the running destination policy, as Smokescreen's dialer does."""
    flow = make_flow("127.0.0.1", origin.port, "/page")
    await env.addon.requestheaders(flow)
    assert flow.response is None
    cfg = env.guard.cfg
    for narrowed in ({"allow_private": False}, {"allowed_ports": [80, 443]}):
        env.guard.reload(
            cfg.model_copy(update={"destinations": cfg.destinations.model_copy(update=narrowed)})
        )
        data = hook_data(flow.client_conn, "127.0.0.1", origin.port)
        env.addon.server_connect(data)
        assert data.server.error and "crawlguard: refusing to connect" in data.server.error
        env.guard.reload(cfg)
    data = hook_data(flow.client_conn, "127.0.0.1", origin.port)
    env.addon.server_connect(data)
    assert data.server.error is None
