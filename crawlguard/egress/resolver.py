"""Resolve-then-check: the only way crawlguard turns a host name into an address to dial.

Modelled on Stripe Smokescreen's safeResolve: resolve the name, classify EVERY address it
resolves to, refuse the name if any of them is forbidden (an attacker controls their own DNS
and can mix a public and a private answer), and hand back one checked address to *pin*, so
the connection goes to exactly what was checked (no second lookup a rebinding DNS server could
answer differently).

* IP literals are classified directly, no lookup.
* Loopback names (`localhost`, `*.localhost`, `localhost.localdomain`, `ip6-localhost`,
  `ip6-loopback`) are 127.0.0.1 / ::1 without a lookup.
* Then the static `hosts` map (config `destinations.hosts`, like /etc/hosts).
* Then `getaddrinfo` in asyncio's executor, cached per name for `ttl` seconds (failures for
  `negative_ttl`), LRU-bounded, one lookup per name however many callers wait. A cache hit
  does no I/O and never yields to the event loop.

`allow_private=True` (local development only) admits the *private* categories (loopback,
RFC 1918, link-local, CGNAT, ULA, site-local, local-use NAT64) but still never the
unspecified address, "this network", multicast, broadcast, reserved, documentation,
benchmarking or discard ranges: see `classify.py`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractResolver, ResolveResult

from crawlguard.egress.classify import classify, parse_ip

if TYPE_CHECKING:
    from crawlguard.config import DestinationsSection

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

Lookup = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> addresses, raising OSError when the name does not resolve."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome for one host: either `pinned` (the address to dial) or `reason`."""

    host: str
    addresses: tuple[str, ...]  # every address checked (all of them when refused by one)
    pinned: str  # the address to dial; "" when refused
    reason: str | None  # why the destination is refused (forbidden, unresolvable, bad port)

    @property
    def ok(self) -> bool:
        return self.reason is None


def is_loopback_name(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.endswith(".localhost")


def normalize_host(host: str) -> str:
    """Defensive canonical form: lower case, no brackets, no trailing dots.

    Callers are expected to pass `identity.canonical_host` output already; this only makes
    the aiohttp adapter and the redirect checks see the same key the cache uses."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    return h.rstrip(".")


def _refused(host: str, reason: str, addresses: tuple[str, ...] = ()) -> Resolution:
    return Resolution(host, addresses, "", reason)


class SafeResolver:
    """Names to checked, pinned addresses (see the module docstring)."""

    def __init__(
        self,
        hosts: Mapping[str, Sequence[str]] | None = None,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_names: int = 10_000,
        allow_private: bool = False,
        allow_ranges: Sequence[str] = (),
        lookup_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        lookup: Lookup | None = None,
    ) -> None:
        if ttl <= 0 or negative_ttl < 0:
            raise ValueError("ttl must be > 0 and negative_ttl >= 0")
        self._hosts: dict[str, tuple[str, ...]] = {}
        for name, addresses in (hosts or {}).items():
            parsed = []
            for a in addresses:
                ip = parse_ip(a)
                if ip is None:
                    raise ValueError(f"hosts[{name!r}]: {a!r} is not an IP address")
                parsed.append(ip.compressed)
            self._hosts[normalize_host(name)] = tuple(dict.fromkeys(parsed))
        self.ttl = float(ttl)
        self.negative_ttl = float(negative_ttl)
        self.allow_private = allow_private
        # Explicit exemptions (like Smokescreen's --allow-range): addresses inside these
        # networks are dialled whatever their category. Not in the config; for embedding
        # and tests (e.g. "127.0.0.1/32" to reach a local test origin with allow_private off).
        self._allow_ranges = tuple(ipaddress.ip_network(r, strict=False) for r in allow_ranges)
        self._max_names = max(1, int(max_names))
        self._lookup_timeout = float(lookup_timeout)
        self._clock = clock
        self._lookup = lookup or _getaddrinfo
        self._cache: OrderedDict[str, tuple[float, Resolution]] = OrderedDict()
        self._judged: dict[str, Resolution] = {}  # no-lookup judgements, see `_keep`
        self._inflight: dict[str, asyncio.Task[Resolution]] = {}
        self.lookups = 0  # getaddrinfo calls made (tests, metrics)

    def __len__(self) -> int:
        return len(self._cache)

    # -- public ------------------------------------------------------------------------------

    def judge(self, host: str, addresses: Sequence[str]) -> Resolution:
        """Check every address of `host`: refuse if any is forbidden, else pin the first."""
        if not addresses:
            return _refused(host, f"cannot resolve {host}: no addresses")
        checked = tuple(dict.fromkeys(addresses))
        is_literal = len(checked) == 1 and checked[0] == host
        for address in checked:
            ip = parse_ip(address)
            if ip is None:
                return _refused(host, f"{host} resolves to {address!r}, not an IP", checked)
            verdict = classify(ip)
            if verdict is None or (self.allow_private and verdict.private):
                continue
            if any(ip in net for net in self._allow_ranges):
                continue
            if is_literal:
                return _refused(host, verdict.reason, checked)
            return _refused(host, f"{host} resolves to {address}, {verdict.what}", checked)
        return Resolution(host, checked, checked[0], None)

    def resolve_cached(self, host: str) -> Resolution | None:
        """The answer without any I/O (literal, loopback name, static map, fresh cache) or None."""
        return self._cached(normalize_host(host))

    def _cached(self, host: str) -> Resolution | None:
        if not host:
            return _refused(host, "empty host")
        judged = self._judged.get(host)
        if judged is not None:
            return judged
        if parse_ip(host) is not None:
            return self._keep(self.judge(host, (host,)))
        if is_loopback_name(host):
            return self._keep(self.judge(host, _LOOPBACK_ADDRESSES))
        static = self._hosts.get(host)
        if static is not None:
            return self._keep(self.judge(host, static))
        hit = self._cache.get(host)
        if hit is None:
            return None
        expires, resolution = hit
        if self._clock() >= expires:
            del self._cache[host]
            return None
        self._cache.move_to_end(host)
        return resolution

    def _keep(self, resolution: Resolution) -> Resolution:
        """Judgements that need no lookup (IP literals, loopback names, the static map) never
        change for this resolver (a reload builds a new one): judged once, not per request."""
        if len(self._judged) >= self._max_names:
            self._judged.clear()
        self._judged[resolution.host] = resolution
        return resolution

    async def resolve(self, host: str, port: int) -> Resolution:
        """Checked addresses for `host` (canonical form), pinning one, or the refusal reason."""
        host = normalize_host(host)
        cached = self._cached(host)
        if cached is not None:
            return cached
        task = self._inflight.get(host)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._lookup_and_cache(host, port), name=f"egress-resolve {host}"
            )
            self._inflight[host] = task
        # shield: one impatient caller must not cancel the lookup the others wait on.
        return await asyncio.shield(task)

    # -- internals ---------------------------------------------------------------------------

    async def _lookup_and_cache(self, host: str, port: int) -> Resolution:
        self.lookups += 1
        try:
            async with asyncio.timeout(self._lookup_timeout):
                addresses = await self._lookup(host, port)
        except TimeoutError:
            resolution = _refused(host, f"cannot resolve {host}: timed out")
        except (OSError, UnicodeError, ValueError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            resolution = _refused(host, f"cannot resolve {host}: {detail}")
        else:
            resolution = self.judge(host, addresses)
        finally:
            self._inflight.pop(host, None)
        lookup_failed = resolution.reason is not None and not resolution.addresses
        ttl = self.negative_ttl if lookup_failed else self.ttl
        if ttl > 0:
            self._cache[host] = (self._clock() + ttl, resolution)
            self._cache.move_to_end(host)
            while len(self._cache) > self._max_names:
                self._cache.popitem(last=False)
        return resolution


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _resolver_for(cfg: DestinationsSection) -> SafeResolver:
    return SafeResolver(cfg.hosts, ttl=cfg.dns_cache_ttl, allow_private=cfg.allow_private)


class EgressPolicy:
    """Port policy plus resolve-then-check: the one question the proxy asks per destination."""

    def __init__(self, cfg: DestinationsSection, resolver: SafeResolver | None = None) -> None:
        if resolver is None:
            resolver = _resolver_for(cfg)
        elif resolver.allow_private != cfg.allow_private:
            raise ValueError("resolver.allow_private differs from destinations.allow_private")
        self.cfg = cfg
        self.resolver = resolver

    @classmethod
    def from_config(cls, cfg: DestinationsSection) -> EgressPolicy:
        """The policy with the resolver `destinations.hosts` / `dns_cache_ttl` describe."""
        return cls(cfg)

    def port_reason(self, port: int) -> str | None:
        if not self.cfg.port_allowed(port):
            return f"port {port} is not in destinations.allowed_ports"
        return None

    async def admit(self, host: str, port: int) -> Resolution:
        """Refusal reason, or the checked address to dial (`pinned`) for host:port."""
        reason = self.port_reason(port)
        if reason is not None:
            return _refused(normalize_host(host), reason)
        return await self.resolver.resolve(host, port)

    def dial_reason(self, address: str, port: int) -> str | None:
        """Why an address already resolved may not be dialled now, or None. Asked where the
        connection is made, against the running policy (a reload may have narrowed it since
        the address was pinned), as Smokescreen's dialer classifies every address it dials."""
        judged = self.resolver.resolve_cached(address)  # an IP literal: judged without a lookup
        if judged is None:  # not a literal after all: judged as one, never looked up here
            judged = self.resolver.judge(address, (address,))
        return self.port_reason(port) or judged.reason

    def reconfigure(self, cfg: DestinationsSection) -> None:
        """A reloaded `destinations` section; the resolver (and its cache) starts afresh."""
        self.cfg = cfg
        self.resolver = _resolver_for(cfg)

    def aiohttp_resolver(self) -> EgressAiohttpResolver:
        return EgressAiohttpResolver(self)


class EgressAiohttpResolver(AbstractResolver):
    """aiohttp resolver backed by SafeResolver: connections go only to the pinned address.

    aiohttp never asks a resolver about IP-literal URLs, so callers must still check every
    (host, port) they request with `EgressPolicy.admit` (the robots.txt fetcher does, per hop)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy  # its resolver may be replaced by a config reload

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolution = await self._policy.resolver.resolve(host, port)
        if resolution.reason is not None:
            raise OSError(resolution.reason)
        address = resolution.pinned
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        if family not in (socket.AF_UNSPEC, fam):
            # The pinned address has the wrong family: fall back to another checked one.
            wanted = [a for a in resolution.addresses if (":" in a) == (family == socket.AF_INET6)]
            if not wanted:
                raise OSError(f"{host} has no checked address of the requested family")
            address, fam = wanted[0], family
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=flags)
        ]

    async def close(self) -> None:
        return None
