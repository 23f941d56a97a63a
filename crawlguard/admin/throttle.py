"""Per-source back-off on wrong operator credentials (a bearer token or a login form post).

Guessing the operator token must be slow. Each source address (an IPv6 address counts by its
/64, which one client usually holds whole) has a count of consecutive failures. The first
`FREE_FAILURES` cost nothing, so a typo goes unnoticed; every failure after them locks the
source out for ``BASE_SECONDS * 2 ** (n - 1)`` seconds, n counting the failures past the free
ones, at most `CAP_SECONDS`. While locked, every credential attempt from that source is
answered 429 with ``Retry-After`` WITHOUT being checked (the right token too: otherwise the
answers would tell a guesser when it hit). A success resets the source; a source with no
failure for `FORGET_SECONDS` (and no lock running) starts again from zero. Other sources are
never affected: the right token keeps working from anywhere else.

Bounded: at most `MAX_SOURCES` sources are tracked; beyond that the least recently failing
one is forgotten, so a flood of addresses costs memory in proportion to the cap, not to the
flood. Each source that gets locked out is reported once per run of failures (the caller logs
it), and at most `REPORT_BURST` such reports per `REPORT_WINDOW` seconds are logged: a flood
from many addresses cannot fill the log.

Behind a reverse proxy every client has the proxy's address: they all share one count
(see docs/operators/dashboard.md).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from crawlguard.state import backoff_window

log = logging.getLogger("crawlguard")

FREE_FAILURES = 5
BASE_SECONDS = 1.0
CAP_SECONDS = 300.0
FORGET_SECONDS = 3600.0
MAX_SOURCES = 10_000
REPORT_BURST = 10
REPORT_WINDOW = 60.0


def source_key(remote: str | None) -> str:
    """The throttling key of a peer address: the address, an IPv6 one by its /64 (an
    IPv4-mapped one as the IPv4 address)."""
    if not remote:
        return "unknown"
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote[:100]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(slots=True)
class _Source:
    failures: int = 0
    until: float = 0.0  # locked out until (clock); 0: never
    last: float = 0.0  # time of the latest failure
    reported: bool = False  # this run of failures was reported


class AuthThrottle:
    """The failure counts of the admin server's sources (see the module docstring)."""

    def __init__(
        self,
        *,
        free: int = FREE_FAILURES,
        base: float = BASE_SECONDS,
        cap: float = CAP_SECONDS,
        forget: float = FORGET_SECONDS,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_sources = max_sources
        self._clock = clock
        self._sources: dict[str, _Source] = {}  # insertion order: least recently failing first
        self._window_start = -math.inf
        self._reports = 0
        self._unreported = 0

    def __len__(self) -> int:
        return len(self._sources)

    def retry_after(self, source: str) -> int:
        """Whole seconds (≥ 1) until `source` may try again; 0 when it may now."""
        rec = self._sources.get(source)
        if rec is None:
            return 0
        left = rec.until - self._clock()
        return max(1, math.ceil(left - 1e-9)) if left > 0 else 0

    def failure(self, source: str) -> float:
        """A wrong credential from `source`; returns the lock-out it starts (0: still free)."""
        now = self._clock()
        rec = self._sources.pop(source, None)
        if rec is None or self._idle(rec, now):
            rec = _Source()
        rec.failures += 1
        rec.last = now
        lock = backoff_window(rec.failures - self.free, self.base, self.cap)
        if lock > 0:
            rec.until = now + lock
        self._sources[source] = rec
        if len(self._sources) > self.max_sources:
            self._evict(now)
        if lock > 0 and not rec.reported:
            rec.reported = True
            self._report(source, rec.failures, lock, now)
        return lock

    def success(self, source: str) -> None:
        """The right credential from `source`: its count starts again."""
        self._sources.pop(source, None)

    def _idle(self, rec: _Source, now: float) -> bool:
        return rec.until <= now and now - rec.last >= self.forget

    def _evict(self, now: float) -> None:
        self._sources = {k: r for k, r in self._sources.items() if not self._idle(r, now)}
        while len(self._sources) > self.max_sources:
            del self._sources[next(iter(self._sources))]

    def _report(self, source: str, failures: int, lock: float, now: float) -> None:
        if now - self._window_start >= REPORT_WINDOW:
            self._window_start, self._reports = now, 0
        if self._reports >= REPORT_BURST:
            self._unreported += 1
            return
        self._reports += 1
        more = (
            f" ({self._unreported} more source(s) were throttled without a log line)"
            if self._unreported
            else ""
        )
        self._unreported = 0
        log.warning(
            "admin: %d wrong operator credentials in a row from %s; its credential attempts "
            "are answered 429 without being checked for %g s, doubling with each further "
            "failure up to %g s, until one succeeds%s",
            failures,
            source,
            lock,
            self.cap,
            more,
        )


__all__ = ["AuthThrottle", "source_key"]
