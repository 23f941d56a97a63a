"""RobotsCache against real local origins: every fetch outcome, caching, back-off, memory bound."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from netguard import netguard  # noqa: F401  (fixture)
from origins import RecordingOrigin, closed_port, redirect, respond, routes

from crawlguard.config import DestinationsSection
from crawlguard.egress import EgressPolicy, SafeResolver
from crawlguard.policy.robots import MAX_BYTES
from crawlguard.robots.cache import RobotsCache, RobotsEntry

# Every test runs under the network guard: anything but loopback fails it before connecting.
pytestmark = [pytest.mark.timeout(10), pytest.mark.usefixtures("netguard")]

UA = "crawlguard-test/1.0 (+https://ops.example/crawlguard)"
ROBOTS = b"User-agent: *\nDisallow: /private\nCrawl-delay: 2\n"
DAY = 86400.0


class FakeClock:
    """Cache time under test control: expiry and back-off without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_cache(clock: FakeClock) -> AsyncIterator[Callable[..., RobotsCache]]:
    caches: list[RobotsCache] = []

    def make(**kwargs: Any) -> RobotsCache:
        kwargs.setdefault("user_agent", UA)
        kwargs.setdefault("fetch_timeout", 2)
        kwargs.setdefault("clock", clock)
        cache = RobotsCache(**kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


def robots_origin(*args: Any, **kwargs: Any) -> RecordingOrigin:
    return RecordingOrigin(routes({"/robots.txt": respond(*args, **kwargs)}))


def allowed(entry: RobotsEntry, path: str, token: str = "AcmeBot") -> bool:
    return entry.rules.decide(token, path).allowed


# -- outcomes ---------------------------------------------------------------------------------


async def test_200_rules_in_force_fetched_with_operator_ua(make_cache, clock) -> None:
    results: list[str] = []
    cache = make_cache(on_fetch=results.append)
    async with robots_origin(body=ROBOTS, headers={"Content-Type": "text/plain"}) as origin:
        entry = await cache.get(origin.origin)
        assert entry.result == "ok" and entry.available
        assert not allowed(entry, "/private/x") and allowed(entry, "/public")
        assert entry.rules.decide("AcmeBot", "/").crawl_delay == 2.0
        assert entry.body == ROBOTS and entry.sha256 == entry.rules.sha256
        assert entry.fetched_at == clock.now and entry.expires_at == clock.now + DAY
        assert cache.peek(origin.origin) is entry
        [hit] = origin.hits
        assert hit.path == "/robots.txt" and hit.headers["User-Agent"] == UA
    assert results == ["ok"]


@pytest.mark.parametrize("status", [404, 403, 410, 401])
async def test_4xx_means_no_restrictions(make_cache, status: int) -> None:
    cache = make_cache()
    async with robots_origin(status, b"Disallow: /\n") as origin:
        entry = await cache.get(origin.origin)
    assert (entry.result, entry.available, entry.sha256, entry.body) == ("4xx", True, None, None)
    assert allowed(entry, "/anything")


@pytest.mark.parametrize(("status", "result"), [(429, "429"), (500, "5xx"), (503, "5xx")])
async def test_429_and_5xx_are_a_complete_disallow(make_cache, clock, status, result) -> None:
    cache = make_cache()
    async with robots_origin(status, b"User-agent: *\nAllow: /\n") as origin:
        entry = await cache.get(origin.origin)
    assert entry.result == result and not entry.available and entry.sha256 is None
    assert entry.detail == f"HTTP {status}"
    assert entry.retry_after(clock.now) == 30


async def test_origin_retry_after_lengthens_back_off_up_to_the_cap(make_cache, clock) -> None:
    cache = make_cache()
    async with robots_origin(429, headers={"Retry-After": "120"}) as origin:
        assert (await cache.get(origin.origin)).retry_after(clock.now) == 120
    async with robots_origin(503, headers={"Retry-After": "999999"}) as origin:
        assert (await cache.get(origin.origin)).retry_after(clock.now) == 900


@pytest.mark.parametrize("value", ["\u00b2", "soon", "Wed, 99 Oct 2015 07:28:00 GMT", "-1"])
async def test_garbage_retry_after_is_ignored(make_cache, clock, value: str) -> None:
    cache = make_cache()
    async with robots_origin(503, headers={"Retry-After": value}) as origin:
        entry = await cache.get(origin.origin)
    assert (entry.result, entry.detail) == ("5xx", "HTTP 503")
    assert entry.retry_after(clock.now) == 30


async def test_timeout_is_a_complete_disallow(make_cache) -> None:
    cache = make_cache(fetch_timeout=0.3)
    async with robots_origin(body=ROBOTS, delay=3) as origin:
        # The origin's answer (3 s) would make it "ok": the cache gave up before, on its own.
        entry = await cache.get(origin.origin)
    assert entry.result == "timeout" and not entry.available


async def test_connection_refused_is_an_error_entry(make_cache) -> None:
    cache = make_cache()
    entry = await cache.get(("http", "127.0.0.1", closed_port()))
    assert entry.result == "error" and not entry.available and entry.detail


async def test_unresolvable_or_invalid_origins_do_not_raise(make_cache) -> None:
    async def nxdomain(host: str, port: int) -> list[str]:  # no real DNS query in tests
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolver = SafeResolver(allow_private=True, lookup=nxdomain)
    cfg = DestinationsSection(allow_private=True, allowed_ports=[80, 21])
    cache = make_cache(egress=EgressPolicy(cfg, resolver))
    for origin in [
        ("http", "no-such-host.invalid", 80),
        ("http", "bad host", 80),
        ("ftp", "x", 21),
    ]:
        entry = await cache.get(origin)
        assert entry.result == "error" and not entry.available
    assert (await cache.get(("http", "no-such-host.invalid", 80))).detail == (
        "forbidden destination: cannot resolve no-such-host.invalid: Name or service not known"
    )


# -- redirects --------------------------------------------------------------------------------


def redirect_chain(hops: int, final_body: bytes = ROBOTS) -> dict[str, Any]:
    """/robots.txt -> /r1 -> ... -> /r<hops> (which answers), mixing 302/301/307/308."""
    paths = ["/robots.txt"] + [f"/r{i}" for i in range(1, hops + 1)]
    codes = (302, 301, 307, 308)
    table: dict[str, Any] = {
        src: redirect(dst, codes[i % 4]) for i, (src, dst) in enumerate(itertools.pairwise(paths))
    }
    table[paths[-1]] = respond(body=final_body)
    return table


async def test_five_redirects_are_followed(make_cache) -> None:
    cache = make_cache()
    async with RecordingOrigin(routes(redirect_chain(5))) as origin:
        entry = await cache.get(origin.origin)
        assert len(origin.hits) == 6
    assert entry.result == "ok" and not allowed(entry, "/private")


async def test_six_redirects_mean_unavailable(make_cache) -> None:
    """RFC 9309 §2.3.1.2/§2.3.1.3: too many redirects = unavailable = no restrictions."""
    cache = make_cache()
    async with RecordingOrigin(routes(redirect_chain(6, b"User-agent: *\nDisallow: /\n"))) as o:
        entry = await cache.get(o.origin)
        assert len(o.hits) == 6  # the sixth redirect is not followed
    assert entry.result == "redirects" and entry.available and allowed(entry, "/private")


async def test_cross_host_redirect_rules_apply_to_the_original_origin(make_cache) -> None:
    cache = make_cache()
    async with robots_origin(body=b"User-agent: *\nDisallow: /elsewhere\n") as target:
        location = target.url("/robots.txt", host="localhost")
        async with RecordingOrigin(routes({"/robots.txt": redirect(location, 301)})) as origin:
            entry = await cache.get(origin.origin)
        assert len(target.hits) == 1
    assert entry.result == "ok" and not allowed(entry, "/elsewhere/x")
    assert cache.peek(origin.origin) is entry
    assert (
        cache.peek(target.origin) is None and cache.peek(("http", "localhost", target.port)) is None
    )


async def test_redirect_loop_and_bad_locations_do_not_raise(make_cache) -> None:
    cache = make_cache()
    table = {"/robots.txt": redirect("/robots.txt")}
    async with RecordingOrigin(routes(table)) as origin:
        assert (await cache.get(origin.origin)).result == "redirects"
    table = {"/robots.txt": respond(302)}  # no Location
    async with RecordingOrigin(routes(table)) as origin:
        assert (await cache.get(origin.origin)).result == "error"
    table = {"/robots.txt": redirect("mailto:x@example.com")}
    async with RecordingOrigin(routes(table)) as origin:
        assert (await cache.get(origin.origin)).result == "error"


# -- egress: every hop is admitted before it is requested -------------------------------------


def loopback_policy(*ports: int) -> EgressPolicy:
    """allow_private (local origins live on 127.0.0.1), only the given ports."""
    return EgressPolicy(DestinationsSection(allow_private=True, allowed_ports=list(ports)))


def strict_policy(*ports: int) -> EgressPolicy:
    """allow_private off; only the local test origin (127.0.0.1) exempted, by explicit range.
    Names resolve from a static map only: no DNS."""
    resolver = SafeResolver(
        {"internal.test": ["10.0.0.1"], "metadata.test": ["169.254.169.254"]},
        allow_ranges=["127.0.0.1/32"],
    )
    return EgressPolicy(DestinationsSection(allowed_ports=list(ports)), resolver)


async def test_redirect_to_a_port_outside_allowed_ports_is_never_requested(make_cache) -> None:
    """Issue repro: robots.txt 302 -> an internal admin URL on another local port."""
    async with RecordingOrigin(respond(body=b"deleted!")) as admin:
        target = f"http://127.0.0.1:{admin.port}/internal-admin?action=delete"
        async with robots_origin(302, headers={"Location": target}) as origin:
            cache = make_cache(egress=loopback_policy(origin.port))
            entry = await cache.get(origin.origin)
            assert len(origin.hits) == 1
        assert admin.hits == []  # never connected, let alone requested
    assert entry.result == "error" and not entry.available
    assert entry.detail == (
        f"redirect to forbidden destination: port {admin.port} is not in destinations.allowed_ports"
    )


async def test_redirect_within_policy_is_followed(make_cache) -> None:
    async with robots_origin(body=ROBOTS) as other:
        target = other.url("/robots.txt")
        async with robots_origin(302, headers={"Location": target}) as origin:
            cache = make_cache(egress=loopback_policy(origin.port, other.port))
            entry = await cache.get(origin.origin)
        assert len(other.hits) == 1
    assert entry.result == "ok" and not allowed(entry, "/private")


async def test_open_and_closed_ports_look_the_same(make_cache) -> None:
    """No port scan through robots.txt redirects: forbidden ports are refused unconnected."""
    details = []
    async with RecordingOrigin(respond(body=b"open")) as listening:
        for port in (listening.port, closed_port()):
            location = f"http://127.0.0.1:{port}/"
            async with robots_origin(301, headers={"Location": location}) as origin:
                entry = await make_cache(egress=loopback_policy(origin.port)).get(origin.origin)
            details.append((entry.result, entry.detail.replace(str(port), "N")))
        assert listening.hits == []
    assert details[0] == details[1] and details[0][0] == "error"


@pytest.mark.parametrize(
    ("location", "needle"),
    [
        ("http://internal.test/admin", "internal.test resolves to 10.0.0.1, a private address"),
        ("http://metadata.test/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1:8080/", "10.0.0.1 is a private address"),
        ("http://[::ffff:10.0.0.1]/", "IPv4-mapped form of 10.0.0.1, a private address"),
        ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 form of 169.254.169.254"),
        ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
        ("http://127.0.0.2/", "127.0.0.2 is a loopback address"),
        ("http://localhost/", "localhost resolves to ::1, a loopback address"),
        ("http://0x7f000002/", "127.0.0.2 is a loopback address"),  # canonicalised, no lookup
        ("http://2130706434:8080/", "127.0.0.2 is a loopback address"),
        ("http://0xa9fea9fe/", "169.254.169.254 is a link-local address"),
        ("http://LOCALHOST./", "localhost resolves to ::1, a loopback address"),
    ],
)
async def test_redirect_to_a_forbidden_address_never_connects(
    make_cache, location: str, needle: str
) -> None:
    async with robots_origin(302, headers={"Location": location}) as origin:
        cache = make_cache(egress=strict_policy(origin.port, 80, 8080))
        entry = await cache.get(origin.origin)
        assert len(origin.hits) == 1
    assert entry.result == "error" and not entry.available
    assert entry.detail.startswith("redirect to forbidden destination: ")
    assert needle in entry.detail
    # and no connect or lookup was even attempted: the netguard fixture fails the test if so


async def test_first_hop_is_admitted_too(make_cache) -> None:
    async with robots_origin(body=ROBOTS) as origin:
        cache = make_cache(egress=loopback_policy(origin.port + 1 if origin.port < 65535 else 1))
        entry = await cache.get(origin.origin)
        assert origin.hits == []
        strict = await make_cache(egress=strict_policy(80)).get(("http", "10.0.0.1", 80))
    assert entry.result == "error" and entry.detail.startswith("forbidden destination: port ")
    assert strict.result == "error"
    assert strict.detail == "forbidden destination: 10.0.0.1 is a private address"


async def test_names_connect_to_the_checked_address(make_cache) -> None:
    async with robots_origin(body=ROBOTS) as origin:
        cfg = DestinationsSection(
            allow_private=True,
            allowed_ports=[origin.port],
            hosts={"robots.test": ["127.0.0.1"], "moved.test": ["127.0.0.1"]},
        )
        egress = EgressPolicy.from_config(cfg)
        cache = make_cache(egress=egress)
        entry = await cache.get(("http", "robots.test", origin.port))
        assert entry.result == "ok" and not allowed(entry, "/private")
        [hit] = origin.hits
        assert hit.headers["Host"] == f"robots.test:{origin.port}"


# -- bodies -----------------------------------------------------------------------------------


async def test_huge_body_only_500_kib_read(make_cache) -> None:
    chunk = 64 * 1024
    total = 32 * chunk  # 2 MiB
    head = b"User-agent: *\nDisallow: /early\n"
    pad_line = b"# " + b"x" * 60 + b"\n"
    padding = pad_line * ((total - len(head) - 100) // len(pad_line))
    body = head + padding + b"Disallow: /late\n"
    body += b"#" * (total - len(body))
    state = {"sent": 0, "finished": False}

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), chunk):
            await resp.write(body[i : i + chunk])
            state["sent"] += chunk
            await asyncio.sleep(0.005)
        state["finished"] = True
        return resp

    cache = make_cache()
    async with RecordingOrigin(routes({"/robots.txt": stream})) as origin:
        entry = await cache.get(origin.origin)
        await asyncio.sleep(0.05)
    assert entry.result == "ok"
    assert entry.body is not None and len(entry.body) <= MAX_BYTES
    assert entry.body.endswith(b"\n")  # the partial last line is dropped
    assert not allowed(entry, "/early") and allowed(entry, "/late")
    assert not state["finished"] and state["sent"] < total  # the client stopped the transfer


async def test_exactly_max_bytes_is_kept_whole(make_cache) -> None:
    body = b"User-agent: *\nDisallow: /a\n"
    body += b"#" * (MAX_BYTES - len(body) - 1) + b"\n"
    cache = make_cache()
    async with robots_origin(body=body) as origin:
        entry = await cache.get(origin.origin)
    assert entry.body == body


async def test_invalid_utf8_is_parsed(make_cache) -> None:
    body = b"\xff\xfeUser-agent: *\n\xc3\x28Disallow: /caf\xe9\nDisallow: /x\xff\n"
    cache = make_cache()
    async with robots_origin(body=body) as origin:
        entry = await cache.get(origin.origin)
    assert entry.result == "ok" and entry.available and entry.body == body
    entry.rules.decide("AcmeBot", "/caf%C3%A9")  # any verdict, but no exception


async def test_too_complex_robots_closes_that_origin_only(make_cache) -> None:
    """Issue 9: a file beyond the matching limits is an "ok" entry whose rules disallow every
    URL (parsed in a worker thread, decided in bounded time); other origins are unaffected."""
    hostile = b"User-agent: *\n" + b"".join(
        b"Disallow: /*abcdefgh*1%d0\n" % i for i in range(18_000)
    )
    cache = make_cache()
    async with robots_origin(body=hostile) as bad, robots_origin(body=ROBOTS) as good:
        bad_entry = await cache.get(bad.origin)
        good_entry = await cache.get(good.origin)
    assert bad_entry.result == "ok" and bad_entry.available
    assert (
        bad_entry.rules.too_complex
        == f"{len(bad_entry.body.splitlines()) - 1} wildcard rules > 1000"
    )
    verdict = bad_entry.rules.decide("AcmeBot", "/abcdefgh" + "x" * 200_000)
    assert not verdict.allowed and verdict.rule is not None
    assert verdict.rule.startswith("robots.txt exceeds crawlguard's limits")
    assert allowed(bad_entry, "/robots.txt")
    assert good_entry.rules.too_complex is None and allowed(good_entry, "/public")


async def test_html_served_as_robots_is_an_entry(make_cache) -> None:
    html = b"<!doctype html><html><body><h1>Welcome</h1><p>Disallow nothing</p></body></html>"
    cache = make_cache()
    async with robots_origin(body=html, headers={"Content-Type": "text/html"}) as origin:
        entry = await cache.get(origin.origin)
    assert entry.result == "ok" and entry.available and allowed(entry, "/anything")


async def _raw_origin(behaviour: Callable[[asyncio.StreamWriter], Any]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await behaviour(writer)
        except Exception:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _garbage(writer: asyncio.StreamWriter) -> None:
    writer.write(b"SPDY/9 banana\r\n\x00\x01\x02garbage\r\n\r\n")
    await writer.drain()


async def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _truncated(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nUser-agent: *\nDisallow: /")
    await writer.drain()


@pytest.mark.parametrize("behaviour", [_garbage, _reset, _truncated])
async def test_misbehaving_origins_give_error_entries(make_cache, behaviour) -> None:
    server = await _raw_origin(behaviour)
    port = server.sockets[0].getsockname()[1]
    cache = make_cache()
    try:
        entry = await cache.get(("http", "127.0.0.1", port))
    finally:
        server.close()
        await server.wait_closed()
    assert entry.result == "error" and not entry.available


# -- lifetime ---------------------------------------------------------------------------------


async def test_cache_control_max_age_expiry(make_cache, clock) -> None:
    cache = make_cache(min_age=1)
    async with robots_origin(body=ROBOTS, headers={"Cache-Control": "public, max-age=1"}) as o:
        entry = await cache.get(o.origin)
        assert entry.expires_at == clock.now + 1
        clock.advance(0.9)
        assert cache.peek(o.origin) is entry
        assert await cache.get(o.origin) is entry and len(o.hits) == 1
        clock.advance(0.1)
        assert cache.peek(o.origin) is None
        again = await cache.get(o.origin)
        assert again is not entry and again.result == "ok" and len(o.hits) == 2


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ({}, DAY),
        ({"Cache-Control": "max-age=999999"}, DAY),  # capped at max_age
        ({"Cache-Control": "max-age=3600"}, 3600),
        ({"Cache-Control": "max-age=3600", "Age": "600"}, 3000),
        ({"Cache-Control": "s-maxage=120, max-age=3600"}, 120),
        ({"Cache-Control": "no-store"}, 60),  # short, not zero: min_age
        ({"Cache-Control": "no-cache"}, 60),
        ({"Cache-Control": "max-age=0"}, 60),
        ({"Cache-Control": "max-age=soon"}, 60),
        (
            {"Date": "Mon, 01 Jan 2024 00:00:00 GMT", "Expires": "Mon, 01 Jan 2024 02:00:00 GMT"},
            7200,
        ),
        ({"Expires": "0"}, 60),
    ],
)
async def test_lifetime_from_caching_headers(make_cache, clock, headers, lifetime) -> None:
    cache = make_cache()
    async with robots_origin(body=ROBOTS, headers=headers) as origin:
        entry = await cache.get(origin.origin)
    assert entry.expires_at - entry.fetched_at == pytest.approx(lifetime)


async def test_max_age_setting_is_capped_at_24h(make_cache) -> None:
    cache = make_cache(max_age=10 * DAY)
    async with robots_origin(body=ROBOTS) as origin:
        entry = await cache.get(origin.origin)
    assert entry.expires_at - entry.fetched_at == DAY


async def test_404_is_cached_too(make_cache, clock) -> None:
    cache = make_cache(max_age=600)
    async with robots_origin(404) as origin:
        for _ in range(5):
            await cache.get(origin.origin)
        assert len(origin.hits) == 1
        clock.advance(600)
        await cache.get(origin.origin)
        assert len(origin.hits) == 2


# -- failures: stale copy and back-off --------------------------------------------------------


async def test_stale_copy_served_after_500_until_30_days(make_cache, clock) -> None:
    status = {"code": 200}

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=status["code"], body=ROBOTS)

    results: list[str] = []
    cache = make_cache(max_age=3600, on_fetch=results.append)
    async with RecordingOrigin(routes({"/robots.txt": flaky})) as origin:
        good = await cache.get(origin.origin)
        status["code"] = 500
        clock.advance(3600)
        stale = await cache.get(origin.origin)
        assert stale.result == "stale" and stale.available
        assert stale.sha256 == good.sha256 and stale.body == good.body
        assert stale.rules is good.rules and "5xx" in stale.detail
        assert stale.retry_after(clock.now) == 30
        # keep failing: the stale copy stays usable up to 30 days after the good fetch
        clock.now = good.fetched_at + 30 * DAY - 10
        assert (await cache.get(origin.origin)).result == "stale"
        clock.advance(11)
        gone = await cache.get(origin.origin)
        assert gone.result == "5xx" and not gone.available and gone.sha256 is None
        # recovery resets everything
        status["code"] = 200
        clock.advance(gone.retry_after(clock.now))
        back = await cache.get(origin.origin)
        assert back.result == "ok" and back.expires_at - back.fetched_at == 3600
    assert results == ["ok", "stale", "stale", "5xx", "ok"]


async def test_4xx_forgets_the_good_copy(make_cache, clock) -> None:
    status = {"code": 200}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status["code"], body=ROBOTS)

    cache = make_cache(max_age=60, min_age=1)
    async with RecordingOrigin(routes({"/robots.txt": handler})) as origin:
        await cache.get(origin.origin)
        for code, result, available in [(404, "4xx", True), (500, "5xx", False)]:
            status["code"] = code
            clock.advance(60)
            entry = await cache.get(origin.origin)
            assert (entry.result, entry.available) == (result, available)


async def test_failure_back_off_grows_and_is_capped(make_cache, clock) -> None:
    cache = make_cache()
    async with robots_origin(500) as origin:
        expected = [30, 60, 120, 240, 480, 900, 900]
        for n, delay in enumerate(expected, start=1):
            entry = await cache.get(origin.origin)
            assert len(origin.hits) == n
            assert entry.retry_after(clock.now) == delay
            for _ in range(10):  # no refetch on every call
                clock.advance(delay / 20)
                assert await cache.get(origin.origin) is entry
                assert entry.retry_after(clock.now) >= 1
            assert len(origin.hits) == n
            clock.now = entry.expires_at


async def test_retry_after_is_whole_seconds_at_least_one(make_cache, clock) -> None:
    cache = make_cache()
    entry = await cache.get(("http", "127.0.0.1", closed_port()))
    assert entry.retry_after(clock.now + 0.5) == 30
    assert entry.retry_after(clock.now + 29.5) == 1
    assert entry.retry_after(clock.now + 1000) == 1


# -- single flight, LRU, TLS, metrics, lifecycle ----------------------------------------------


async def test_single_flight(make_cache) -> None:
    results: list[str] = []
    cache = make_cache(on_fetch=results.append)
    async with robots_origin(body=ROBOTS, delay=0.1) as origin:
        entries = await asyncio.gather(*(cache.get(origin.origin) for _ in range(20)))
        assert len(origin.hits) == 1
    assert all(e is entries[0] for e in entries) and results == ["ok"]


async def test_cancelled_waiter_does_not_cancel_the_shared_fetch(make_cache) -> None:
    cache = make_cache()
    async with robots_origin(body=ROBOTS, delay=0.1) as origin:
        impatient = asyncio.create_task(cache.get(origin.origin))
        patient = asyncio.create_task(cache.get(origin.origin))
        await asyncio.sleep(0.02)
        impatient.cancel()
        entry = await patient
        assert entry.result == "ok" and len(origin.hits) == 1
        assert impatient.cancelled()


async def test_lru_bound(make_cache) -> None:
    cache = make_cache(max_origins=2)
    async with (
        robots_origin(body=ROBOTS) as a,
        robots_origin(body=ROBOTS) as b,
        robots_origin(body=ROBOTS) as c,
    ):
        await cache.get(a.origin)
        await cache.get(b.origin)
        assert cache.peek(a.origin) is not None  # a is now most recently used
        await cache.get(c.origin)
        assert len(cache) == 2
        assert cache.peek(b.origin) is None
        assert cache.peek(a.origin) is not None and cache.peek(c.origin) is not None
        await cache.get(b.origin)
        assert len(b.hits) == 2 and len(cache) == 2


async def test_memory_bound_in_bytes(make_cache) -> None:
    big = b"User-agent: *\nDisallow: /x\n" + b"#" * 400_000 + b"\n"
    cache = make_cache(max_bytes=1_000_000)
    servers = [robots_origin(body=big) for _ in range(3)]
    async with servers[0] as a, servers[1] as b, servers[2] as c:
        for o in (a, b, c):
            await cache.get(o.origin)
        assert len(cache) == 2 and cache.peek(a.origin) is None


async def test_memory_bound_counts_parsed_rules_not_just_bodies(make_cache) -> None:
    # ~110 KB of rules each, but ~1.3 MB each once parsed: two fit in 3 MB, not three.
    rules = b"User-agent: *\n" + b"".join(b"Disallow: /path/%d/x\n" % i for i in range(5000))
    cache = make_cache(max_bytes=3_000_000)
    servers = [robots_origin(body=rules) for _ in range(3)]
    async with servers[0] as a, servers[1] as b, servers[2] as c:
        for o in (a, b, c):
            await cache.get(o.origin)
        assert len(cache) == 2 and cache.peek(a.origin) is None


async def test_https_origin_with_trusted_ca(make_cache) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    handler = routes({"/robots.txt": respond(body=ROBOTS)})
    async with RecordingOrigin(handler, ssl_context=server_ctx) as origin:
        assert origin.origin[0] == "https"
        entry = await make_cache(ssl=client_ctx).get(origin.origin)
        assert entry.result == "ok" and not allowed(entry, "/private")
        untrusted = await make_cache().get(origin.origin)  # system trust store: no
        assert untrusted.result == "error" and not untrusted.available


async def test_on_fetch_once_per_attempt(make_cache, clock) -> None:
    results: list[str] = []
    cache = make_cache(on_fetch=results.append, fetch_timeout=0.3)
    refused = ("http", "127.0.0.1", closed_port())
    async with (
        robots_origin(body=ROBOTS) as ok,
        robots_origin(404) as missing,
        robots_origin(429) as limited,
        robots_origin(502) as broken,
        robots_origin(body=ROBOTS, delay=3) as slow,
    ):
        for origin in (ok.origin, missing.origin, limited.origin, broken.origin, slow.origin):
            for _ in range(3):
                await cache.get(origin)
        for _ in range(3):
            await cache.get(refused)
    assert results == ["ok", "4xx", "429", "5xx", "timeout", "error"]


async def test_on_fetch_errors_are_contained(make_cache) -> None:
    def broken(result: str) -> None:
        raise RuntimeError("metrics down")

    cache = make_cache(on_fetch=broken)
    async with robots_origin(body=ROBOTS) as origin:
        assert (await cache.get(origin.origin)).result == "ok"


async def test_close_during_fetch_gives_waiters_an_entry(make_cache) -> None:
    cache = make_cache()
    async with robots_origin(body=ROBOTS, delay=3) as origin:
        waiters = [asyncio.create_task(cache.get(origin.origin)) for _ in range(3)]
        await asyncio.sleep(0.05)
        await cache.close()
        entries = await asyncio.gather(*waiters)
        assert all(e.result == "error" and not e.available for e in entries)
        after = await cache.get(origin.origin)
        assert after.result == "error" and len(origin.hits) == 1


async def test_peek_is_pure_memory(make_cache, clock) -> None:
    cache = make_cache()
    origin = ("http", "127.0.0.1", closed_port())
    assert cache.peek(origin) is None and len(cache) == 0  # a miss creates nothing
    entry = await cache.get(origin)
    assert cache.peek(origin) is entry
    clock.now = entry.expires_at
    assert cache.peek(origin) is None


async def test_gzip_bomb_is_cut_at_500_kib_decompressed(make_cache) -> None:
    raw = b"User-agent: *\nDisallow: /early\n" + b"# padding padding padding\n" * 2_000_000
    bomb = gzip.compress(raw + b"Disallow: /late\n", compresslevel=9)
    assert len(bomb) < 200_000 < 50_000_000 < len(raw)
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    cache = make_cache()
    async with robots_origin(body=bomb, headers=headers) as origin:
        entry = await cache.get(origin.origin)
    assert entry.result == "ok" and entry.body is not None and len(entry.body) <= MAX_BYTES
    assert not allowed(entry, "/early") and allowed(entry, "/late")
