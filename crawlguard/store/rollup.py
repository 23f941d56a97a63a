"""Roll-ups: violation counts per tenant, kind, action (and host) and hour or day, kept at write
time, so operator queries over days read thousands of rows instead of millions of records.

Two tables, each holding three resolutions (``span`` 86400, 21600 and 3600 s, ``start`` the
unit's first second since the epoch, UTC; six hours because the dashboard's 7-day view has
6-hour buckets, which hourly units made cost 168 units a series):

* ``rollup_kinds`` (span, start, tenant, kind, action) -> ``n`` (the sum of the records'
  `count`) and ``last`` (their newest ``coalesce(last_ts, ts)``): series, by kind, report,
  latest violation;
* ``rollup_hosts`` (span, start, tenant, host, kind, action) -> ``n``: top hosts and the host
  filter (records without a host are only in ``rollup_kinds``). Rows with kind and action
  `ALL` ("*") sum every kind but held records (action ``delayed``) per host: the unfiltered
  top hosts (the dashboard's default) read those, several times fewer rows than per kind.

A record belongs to the units its `ts` falls in, as it does to a raw ``ts`` range, so a query
over whole units equals the raw scan exactly. `plan` cuts a window into pieces: whole days,
then whole hours, and the raw table for what is left at the edges (a `since` of now-24h is
rarely on an hour). A summary's bucket boundaries are cuts too: a unit a boundary falls inside
is split into finer units, down to the raw table, so every answer stays exact and only its
cost depends on how the grid lines up with UTC hours and days (docs/operators/store.md).

Writers add their batch's deltas in the records' transaction (``n = n + excluded.n``), so two
processes writing one SQLite file, or many writing one PostgreSQL database, stay correct;
retention subtracts what it deletes in the same transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crawlguard.store import ViolationFilter, epoch_us, from_epoch_us

SPANS = (86_400, 21_600, 3_600)  # seconds a unit, coarsest first; each divides the one before
TOTAL = -1  # a Piece of every record: rollup_hosts' all-time rows (span 0 in the table)
ALL = "*"  # rollup_hosts' kind and action of the per-host sums of every violation
US = 1_000_000
MAX_PIECES = 400  # beyond it a query reads the raw window (SQLite compounds at most 500)

KindKey = tuple[int, int, str, str, str]  # span, start, tenant, kind, action
HostKey = tuple[int, int, str, str, str, str]  # span, start, tenant, host, kind, action


@dataclass(frozen=True, slots=True)
class Piece:
    """[lo, hi) in microseconds since the epoch (None: unbounded), read from the roll-up of
    `span` seconds (its units lie wholly inside) or, with span 0, from the raw table; span
    TOTAL: every record (the all-time host roll-up). `sign` -1: subtracted."""

    span: int
    lo: int | None
    hi: int | None
    sign: int = 1


def _cover(a: int | None, b: int | None, level: int, out: list[Piece]) -> None:
    if a is not None and b is not None and a >= b:
        return
    if level == len(SPANS):
        out.append(Piece(0, a, b))
        return
    s = SPANS[level] * US
    ua = None if a is None else -(-a // s) * s
    ub = None if b is None else b // s * s
    if ua is not None and ub is not None and ua >= ub:
        _cover(a, b, level + 1, out)
        return
    if a is not None and ua is not None and a < ua:
        _cover(a, ua, level + 1, out)
    out.append(Piece(SPANS[level], ua, ub))
    if b is not None and ub is not None and ub < b:
        _cover(ub, b, level + 1, out)


def plan(lo: int | None, hi: int | None, cuts: Iterable[int] = ()) -> list[Piece]:
    """Pieces covering [lo, hi) exactly, none of whose roll-up units contains a cut."""
    inner = sorted({c for c in cuts if (lo is None or c > lo) and (hi is None or c < hi)})
    bounds: list[int | None] = [lo, *inner, hi]
    pieces: list[Piece] = []
    for a, b in itertools.pairwise(bounds):
        _cover(a, b, 0, pieces)
    merged: list[Piece] = []
    for p in pieces:
        last = merged[-1] if merged else None
        if last is not None and last.span == p.span and last.hi is not None and last.hi == p.lo:
            merged[-1] = Piece(p.span, last.lo, p.hi)
        else:
            merged.append(p)
    if len(merged) > MAX_PIECES:
        return [Piece(0, lo, hi)]
    return merged


_COST = {0: 60.0, 3_600: 1.0, 21_600: 2.0, 86_400: 4.0}  # rows read per unit, relatively


def cost(pieces: Sequence[Piece], first: int, last: int) -> float:
    """A rough read cost of `pieces` over data from `first` to `last` (microseconds)."""
    total = 0.0
    for p in pieces:
        if p.span == TOTAL:
            total += 2 * _COST[86_400]  # about two day units' rows (every host ever seen)
            continue
        lo = first if p.lo is None else max(p.lo, first)
        hi = last if p.hi is None else min(p.hi, last)
        if hi > lo:
            hours_a_unit = p.span / 3_600 if p.span else 1
            total += (hi - lo) / 3_600_000_000 * _COST[p.span] / hours_a_unit
    return total


def complement(lo: int, hi: int, first: int, last: int) -> list[Piece] | None:
    """[lo, hi) as every record minus the records outside it, when that reads less than the
    window itself (a window that covers most of the data): for the host roll-up's top hosts,
    whose rows per unit are many. None when the window itself is cheaper."""
    inside = plan(lo, hi)
    outside = [Piece(p.span, p.lo, p.hi, -1) for p in (*plan(None, lo), *plan(hi, None))]
    if cost(outside, first, last) + cost([Piece(TOTAL, None, None)], first, last) >= cost(
        inside, first, last
    ):
        return None
    return [Piece(TOTAL, None, None), *outside]


# -- reading ------------------------------------------------------------------------------------


class Source(Protocol):
    """How a backend spells what differs (crawlguard.store.sql.Dialect): placeholder,
    timestamp parameter, and a raw row's `ts` as integer microseconds since the epoch."""

    @property
    def ph(self) -> str: ...

    @property
    def ts(self) -> Callable[[str], Any]: ...

    @property
    def ts_us(self) -> str: ...


_RAW = {
    "tenant": "tenant",
    "kind": "kind",
    "action": "action",
    "host": "host",
    "n": "count",
    "last": "coalesce(last_ts, ts)",
}
_TIER = {
    "tenant": "tenant",
    "kind": "kind",
    "action": "action",
    "host": "host",
    "t": f"start * {US}",
    "n": "n",
    "last": "last",
}


@dataclass
class Union:
    """One statement's rows from every piece (``UNION ALL``), with the same columns."""

    sql: str
    params: list[Any] = field(default_factory=list)


def union(
    src: Source,
    pieces: Sequence[Piece],
    flt: ViolationFilter,
    cols: Sequence[str],
    *,
    hosts: bool,
    cond: Sequence[str] = (),
    raw_cond: Sequence[str] = (),
    totals: bool = False,
) -> Union:
    """Rows (`cols`) of the records in `pieces` matching `flt`'s tenant, kind, action and host
    (its since/until are the pieces' business) and `cond`; `raw_cond` only for raw pieces.
    `hosts`: read ``rollup_hosts`` (needed for host), else ``rollup_kinds``; `totals`: its
    per-host sums of every violation (kind and action `ALL`: `flt` may then name neither,
    and held records must be excluded by `cond`), else its per-kind rows."""
    ph = src.ph
    where: list[str] = list(cond)
    tier_where = [f"kind {'=' if totals else '<>'} '{ALL}'"] if hosts else []
    params: list[Any] = []
    for column in ("tenant", "kind", "action", "host"):
        value = getattr(flt, column)
        if value is not None:
            where.append(f"{column} = {ph}")
            params.append(value)
    members: list[str] = []
    all_params: list[Any] = []
    table = "rollup_hosts" if hosts else "rollup_kinds"
    for p in pieces:
        if p.span == TOTAL:
            exprs = _TIER
            conds = ["span = 0", *tier_where, *where]
            bounds = []
            source = table
        elif p.span == 0:
            exprs = {**_RAW, "t": src.ts_us}
            conds = [*where, *raw_cond]
            bounds: list[Any] = []
            if p.lo is not None:
                conds.insert(0, f"ts >= {ph}")
                bounds.append(src.ts(from_epoch_us(p.lo)))
            if p.hi is not None:
                conds.insert(len(bounds), f"ts < {ph}")
                bounds.append(src.ts(from_epoch_us(p.hi)))
            source = "violations"
        else:
            exprs = _TIER
            conds = [f"span = {ph}", *tier_where, *where]
            bounds = [p.span]
            if p.lo is not None:
                conds.insert(len(bounds), f"start >= {ph}")
                bounds.append(p.lo // US)
            if p.hi is not None:
                conds.insert(len(bounds), f"start < {ph}")
                bounds.append(p.hi // US)
            source = table
        select = ", ".join(
            f"-{exprs[c]} AS {c}" if c == "n" and p.sign < 0 else f"{exprs[c]} AS {c}" for c in cols
        )
        members.append(f"SELECT {select} FROM {source}" + (" WHERE " + " AND ".join(conds)))
        all_params += [*bounds, *params]
    if not members:  # an empty window: no rows, same columns
        select = ", ".join(f"{_RAW[c] if c != 't' else src.ts_us} AS {c}" for c in cols)
        return Union(f"SELECT {select} FROM violations WHERE 1 = 0")
    return Union(" UNION ALL ".join(members), all_params)


def window_pieces(since: str | None, until: str | None, cuts: Iterable[int] = ()) -> list[Piece]:
    return plan(
        epoch_us(since) if since is not None else None,
        epoch_us(until) if until is not None else None,
        cuts,
    )


# -- writing ------------------------------------------------------------------------------------


@dataclass
class Deltas:
    """A batch's contribution to the roll-ups, grouped (one upsert per key, not per record)."""

    kinds: dict[KindKey, list[Any]] = field(default_factory=dict)  # key -> [n, last]
    hosts: dict[HostKey, int] = field(default_factory=dict)

    def add(
        self,
        ts: str,
        tenant: str,
        kind: str,
        action: str,
        host: str | None,
        count: int,
        last: str,
    ) -> None:
        """One record: `ts` and `last` (``coalesce(last_ts, ts)``) in the canonical form."""
        second = hour_start(ts)
        for span in SPANS:
            start = second - second % span
            k = (span, start, tenant, kind, action)
            entry = self.kinds.get(k)
            if entry is None:
                self.kinds[k] = [count, last]
            else:
                entry[0] += count
                if last > entry[1]:
                    entry[1] = last
            if host is not None:
                h = (span, start, tenant, host, kind, action)
                self.hosts[h] = self.hosts.get(h, 0) + count
                if action != "delayed":
                    h = (span, start, tenant, host, ALL, ALL)
                    self.hosts[h] = self.hosts.get(h, 0) + count
        if host is not None:  # the all-time row (span 0) of top hosts over long windows
            h = (0, 0, tenant, host, kind, action)
            self.hosts[h] = self.hosts.get(h, 0) + count
            if action != "delayed":
                h = (0, 0, tenant, host, ALL, ALL)
                self.hosts[h] = self.hosts.get(h, 0) + count

    def kind_rows(self) -> list[tuple[Any, ...]]:
        """Sorted: every writer takes row locks in one order (no deadlock on PostgreSQL)."""
        return [(*k, v[0], v[1]) for k, v in sorted(self.kinds.items())]

    def host_rows(self) -> list[tuple[Any, ...]]:
        return [(*k, n) for k, n in sorted(self.hosts.items())]

    def __bool__(self) -> bool:
        return bool(self.kinds)


_HOUR_CACHE: dict[str, int] = {}


def hour_start(ts: str) -> int:
    """Epoch second of the hour a canonical timestamp falls in (cached: records of a batch
    share a few hours)."""
    head = ts[:13]
    second = _HOUR_CACHE.get(head)
    if second is None:
        if len(_HOUR_CACHE) > 4096:
            _HOUR_CACHE.clear()
        second = epoch_us(head + ":00:00.000000Z") // US
        _HOUR_CACHE[head] = second
    return second


KIND_KEY = "span, start, tenant, kind, action"
HOST_KEY = "span, start, tenant, host, kind, action"


def subtract(src: Source, deltas: Deltas) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Statements (each with its rows, for executemany) that take the deleted records in
    `deltas` out of the roll-ups: counts go down, emptied rows go, and a unit whose newest
    refusal may have been deleted gets its `last` recomputed from the records left in it."""
    ph = src.ph
    kind_key = " AND ".join(f"{c} = {ph}" for c in KIND_KEY.split(", "))
    host_key = " AND ".join(f"{c} = {ph}" for c in HOST_KEY.split(", "))
    kinds = deltas.kind_rows()
    hosts = deltas.host_rows()
    recompute = []
    for span, start, tenant, kind, action, _, last in kinds:
        lo, hi = (src.ts(from_epoch_us(t * US)) for t in (start, start + span))
        key = (span, start, tenant, kind, action)
        recompute.append((tenant, kind, action, lo, hi, *key, src.ts(last)))
    return [
        (
            f"UPDATE rollup_kinds SET n = n - {ph} WHERE {kind_key}",
            [(n, *key) for *key, n, _ in kinds],
        ),
        (f"DELETE FROM rollup_kinds WHERE {kind_key} AND n <= 0", [tuple(k[:5]) for k in kinds]),
        (
            "UPDATE rollup_kinds SET last = (SELECT max(coalesce(last_ts, ts)) FROM violations "
            f"WHERE tenant = {ph} AND kind = {ph} AND action = {ph} AND ts >= {ph} "
            f"AND ts < {ph}) WHERE {kind_key} AND last <= {ph}",
            recompute,
        ),
        (
            f"UPDATE rollup_hosts SET n = n - {ph} WHERE {host_key}",
            [(n, *key) for *key, n in hosts],
        ),
        (f"DELETE FROM rollup_hosts WHERE {host_key} AND n <= 0", [tuple(h[:6]) for h in hosts]),
    ]


__all__ = [
    "ALL",
    "HOST_KEY",
    "KIND_KEY",
    "SPANS",
    "Deltas",
    "Piece",
    "Source",
    "Union",
    "hour_start",
    "plan",
    "subtract",
    "union",
    "window_pieces",
]
