"""SQL both backends build alike: filters, keyset pages, summary and report statements.

A `Dialect` says what differs where these statements are concerned: the driver's placeholder
(``?`` for sqlite3, ``%s`` for psycopg) and how a canonical timestamp string becomes a
parameter (SQLite stores the string itself, PostgreSQL a ``timestamptz``). What genuinely
differs between the backends (schema, upserts, locking, the bucket offset, the page cursor)
stays in each backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crawlguard.policy.records import FIELDS
from crawlguard.store import (
    Page,
    Report,
    StoredViolation,
    Summary,
    TenantReport,
    ViolationFilter,
    bucket_width_us,
    epoch_us,
    from_epoch_us,
    hour_bucket,
    normalize_ts,
    parse_since,
    rollup,
)

COLUMNS = ", ".join(FIELDS)


@dataclass(frozen=True)
class Dialect:
    ph: str  # the driver's parameter placeholder
    ts: Callable[[str], Any]  # a canonical timestamp string -> the parameter for a ts column
    ts_us: str  # a raw row's `ts` as integer microseconds since the epoch


def conjunction(where: Iterable[str], keyword: str = " WHERE ") -> str:
    """`keyword` and the conditions ANDed, or nothing when there are none."""
    where = list(where)
    return keyword + " AND ".join(where) if where else ""


def filter_where(d: Dialect, flt: ViolationFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions (ANDed) and parameters for `flt`; each one an indexed column."""
    where: list[str] = []
    params: list[Any] = []
    for column in ("tenant", "kind", "action", "host"):
        value = getattr(flt, column)
        if value is not None:
            where.append(f"{column} = {d.ph}")
            params.append(value)
    if flt.since is not None:
        where.append(f"ts >= {d.ph}")
        params.append(d.ts(normalize_ts(flt.since)))
    if flt.until is not None:
        where.append(f"ts < {d.ph}")
        params.append(d.ts(normalize_ts(flt.until)))
    return where, params


def query_sql(
    d: Dialect,
    *,
    tenant: str | None,
    kind: str | None,
    since: str | None,
    limit: int | None,
) -> tuple[str, list[Any]]:
    """`ViolationStore.query`'s statement: newest first, `since` inclusive."""
    where: list[str] = []
    params: list[Any] = []
    if tenant is not None:
        where.append(f"tenant = {d.ph}")
        params.append(tenant)
    if kind is not None:
        where.append(f"kind = {d.ph}")
        params.append(kind)
    if since is not None:
        where.append(f"ts >= {d.ph}")
        params.append(d.ts(parse_since(since)))
    sql = f"SELECT {COLUMNS} FROM violations{conjunction(where)} ORDER BY ts DESC, id DESC"
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        sql += f" LIMIT {d.ph}"
        params.append(limit)
    return sql, params


def export_sql(
    d: Dialect, since: str | None, after: tuple[str, list[Any]] | None, limit: int
) -> tuple[str, list[Any]]:
    """`ViolationStore.export_page`'s statement: `limit` records oldest first (``ts, id``)
    from `since` on, after the backend's keyset condition `after` (SQL, parameters)."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append(f"ts >= {d.ph}")
        params.append(d.ts(normalize_ts(since)))
    if after is not None:
        where.append(after[0])
        params += after[1]
    sql = (
        f"SELECT id, uid, {COLUMNS} FROM violations{conjunction(where)} "
        f"ORDER BY ts, id LIMIT {d.ph}"
    )
    return sql, [*params, limit]


def page_sql(
    d: Dialect, flt: ViolationFilter, limit: int, after: tuple[str, list[Any]] | None
) -> tuple[str, list[Any]]:
    """`ViolationStore.page`'s statement: one row more than `limit` (to tell whether another
    page follows), after the backend's keyset condition `after` (SQL, parameters)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    where, params = filter_where(d, flt)
    if after is not None:
        where.append(after[0])
        params += after[1]
    sql = (
        f"SELECT id, host, {COLUMNS} FROM violations{conjunction(where)} "
        f"ORDER BY ts DESC, id DESC LIMIT {d.ph}"
    )
    return sql, [*params, limit + 1]


def page_of(items: list[StoredViolation], limit: int) -> Page:
    """The page from up to `limit` + 1 rows of `page_sql`."""
    more = len(items) > limit
    items = items[:limit]
    return Page(items, (items[-1].record.ts, items[-1].id) if more else None)


@dataclass(frozen=True)
class SummaryQuery:
    """What `ViolationStore.summary` counts: the window, its buckets, the conditions, and the
    pieces (roll-up units and raw edges, crawlguard.store.rollup) that cover it exactly."""

    since: str
    until: str
    width: int  # microseconds a bucket
    buckets: int
    start: int  # `since` in microseconds since the epoch
    flt: ViolationFilter
    cond: tuple[str, ...]
    pieces: tuple[rollup.Piece, ...]  # for the series: no unit holds a bucket boundary
    window: tuple[rollup.Piece, ...]  # for the totals: the window alone

    def host_pieces(self, span: tuple[int, int] | None) -> list[rollup.Piece]:
        """Top hosts' pieces: the window, or every record minus the rest when that is
        cheaper; `span` = the first and last record's time (None: no records)."""
        if span is not None:
            other = rollup.complement(epoch_us(self.since), epoch_us(self.until), *span)
            if other is not None:
                return other
        return list(self.window)

    def series_sql(self, d: Dialect) -> tuple[str, list[Any]]:
        """Counts per tenant and bucket (every piece lies inside one bucket)."""
        u = rollup.union(
            d, self.pieces, self.flt, ("tenant", "t", "n"), hosts=self.flt.host is not None,
            cond=self.cond,
        )  # fmt: skip
        return (
            f"SELECT tenant, (t - {d.ph}) / {d.ph} AS b, sum(n) FROM ({u.sql}) AS u "
            "GROUP BY tenant, b",
            [self.start, self.width, *u.params],
        )

    def by_kind_sql(self, d: Dialect) -> tuple[str, list[Any]]:
        u = rollup.union(
            d, self.window, self.flt, ("kind", "n"), hosts=self.flt.host is not None,
            cond=self.cond,
        )  # fmt: skip
        return (
            f"SELECT kind, sum(n) AS total FROM ({u.sql}) AS u GROUP BY kind "
            "ORDER BY total DESC, kind",
            u.params,
        )

    def top_hosts_sql(
        self, d: Dialect, top: int, span: tuple[int, int] | None = None
    ) -> tuple[str, list[Any]]:
        """The top `top` hosts per tenant; `span`: see `host_pieces`."""
        u = rollup.union(
            d, self.host_pieces(span), self.flt, ("tenant", "host", "n"), hosts=True,
            cond=self.cond, raw_cond=("host IS NOT NULL",),
            totals=self.flt.kind is None and self.flt.action is None,
        )  # fmt: skip
        return (
            "SELECT tenant, host, total FROM (SELECT tenant, host, sum(n) AS total, "
            "row_number() OVER (PARTITION BY tenant ORDER BY sum(n) DESC, host) AS r "
            f"FROM ({u.sql}) AS u GROUP BY tenant, host HAVING sum(n) > 0) AS x "
            f"WHERE r <= {d.ph} ORDER BY total DESC, tenant, host",
            [*u.params, top],
        )

    def add_series(self, series: dict[str, list[int]], rows: Iterable[Any]) -> None:
        """Add the rows of `series_sql` (tenant, bucket, count) to `series`."""
        for tid, index, n in rows:
            if 0 <= index < self.buckets:
                series.setdefault(tid, [0] * self.buckets)[index] += int(n)

    def result(
        self,
        series: dict[str, list[int]],
        by_kind: list[tuple[str, int]],
        hosts: list[tuple[str, str, int]],
    ) -> Summary:
        return Summary(
            since=self.since,
            until=self.until,
            bucket_us=self.width,
            buckets=self.buckets,
            series=dict(sorted(series.items())),
            by_kind=by_kind,
            top_hosts=hosts,
            total=sum(n for _, n in by_kind),
        )


def summary_query(flt: ViolationFilter, buckets: int) -> SummaryQuery:
    """Over [flt.since, flt.until) (both required). Without an `action` filter, held records
    (action `delayed`) are left out: they are not violations. Bucket boundaries are cuts of
    the plan, so a roll-up unit is never split between two buckets."""
    if flt.since is None or flt.until is None:
        raise ValueError("summary needs both since and until")
    since, until = normalize_ts(flt.since), normalize_ts(flt.until)
    width = bucket_width_us(since, until, buckets)
    start = epoch_us(since)
    cond = ("action <> 'delayed'",) if flt.action is None else ()
    pieces = rollup.window_pieces(since, until, (start + i * width for i in range(1, buckets)))
    window = rollup.window_pieces(since, until)
    return SummaryQuery(
        since, until, width, buckets, start, flt, cond, tuple(pieces), tuple(window)
    )


SPAN_SQL = (  # the records' time span: two index seeks (min and max together would scan)
    "SELECT (SELECT min(ts) FROM violations), (SELECT max(ts) FROM violations)"
)


def latest_sql(d: Dialect, since: str | None) -> tuple[str, list[Any]]:
    """Tenant, timestamp of its newest violation (held records are not violations; a folded
    record's newest refusal is its `last_ts`), among records from `since` on."""
    bound = parse_since(since) if since is not None else None
    u = rollup.union(
        d, rollup.window_pieces(bound, None), ViolationFilter(), ("tenant", "last"),
        hosts=False, cond=("action <> 'delayed'",),
    )  # fmt: skip
    return f"SELECT tenant, max(last) FROM ({u.sql}) AS u GROUP BY tenant", u.params


@dataclass(frozen=True)
class ReportQuery:
    """`ViolationStore.report`'s three statements, from `since` (parsed) on."""

    since: str | None
    requests: tuple[str, list[Any]]  # tenant, decision, requests
    violations: tuple[str, list[Any]]  # tenant, kind, records (held excluded)
    held: tuple[str, list[Any]]  # tenant, held records

    def result(
        self,
        requests: Iterable[Any],
        violations: Iterable[Any],
        held_rows: Iterable[Any],
    ) -> Report:
        tenants: dict[str, TenantReport] = {}
        for tid, decision, n in requests:
            tenants.setdefault(tid, TenantReport()).requests[decision] = int(n)
        for tid, kind, n in violations:
            tenants.setdefault(tid, TenantReport()).violations[kind] = int(n)
        held = {tid: int(n) for tid, n in held_rows}
        for tid in held:
            tenants.setdefault(tid, TenantReport())
        tenants = {
            tid: TenantReport(t.requests, t.violations, held.get(tid, 0))
            for tid, t in tenants.items()
        }
        return Report(since=self.since, tenants=tenants)


def day_of(hour: str) -> str:
    """The UTC day (canonical form) a canonical hour falls in."""
    return hour[:10] + "T00:00:00.000000Z"


def next_day(hour: str) -> str:
    day = day_of(hour)
    return day if day == hour else from_epoch_us(epoch_us(day) + 86_400_000_000)


def requests_sql(d: Dialect, bound: str | None) -> tuple[str, list[Any]]:
    """Requests per tenant and decision from the hour of `bound` on: whole days from
    ``request_counts_daily``, the hours before the first of them from ``request_counts``."""
    if bound is None:
        source, params = "SELECT tenant, decision, n FROM request_counts_daily", []
    else:
        hour = hour_bucket(bound)
        day = next_day(hour)
        source = (
            f"SELECT tenant, decision, n FROM request_counts WHERE hour >= {d.ph} "
            f"AND hour < {d.ph} UNION ALL "
            f"SELECT tenant, decision, n FROM request_counts_daily WHERE day >= {d.ph}"
        )
        params = [d.ts(hour), d.ts(day), d.ts(day)]
    return (
        f"SELECT tenant, decision, sum(n) FROM ({source}) AS u "
        "GROUP BY tenant, decision ORDER BY tenant, sum(n) DESC, decision",
        params,
    )


def report_query(d: Dialect, since: str | None) -> ReportQuery:
    bound = parse_since(since) if since is not None else None
    pieces = rollup.window_pieces(bound, None)
    none = ViolationFilter()
    v = rollup.union(
        d, pieces, none, ("tenant", "kind", "n"), hosts=False, cond=("action <> 'delayed'",)
    )
    h = rollup.union(d, pieces, none, ("tenant", "n"), hosts=False, cond=("action = 'delayed'",))
    return ReportQuery(
        since=bound,
        requests=requests_sql(d, bound),
        violations=(
            f"SELECT tenant, kind, sum(n) FROM ({v.sql}) AS u "
            "GROUP BY tenant, kind ORDER BY tenant, sum(n) DESC, kind",
            v.params,
        ),
        held=(f"SELECT tenant, sum(n) FROM ({h.sql}) AS u GROUP BY tenant", h.params),
    )


def prune_violations_sql(d: Dialect) -> str:
    """Delete up to N violations older than a bound; parameters: the bound, N. Returns what
    the roll-ups must lose: ts, tenant, kind, action, host, count, coalesce(last_ts, ts)."""
    return (
        "DELETE FROM violations WHERE id IN "
        f"(SELECT id FROM violations WHERE ts < {d.ph} ORDER BY ts LIMIT {d.ph}) "
        "RETURNING ts, tenant, kind, action, host, count, coalesce(last_ts, ts)"
    )


def prune_request_counts_sql(d: Dialect) -> str:
    """Delete up to N request-count hours before a bound; parameters: the hour, N. Returns
    what the daily counts must lose: hour, tenant, decision, n."""
    return (
        "DELETE FROM request_counts WHERE (hour, tenant, decision) IN "
        f"(SELECT hour, tenant, decision FROM request_counts WHERE hour < {d.ph} LIMIT {d.ph}) "
        "RETURNING hour, tenant, decision, n"
    )


def daily_request_rows(
    rows: Iterable[tuple[str, str, str, int]],
) -> list[tuple[str, str, str, int]]:
    """(hour, tenant, decision, n) rows -> (day, tenant, decision, n), summed and sorted."""
    days: dict[tuple[str, str, str], int] = {}
    for hour, tenant, decision, n in rows:
        key = (day_of(hour), tenant, decision)
        days[key] = days.get(key, 0) + int(n)
    return [(*key, n) for key, n in sorted(days.items())]
