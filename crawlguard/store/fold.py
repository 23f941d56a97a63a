"""`Folder`: identical refusals beyond a rate become one record per interval that counts them.

A client refused in a loop would otherwise write one durable record (and one log line) per
request: hundreds a second, hundreds of GB a day. Refusals are keyed (tenant, kind, action,
host, rule). In each interval of `interval` seconds (aligned on the injected clock):

* the first `after` refusals of a key are recorded one by one, as before (durably before the
  response), as long as the tenant has had fewer than `tenant_after` individual records in the
  interval: a tenant cycling through thousands of hosts does not get `after` records for each;
* every further refusal is only counted, in one fold per key; when the interval ends (or the
  writer closes) each fold is written as ONE record with `count`, `first_ts`, `last_ts` and
  the first folded refusal as the sample (its url, user agent, robots.txt digest and body);
* a tenant has at most `tenant_after` folds per interval: refusals of any further key go to
  one overflow fold per (kind, action), whose rule is empty and whose reason says so.

So per tenant and interval the store gets at most ``2 * tenant_after`` records plus one per
(kind, action) overflow, and the folder holds at most as many entries: memory and disk are
bounded, and every refusal is in some record's count. Pure logic with an injected clock; the
writer (crawlguard.store.writer) drives it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from crawlguard.policy.records import ViolationRecord
from crawlguard.store import url_host

FoldKey = tuple[str, str, str, str | None, str | None, bool]
"""(tenant, kind, action, host, rule, overflow)."""

OVERFLOW_REASON = (
    "folded: refusals of more distinct hosts and rules than store.fold_tenant_after in one "
    "interval; url and user_agent are those of one of them"
)


@dataclass(slots=True)
class _Fold:
    sample: ViolationRecord
    body: bytes | None
    count: int
    first_ts: str
    last_ts: str
    overflow: bool

    def record(self) -> ViolationRecord:
        rec = replace(
            self.sample,
            ts=self.first_ts,
            count=self.count,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
        )
        if self.overflow:
            rec = replace(rec, rule=None, reason=OVERFLOW_REASON)
        return rec


class Folder:
    """See the module docstring. `one_by_one` says whether a refusal is recorded on its own;
    `take_due` hands over the folds of intervals that have ended, `drain` all of them."""

    def __init__(
        self,
        *,
        after: int,
        tenant_after: int,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if after < 1 or tenant_after < 1:
            raise ValueError("after and tenant_after must be >= 1")
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.after = after
        self.tenant_after = tenant_after
        self.interval = interval
        self.clock = clock
        self._window = self._window_at(clock())
        self._singles: dict[FoldKey, int] = {}  # individual records this interval, per key
        self._tenant_singles: Counter[str] = Counter()
        self._folds: dict[FoldKey, _Fold] = {}
        self._tenant_folds: Counter[str] = Counter()  # non-overflow folds per tenant
        self._due: list[tuple[ViolationRecord, bytes | None]] = []

    def _window_at(self, now: float) -> int:
        return int(now // self.interval)

    def _roll(self) -> None:
        window = self._window_at(self.clock())
        if window == self._window:
            return
        self._window = window
        self._due.extend((f.record(), f.body) for f in self._folds.values())
        self._singles.clear()
        self._tenant_singles.clear()
        self._folds.clear()
        self._tenant_folds.clear()

    def one_by_one(self, rec: ViolationRecord, body: bytes | None = None) -> bool:
        """True: record `rec` on its own (the caller writes it). False: it is counted in a
        fold, written when its interval ends."""
        self._roll()
        tenant = rec.tenant
        key: FoldKey = (tenant, rec.kind, rec.action, url_host(rec.url), rec.rule, False)
        singles = self._singles.get(key, 0)
        if singles < self.after and self._tenant_singles[tenant] < self.tenant_after:
            self._singles[key] = singles + 1
            self._tenant_singles[tenant] += 1
            return True
        fold = self._folds.get(key)
        if fold is None and self._tenant_folds[tenant] >= self.tenant_after:
            key = (tenant, rec.kind, rec.action, None, None, True)
            fold = self._folds.get(key)
        if fold is None:
            self._folds[key] = _Fold(rec, body, rec.count, rec.ts, rec.ts, key[5])
            if not key[5]:
                self._tenant_folds[tenant] += 1
            return False
        fold.count += rec.count
        fold.first_ts = min(fold.first_ts, rec.ts)
        fold.last_ts = max(fold.last_ts, rec.ts)
        same_robots = fold.sample.robots_sha256 == rec.robots_sha256
        if fold.body is None and body is not None and same_robots:  # the sample's evidence
            fold.body = body
        return False

    def seconds_left(self) -> float:
        """Until the current interval ends (when `take_due` has something new)."""
        return (self._window + 1) * self.interval - self.clock()

    def take_due(self) -> list[tuple[ViolationRecord, bytes | None]]:
        """The folded records of every interval that has ended, once."""
        self._roll()
        due, self._due = self._due, []
        return due

    def drain(self) -> list[tuple[ViolationRecord, bytes | None]]:
        """Every folded record, the current interval's too (at shutdown: nothing is lost)."""
        due = self.take_due()
        due.extend((f.record(), f.body) for f in self._folds.values())
        self._folds.clear()
        self._tenant_folds.clear()
        return due

    @property
    def pending(self) -> int:
        """Refusals counted in folds not yet handed over."""
        return sum(f.count for f in self._folds.values()) + sum(r.count for r, _ in self._due)

    @property
    def entries(self) -> int:
        """Keys held in memory (bounded: see the module docstring)."""
        return len(self._singles) + len(self._folds) + len(self._due)


__all__ = ["OVERFLOW_REASON", "FoldKey", "Folder"]
