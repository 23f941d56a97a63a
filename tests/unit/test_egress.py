"""Egress: address classification, the safe resolver, the egress policy, the aiohttp adapter
and the network guard itself.

No test here can send a packet off this machine: names resolve through static maps or fake
lookups, the only real lookups are of loopback names (answered without DNS by the guard), and
every test runs under `netguard`, which fails it on any non-loopback attempt before a socket
connects. Nothing here opens a socket that connects: the adapter against a real origin and the
guard letting loopback through are in tests/e2e/test_egress_e2e.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from netguard import NetguardRefused, install, netguard  # noqa: F401

from crawlguard.config import DestinationsSection
from crawlguard.egress import (
    EgressPolicy,
    Resolution,
    SafeResolver,
    classify,
    forbidden_reason,
)
from crawlguard.egress import resolver as resolver_module

pytestmark = [pytest.mark.usefixtures("netguard"), pytest.mark.timeout(20)]

V4 = ipaddress.IPv4Address


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# -- classification ---------------------------------------------------------------------------

DIRECT = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("100.127.255.255", "shared (CGNAT)"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", '"this network"'),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "IETF protocol assignment"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.88.99.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard-only"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "reserved"),
    ("4000::1", "reserved"),
    ("5f00::1", "reserved"),
]


def _sixtofour(v4: str) -> str:
    return str(ipaddress.IPv6Address((0x2002 << 112) | (int(V4(v4)) << 80) | 1))


def _teredo(client: str, server: str = "65.54.227.120") -> str:
    n = (0x20010000 << 96) | (int(V4(server)) << 64) | (0x8000 << 48) | (0x63BF << 32)
    return str(ipaddress.IPv6Address(n | (int(V4(client)) ^ 0xFFFFFFFF)))


EMBEDDED_FORMS = {
    "IPv4-mapped": lambda v4: f"::ffff:{v4}",
    "IPv4-compatible": lambda v4: f"::{v4}",
    "IPv4-translated": lambda v4: f"::ffff:0:{v4}",
    "NAT64": lambda v4: f"64:ff9b::{v4}",
    "local-use NAT64": lambda v4: f"64:ff9b:1::{v4}",
    "6to4": _sixtofour,
    "Teredo client": _teredo,
}
EMBEDDED = [
    (form, make(v4), v4, category)
    for v4, category in [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
    ]
    for form, make in EMBEDDED_FORMS.items()
    if (form, v4) != ("IPv4-compatible", "0.0.0.0")  # that one is "::", unspecified itself
]

PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above
    "172.15.255.255",
    "172.32.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700::1",
    "2001:4860:4860::8888",
    "::ffff:93.184.216.34",
    "64:ff9b::93.184.216.34",
    _sixtofour("93.184.216.34"),
    _teredo("93.184.216.34"),
]


@pytest.mark.parametrize(("address", "category"), DIRECT)
def test_forbidden_categories(address: str, category: str) -> None:
    verdict = classify(ip(address))
    assert verdict is not None and verdict.category.name == category
    reason = forbidden_reason(ip(address))
    assert reason is not None and reason.endswith(f" {category} address")
    assert reason.startswith(address.split("%")[0])


@pytest.mark.parametrize(("form", "address", "v4", "category"), EMBEDDED)
def test_embedded_ipv4_is_judged_by_the_ipv4_address(form, address, v4, category) -> None:
    verdict = classify(ip(address))
    assert verdict is not None, address
    assert verdict.category.name == category
    assert verdict.reason.startswith(f"{ip(address)} is ")
    assert f" {form} form of {v4}, " in verdict.reason
    assert verdict.reason.endswith(f" {category} address")


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert classify(ip(address)) is None and forbidden_reason(ip(address)) is None


def test_reason_wording() -> None:
    assert forbidden_reason(ip("169.254.169.254")) == "169.254.169.254 is a link-local address"
    assert forbidden_reason(ip("::ffff:127.0.0.1")) == (
        "::ffff:7f00:1 is an IPv4-mapped form of 127.0.0.1, a loopback address"
    )
    assert forbidden_reason(ip("64:ff9b:1::8.8.8.8")) == (
        "64:ff9b:1::808:808 is a local-use NAT64 address"
    )


def test_private_categories_are_exactly_the_site_local_ones() -> None:
    private = {"127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "fd00::1", "fec0::1"}
    private |= {"::1", "fe80::1", "::ffff:10.0.0.1", "64:ff9b:1::8.8.8.8"}
    never = {"0.0.0.0", "::", "0.1.2.3", "224.0.0.1", "ff02::1", "255.255.255.255", "240.0.0.1"}
    never |= {"192.0.2.1", "198.18.0.1", "100::1", "2001:db8::1", "192.0.0.8", "::ffff:0.0.0.0"}
    for a in private:
        v = classify(ip(a))
        assert v is not None and v.private, a
    for a in never:
        v = classify(ip(a))
        assert v is not None and not v.private, a


# -- SafeResolver -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLookup:
    """Answers from a table; never touches the network."""

    def __init__(self, answers: dict[str, Sequence[str] | BaseException], delay: float = 0.0):
        self.answers = answers
        self.delay = delay
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.answers[host]
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def no_lookup(host: str, port: int) -> Sequence[str]:
    raise AssertionError(f"unexpected lookup of {host}")


async def test_ip_literals_are_classified_without_lookup() -> None:
    r = SafeResolver(lookup=no_lookup)
    ok = await r.resolve("93.184.216.34", 443)
    assert ok == Resolution("93.184.216.34", ("93.184.216.34",), "93.184.216.34", None)
    bad = await r.resolve("169.254.169.254", 80)
    assert bad.pinned == "" and bad.reason == "169.254.169.254 is a link-local address"
    v6 = await r.resolve("2606:4700::1", 443)
    assert v6.pinned == "2606:4700::1" and v6.ok
    assert (await r.resolve("::ffff:127.0.0.1", 80)).reason is not None
    assert r.lookups == 0 and len(r) == 0


@pytest.mark.parametrize(
    "name", ["localhost", "LOCALHOST.", "a.b.localhost", "localhost.localdomain", "ip6-localhost"]
)
async def test_loopback_names_without_lookup(name: str) -> None:
    strict = await SafeResolver(lookup=no_lookup).resolve(name, 80)
    assert strict.reason is not None and "127.0.0.1, a loopback address" in strict.reason
    dev = await SafeResolver(lookup=no_lookup, allow_private=True).resolve(name, 80)
    assert dev.ok and dev.pinned == "127.0.0.1" and dev.addresses == ("127.0.0.1", "::1")


async def test_static_map_first_and_still_checked() -> None:
    r = SafeResolver(
        {"Site.Test.": ["93.184.216.34", "2606:4700::1"], "meta.test": ["169.254.169.254"]},
        lookup=no_lookup,
    )
    site = await r.resolve("site.test", 443)
    assert site.pinned == "93.184.216.34" and site.addresses == ("93.184.216.34", "2606:4700::1")
    meta = await r.resolve("meta.test", 80)
    assert meta.reason == "meta.test resolves to 169.254.169.254, a link-local address"
    assert r.lookups == 0
    assert r.resolve_cached("site.test") == site  # no I/O needed for static names


def test_static_map_rejects_non_addresses() -> None:
    with pytest.raises(ValueError, match=r"'bad\.test'.*'nope'"):
        SafeResolver({"bad.test": ["nope"]})


async def test_any_forbidden_address_refuses_the_name() -> None:
    lookup = FakeLookup({"mixed.test": ["93.184.216.34", "10.0.0.1", "93.184.216.35"]})
    res = await SafeResolver(lookup=lookup).resolve("mixed.test", 80)
    assert res.pinned == "" and res.reason == ("mixed.test resolves to 10.0.0.1, a private address")
    assert res.addresses == ("93.184.216.34", "10.0.0.1", "93.184.216.35")


async def test_pins_the_first_checked_address() -> None:
    lookup = FakeLookup({"site.test": ["2606:4700::1", "93.184.216.34", "2606:4700::1"]})
    res = await SafeResolver(lookup=lookup).resolve("site.test", 443)
    assert res.ok and res.pinned == "2606:4700::1"
    assert res.addresses == ("2606:4700::1", "93.184.216.34")  # deduplicated, order kept
    assert res.pinned in res.addresses


async def test_ttl_and_cache_hits_do_no_io() -> None:
    clock = FakeClock()
    lookup = FakeLookup({"site.test": ["93.184.216.34"]})
    r = SafeResolver(ttl=30, clock=clock, lookup=lookup)
    assert r.resolve_cached("site.test") is None
    first = await r.resolve("site.test", 80)
    clock.now += 29.9
    assert await r.resolve("site.test", 443) is first and r.resolve_cached("site.test") is first
    assert len(lookup.calls) == 1
    clock.now += 0.1
    assert r.resolve_cached("site.test") is None
    lookup.answers["site.test"] = ["93.184.216.35"]
    again = await r.resolve("site.test", 80)
    assert again.pinned == "93.184.216.35" and len(lookup.calls) == 2


async def test_failures_are_cached_briefly() -> None:
    clock = FakeClock()
    lookup = FakeLookup({"gone.test": socket.gaierror(socket.EAI_NONAME, "Name not known")})
    r = SafeResolver(clock=clock, lookup=lookup)
    res = await r.resolve("gone.test", 80)
    assert res.reason == "cannot resolve gone.test: Name not known" and res.pinned == ""
    clock.now += 4.9
    assert (await r.resolve("gone.test", 80)) is res and len(lookup.calls) == 1
    clock.now += 0.1
    await r.resolve("gone.test", 80)
    assert len(lookup.calls) == 2
    lookup.answers["empty.test"] = []
    assert (await r.resolve("empty.test", 80)).reason == "cannot resolve empty.test: no addresses"


async def test_forbidden_answers_are_cached_for_the_full_ttl() -> None:
    clock = FakeClock()
    lookup = FakeLookup({"evil.test": ["10.0.0.1"]})
    r = SafeResolver(clock=clock, lookup=lookup)
    await r.resolve("evil.test", 80)
    clock.now += 59
    await r.resolve("evil.test", 80)
    assert len(lookup.calls) == 1


async def test_lookup_timeout() -> None:
    lookup = FakeLookup({"slow.test": ["93.184.216.34"]}, delay=5)
    res = await SafeResolver(lookup=lookup, lookup_timeout=0.05).resolve("slow.test", 80)
    assert res.reason == "cannot resolve slow.test: timed out"


async def test_single_flight() -> None:
    lookup = FakeLookup({"site.test": ["93.184.216.34"]}, delay=0.05)
    r = SafeResolver(lookup=lookup)
    results = await asyncio.gather(*(r.resolve("site.test", 80) for _ in range(20)))
    assert len(lookup.calls) == 1 and all(x is results[0] for x in results)


async def test_cancelled_waiter_does_not_cancel_the_shared_lookup() -> None:
    lookup = FakeLookup({"site.test": ["93.184.216.34"]}, delay=0.05)
    r = SafeResolver(lookup=lookup)
    impatient = asyncio.create_task(r.resolve("site.test", 80))
    patient = asyncio.create_task(r.resolve("site.test", 80))
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert (await patient).ok and len(lookup.calls) == 1


async def test_lru_bound() -> None:
    lookup = FakeLookup({f"n{i}.test": ["93.184.216.34"] for i in range(3)})
    r = SafeResolver(lookup=lookup, max_names=2)
    for i in range(3):
        await r.resolve(f"n{i}.test", 80)
    assert len(r) == 2 and r.resolve_cached("n0.test") is None
    assert r.resolve_cached("n2.test") is not None


async def test_allow_private_admits_site_local_but_never_the_rest() -> None:
    answers: dict[str, Sequence[str] | BaseException] = {
        "lan.test": ["10.0.0.1", "fd00::1", "100.64.0.1", "169.254.169.254", "::ffff:127.0.0.1"],
        "zero.test": ["0.0.0.0"],
        "any6.test": ["::"],
        "mcast.test": ["224.0.0.1"],
        "bcast.test": ["255.255.255.255"],
        "res.test": ["240.0.0.1"],
        "doc.test": ["192.0.2.1"],
    }
    r = SafeResolver(lookup=FakeLookup(answers), allow_private=True)
    assert (await r.resolve("lan.test", 80)).pinned == "10.0.0.1"
    for name in answers.keys() - {"lan.test"}:
        res = await r.resolve(name, 80)
        assert res.reason is not None and res.pinned == "", name


async def test_allow_ranges_exempt_explicit_networks_only() -> None:
    lookup = FakeLookup({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.2"]})
    r = SafeResolver(lookup=lookup, allow_ranges=["127.0.0.1/32"])
    assert (await r.resolve("a.test", 80)).pinned == "127.0.0.1"
    assert (await r.resolve("b.test", 80)).reason is not None


async def test_real_getaddrinfo_path_with_patched_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default lookup goes through loop.getaddrinfo; here it answers forbidden addresses."""
    loop = asyncio.get_running_loop()
    seen: list[Any] = []

    async def fake_getaddrinfo(host: Any, port: Any, **kwargs: Any) -> list[Any]:
        seen.append((host, port, kwargs))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", port, 0, 2)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    res = await SafeResolver().resolve("rebind.test", 8080)
    assert res.reason == "rebind.test resolves to fe80::1, a link-local address"
    assert seen == [("rebind.test", 8080, {"type": socket.SOCK_STREAM})]


async def test_real_getaddrinfo_of_a_loopback_name() -> None:
    # The guard answers loopback names itself (no DNS); this runs loop.getaddrinfo for real.
    addresses = await resolver_module._getaddrinfo("localhost", 80)
    assert addresses and set(addresses) <= {"127.0.0.1", "::1"}


# -- EgressPolicy -----------------------------------------------------------------------------


def dest(**kw: Any) -> DestinationsSection:
    return DestinationsSection.model_validate(kw)


async def test_policy_port_first_without_lookup() -> None:
    policy = EgressPolicy(dest(allowed_ports=[443]), SafeResolver(lookup=no_lookup))
    res = await policy.admit("site.test", 22)
    assert res.reason == "port 22 is not in destinations.allowed_ports" and res.pinned == ""


async def test_policy_admits_names_and_literals() -> None:
    lookup = FakeLookup({"site.test": ["93.184.216.34"]})
    policy = EgressPolicy(dest(), SafeResolver(lookup=lookup))
    assert (await policy.admit("site.test", 443)).pinned == "93.184.216.34"
    assert (await policy.admit("2606:4700::1", 443)).pinned == "2606:4700::1"
    assert (await policy.admit("10.0.0.1", 80)).reason == "10.0.0.1 is a private address"
    assert lookup.calls == [("site.test", 443)]  # literals are judged without a lookup


async def test_policy_from_config_uses_hosts_and_ttl() -> None:
    cfg = dest(hosts={"Intranet.Test": ["10.1.2.3"], "ok.test": ["93.184.216.34"]}, dns_cache_ttl=7)
    policy = EgressPolicy.from_config(cfg)
    assert policy.resolver.ttl == 7 and not policy.resolver.allow_private
    assert (await policy.admit("intranet.test", 80)).reason == (
        "intranet.test resolves to 10.1.2.3, a private address"
    )
    assert (await policy.admit("ok.test", 80)).pinned == "93.184.216.34"
    dev = EgressPolicy.from_config(dest(allow_private=True, hosts={"i.test": ["10.1.2.3"]}))
    assert (await dev.admit("i.test", 80)).pinned == "10.1.2.3"


def test_policy_refuses_a_resolver_disagreeing_on_allow_private() -> None:
    with pytest.raises(ValueError, match="allow_private"):
        EgressPolicy(dest(allow_private=False), SafeResolver(allow_private=True))


# -- aiohttp adapter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "addresses", "allow_private"),
    [
        ("internal.test", ["10.0.0.1"], False),
        ("metadata.test", ["169.254.169.254"], False),
        ("zero.test", ["0.0.0.0"], True),  # 0.0.0.0 reaches the local host on Linux: never
    ],
)
async def test_aiohttp_forbidden_name_fails_without_connecting(
    name: str, addresses: list[str], allow_private: bool
) -> None:
    resolver = SafeResolver({name: addresses}, allow_private=allow_private)
    policy = EgressPolicy(dest(allow_private=allow_private), resolver)
    connector = aiohttp.TCPConnector(resolver=policy.aiohttp_resolver(), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as exc:
            await session.get(f"http://{name}/")
    assert addresses[0] in str(exc.value.os_error)


async def test_adapter_refusal_is_an_oserror() -> None:
    adapter = EgressPolicy(dest(), SafeResolver({"m.test": ["10.0.0.1"]})).aiohttp_resolver()
    with pytest.raises(OSError, match=r"m\.test resolves to 10\.0\.0\.1"):
        await adapter.resolve("m.test", 80)
    ok = EgressPolicy(dest(), SafeResolver({"p.test": ["2606:4700::1", "93.184.216.34"]}))
    [v4] = await ok.aiohttp_resolver().resolve("p.test", 80, family=socket.AF_INET)
    assert v4["host"] == "93.184.216.34" and v4["family"] == socket.AF_INET
    [any_] = await ok.aiohttp_resolver().resolve("p.test", 80, family=socket.AF_UNSPEC)
    assert any_["host"] == "2606:4700::1"
    await adapter.close()


# -- the guard itself -------------------------------------------------------------------------


class Tripwire:
    """Stands in for the real socket functions under a test's guard: if the guard let an
    attempt through, it lands here, is recorded, and still never reaches the kernel."""

    NAMES = ("connect", "connect_ex", "sendto")
    MODULE = ("create_connection", "getaddrinfo", "gethostbyname")

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> Tripwire:
        for n in self.NAMES:
            self._saved[n] = getattr(socket.socket, n)
            setattr(socket.socket, n, self._trip(n))
        for n in self.MODULE:
            self._saved["mod." + n] = getattr(socket, n)
            setattr(socket, n, self._trip(n))
        return self

    def _trip(self, name: str) -> Any:
        def trip(*args: Any, **kwargs: Any) -> Any:
            self.hits.append(name)
            raise OSError(f"tripwire: {name} reached")

        return trip

    def __exit__(self, *exc: object) -> None:
        for n in self.NAMES:
            setattr(socket.socket, n, self._saved[n])
        for n in self.MODULE:
            setattr(socket, n, self._saved["mod." + n])


def test_guard_refuses_before_the_real_call() -> None:
    with Tripwire() as wire:
        record: list[str] = []
        undo = install(record)
        try:
            with socket.socket() as s, pytest.raises(NetguardRefused):
                s.connect(("10.0.0.1", 80))
            with socket.socket() as s, pytest.raises(NetguardRefused):
                s.connect_ex(("169.254.169.254", 80))
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with udp as s, pytest.raises(NetguardRefused):
                s.sendto(b"x", ("192.0.2.1", 53))
            with socket.socket() as s, pytest.raises(NetguardRefused):
                s.connect(("example.com", 80))  # a name: no C-level lookup either
            with pytest.raises(NetguardRefused):
                socket.create_connection(("example.com", 80))
            with pytest.raises(NetguardRefused):
                socket.getaddrinfo("example.com", 80)
            with pytest.raises(NetguardRefused):
                socket.getaddrinfo("10.0.0.1", 80)
            with pytest.raises(NetguardRefused):
                socket.gethostbyname("example.com")
        finally:
            undo()
    assert wire.hits == []
    assert len(record) == 8 and all(line.startswith("netguard: refused") for line in record)


async def test_guard_covers_asyncio_connections() -> None:
    with Tripwire() as wire:
        record: list[str] = []
        undo = install(record)
        try:
            with pytest.raises(NetguardRefused):
                await asyncio.open_connection("10.0.0.1", 80)
            with pytest.raises(NetguardRefused):
                await asyncio.open_connection("example.com", 80)
        finally:
            undo()
    assert wire.hits == [] and len(record) == 2
