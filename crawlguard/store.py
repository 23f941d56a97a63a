"""The violation store (SPEC: "Violations"): durable records, robots.txt bodies, request counts.

The proxy writes a record *before* it answers the request, so `record` must be durable when
it returns. Allowed requests never touch the store one by one: the proxy counts them in memory
and flushes hourly buckets with `add_request_counts`.

Timestamps are stored in one canonical form, UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the form of
`crawlguard.records.utc_now_iso`), so string order is time order and `since` filters are plain
index range scans.

Writes from the proxy go through one `StoreWriter`: a bounded queue drained by a single writer
that commits each batch of queued records in one transaction (group commit); every caller
still waits for its own record's commit. When the queue is full the writer refuses new records
with `StoreBacklogged` rather than letting memory and latency grow without bound. The writer
also runs retention (`store.retention_days`): an hourly prune of old records in small batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crawlguard.identity import IdentityError, canonical_host
from crawlguard.records import FIELDS, ViolationRecord

if TYPE_CHECKING:
    from crawlguard.admin.metrics import Metrics

log = logging.getLogger("crawlguard")

SCHEMA_VERSION = 3
# 2: index on violations.robots_sha256 (orphaned robots bodies pruning)
# 3: violations.host (canonical host of the url, backfilled) for the admin API's host filter
BUSY_TIMEOUT_SECONDS = 10.0  # `run --workers N` processes share one SQLite file

STORE_QUEUE_MAX = 10_000  # records waiting for their commit; beyond it, StoreBacklogged
STORE_BATCH_MAX = 500  # records committed in one transaction at most
RETENTION_INTERVAL_SECONDS = 3600.0
RETENTION_FIRST_DELAY_SECONDS = 60.0
PRUNE_BATCH_ROWS = 1000  # rows deleted per transaction, so writers are never locked out long


class StoreError(Exception):
    """The store cannot be opened or used; the message is phrased for the operator."""


class StoreBacklogged(StoreError):
    """The violation write queue is full: the record was NOT accepted (nor logged). The caller
    must not answer as if it had been recorded; the proxy refuses the request instead."""


@dataclass(frozen=True, slots=True)
class PruneResult:
    violations: int = 0
    request_counts: int = 0
    robots_bodies: int = 0

    def __add__(self, other: PruneResult) -> PruneResult:
        return PruneResult(
            self.violations + other.violations,
            self.request_counts + other.request_counts,
            self.robots_bodies + other.robots_bodies,
        )

    def __bool__(self) -> bool:
        return bool(self.violations or self.request_counts or self.robots_bodies)


@dataclass(frozen=True, slots=True)
class TenantReport:
    """One tenant's summary. `requests` counts every request by decision, `held` included (a
    request delay pacing held until its slot, then forwarded). `violations` counts violation
    records by kind *without* held ones (action `delayed`): the tenant chose delay pacing and
    the proxy paced it, so that is not a violation; `held` counts those records apart."""

    requests: dict[str, int] = field(default_factory=dict)  # decision -> requests
    violations: dict[str, int] = field(default_factory=dict)  # kind -> records, held excluded
    held: int = 0  # records with action `delayed`

    @property
    def requests_total(self) -> int:
        return sum(self.requests.values())

    @property
    def violations_total(self) -> int:
        return sum(self.violations.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "requests": dict(self.requests),
            "violations_total": self.violations_total,
            "violations": dict(self.violations),
            "held": self.held,
        }


@dataclass(frozen=True, slots=True)
class Report:
    """Per-tenant summary. Request counts are hourly buckets, so `since` is rounded down to the
    hour for them; the last few seconds of traffic may not be flushed yet."""

    since: str | None
    tenants: dict[str, TenantReport]

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "tenants": {tid: t.to_dict() for tid, t in sorted(self.tenants.items())},
        }


PageKey = tuple[str, int]
"""(ts, id) of the last record of a page: the next page starts strictly after it in
``ts DESC, id DESC`` order (keyset pagination, stable while records are added)."""


@dataclass(frozen=True, slots=True)
class ViolationFilter:
    """Record filters shared by `page` and `summary`. `since` is inclusive, `until` exclusive;
    both are timestamps in any form `normalize_ts` takes. `host` is a canonical host."""

    tenant: str | None = None
    kind: str | None = None
    action: str | None = None
    host: str | None = None
    since: str | None = None
    until: str | None = None


@dataclass(frozen=True, slots=True)
class StoredViolation:
    """A record as stored: with its row id (the pagination tie-break) and canonical host."""

    id: int
    host: str | None
    record: ViolationRecord

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "id": self.id, "host": self.host}


@dataclass(frozen=True, slots=True)
class Page:
    items: list[StoredViolation]
    next: PageKey | None  # None: this was the last page


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts over [since, until) in `buckets` equal buckets of `bucket_us` microseconds (the
    last one may reach past `until`; nothing at or after `until` is counted)."""

    since: str
    until: str
    bucket_us: int
    buckets: int
    series: dict[str, list[int]]  # tenant -> count per bucket
    by_kind: list[tuple[str, int]]  # count desc, kind
    top_hosts: list[tuple[str, str, int]]  # (tenant, host, count): the top N per tenant
    total: int


class ViolationStore(Protocol):
    def record(self, rec: ViolationRecord, robots_body: bytes | None = None) -> None: ...

    def record_many(self, items: Sequence[tuple[ViolationRecord, bytes | None]]) -> None: ...

    def prune_step(self, before: str, limit: int = PRUNE_BATCH_ROWS) -> PruneResult: ...

    def prune(self, before: str, *, batch: int = PRUNE_BATCH_ROWS) -> PruneResult: ...

    def add_request_counts(self, counts: Mapping[tuple[str, str], int], ts: str) -> None: ...

    def query(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> list[ViolationRecord]: ...

    def page(self, flt: ViolationFilter, *, limit: int, after: PageKey | None = None) -> Page: ...

    def summary(self, flt: ViolationFilter, *, buckets: int, top_hosts: int = 10) -> Summary: ...

    def latest_violations(self, *, since: str | None = None) -> dict[str, str]: ...

    def robots_body(self, sha256: str) -> bytes | None: ...

    def report(self, *, since: str | None = None) -> Report: ...

    def close(self) -> None: ...


# -- time helpers ------------------------------------------------------------------------------

_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _canonical(dt: datetime) -> str:
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat(timespec="microseconds") + "Z"


def normalize_ts(value: str) -> str:
    """ISO 8601 (with Z, an offset, or naive meaning UTC) -> the canonical stored form."""
    try:
        return _canonical(datetime.fromisoformat(value.strip()))
    except (ValueError, OverflowError):
        raise ValueError(
            f"invalid timestamp {value!r}: expected ISO 8601, e.g. 2024-05-01T12:00:00Z"
        ) from None


def parse_since(value: str, *, now: datetime | None = None) -> str:
    """A lower time bound from ISO 8601 or a duration back from now (``7d``, ``12h``, ``1h30m``).

    Shared by the CLI and the admin API so both accept the same spellings.
    """
    text = value.strip().lower()
    if _DURATION.match(text):
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        try:
            return _canonical((now or datetime.now(UTC)) - timedelta(seconds=seconds))
        except OverflowError:
            raise ValueError(f"invalid since {value!r}: the duration is too long") from None
    try:
        return normalize_ts(value)
    except ValueError:
        raise ValueError(
            f"invalid since {value!r}: expected ISO 8601 (e.g. 2024-05-01T12:00:00Z) or a "
            "duration back from now such as 7d, 12h, 30m, 1h30m (units s, m, h, d, w)"
        ) from None


def _hour_bucket(ts: str) -> str:
    return normalize_ts(ts)[:13] + ":00:00.000000Z"


def epoch_us(ts: str) -> int:
    """Microseconds since the epoch of a timestamp (exact: no float on the way)."""
    dt = datetime.fromisoformat(normalize_ts(ts)[:-1]).replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def from_epoch_us(us: int) -> str:
    return _canonical(_EPOCH + timedelta(microseconds=us))


def bucket_width_us(since: str, until: str, buckets: int) -> int:
    """Width of each of `buckets` equal buckets covering [since, until): whole microseconds,
    rounded up, so the buckets always cover the range (the last may reach past `until`)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, not {buckets}")
    span = epoch_us(until) - epoch_us(since)
    if span <= 0:
        raise ValueError(f"until ({until}) must be after since ({since})")
    return max(1, -(-span // buckets))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AUTHORITY_END = re.compile(r"[/?#\\]")


def url_host(url: str) -> str | None:
    """The canonical host a record's `url` names (absolute URL, or authority-form for CONNECT
    and TUNNEL records), None when it names none: what the host filter and top hosts use."""
    text = url.strip()
    _, sep, rest = text.partition("://")
    authority = _AUTHORITY_END.split(rest if sep else text, maxsplit=1)[0]
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        host = authority[: authority.find("]") + 1]
    elif authority.count(":") == 1:
        host = authority.partition(":")[0]
    else:
        host = authority
    try:
        return canonical_host(host)
    except (IdentityError, ValueError):
        return None


# -- SQLite ------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS violations (
    id            INTEGER PRIMARY KEY,
    ts            TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    action        TEXT NOT NULL,
    method        TEXT NOT NULL,
    url           TEXT NOT NULL,
    user_agent    TEXT,
    rule          TEXT,
    crawl_delay   REAL,
    retry_after   INTEGER,
    robots_sha256 TEXT,
    delay_seconds REAL,
    reason        TEXT,
    host          TEXT
);
CREATE INDEX IF NOT EXISTS violations_tenant_ts ON violations (tenant, ts);
CREATE INDEX IF NOT EXISTS violations_kind_ts ON violations (kind, ts);
CREATE INDEX IF NOT EXISTS violations_ts ON violations (ts);
CREATE INDEX IF NOT EXISTS violations_robots_sha256 ON violations (robots_sha256)
    WHERE robots_sha256 IS NOT NULL;
CREATE TABLE IF NOT EXISTS robots_bodies (
    sha256     TEXT PRIMARY KEY,
    body       BLOB NOT NULL,
    first_seen TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS request_counts (
    hour     TEXT NOT NULL,
    tenant   TEXT NOT NULL,
    decision TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (hour, tenant, decision)
) WITHOUT ROWID;
"""
# After the host column exists (an older table gets it from `_migrate`).
_HOST_INDEX = "CREATE INDEX IF NOT EXISTS violations_host_ts ON violations (host, ts)"
MIGRATE_BATCH_ROWS = 10_000

_COLUMNS = ", ".join(FIELDS)
_INSERT = f"INSERT INTO violations ({_COLUMNS}, host) VALUES ({', '.join('?' for _ in FIELDS)}, ?)"


def _migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the schema to SCHEMA_VERSION in one transaction (idempotent, so two
    processes opening an old file at once are fine): tables and indexes, then version 3's
    `host` column, backfilled from each record's url."""
    try:
        # one script: executescript would commit a transaction begun before it
        conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(violations)")}
        if "host" not in columns:
            conn.execute("ALTER TABLE violations ADD COLUMN host TEXT")
        conn.execute(_HOST_INDEX)
        last = 0
        while rows := conn.execute(
            "SELECT id, url FROM violations WHERE id > ? AND host IS NULL ORDER BY id LIMIT ?",
            (last, MIGRATE_BATCH_ROWS),
        ).fetchall():
            last = rows[-1][0]
            conn.executemany(
                "UPDATE violations SET host = ? WHERE id = ?",
                [(url_host(url), rid) for rid, url in rows],
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _where(flt: ViolationFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions (ANDed) and parameters for `flt`; each one an indexed column."""
    where: list[str] = []
    params: list[Any] = []
    for column in ("tenant", "kind", "action", "host"):
        value = getattr(flt, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if flt.since is not None:
        where.append("ts >= ?")
        params.append(normalize_ts(flt.since))
    if flt.until is not None:
        where.append("ts < ?")
        params.append(normalize_ts(flt.until))
    return where, params


class SQLiteStore:
    """One connection shared by threads under a lock: writes are serial anyway (one writer per
    SQLite file), and the proxy writes from a single worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # explicit BEGIN IMMEDIATE below
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store {path!r}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # the commit is on disk before we answer
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the SQLite store {path!r} has schema version {version}; this crawlguard "
                    f"knows up to {SCHEMA_VERSION} (downgrade?)"
                )
            if version < SCHEMA_VERSION:
                _migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot use the SQLite store {path!r}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    @contextmanager
    def _connection(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Lock, map driver errors to StoreError, and wrap writes in one transaction."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the violation store is closed")
            try:
                if not write:
                    yield conn
                    return
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path!r}: {exc}") from exc

    def record(self, rec: ViolationRecord, robots_body: bytes | None = None) -> None:
        self.record_many([(rec, robots_body)])

    def record_many(self, items: Sequence[tuple[ViolationRecord, bytes | None]]) -> None:
        """Write all `items` in one transaction (group commit): all are durable on return, or
        none is written and the error is raised. Records are bounded (`ViolationRecord.bounded`)."""
        rows: list[list[Any]] = []
        bodies: dict[str, tuple[bytes, str]] = {}
        for rec, robots_body in items:
            values = rec.bounded().to_dict()
            values["ts"] = normalize_ts(rec.ts)
            sha = rec.robots_sha256.lower() if rec.robots_sha256 else None
            values["robots_sha256"] = sha  # lower-case, as robots_bodies is keyed
            rows.append([*(values[f] for f in FIELDS), url_host(values["url"])])
            if robots_body is not None and sha and sha not in bodies:
                bodies[sha] = (robots_body, values["ts"])
        if not rows:
            return
        with self._connection(write=True) as conn:
            conn.executemany(_INSERT, rows)
            for sha, (body, ts) in bodies.items():
                # Looked up in the transaction rather than cached: retention may have pruned it.
                if conn.execute("SELECT 1 FROM robots_bodies WHERE sha256 = ?", (sha,)).fetchone():
                    continue
                if hashlib.sha256(body).hexdigest() != sha:
                    # keep the record; a body under the wrong address would mislead the audit
                    log.warning("robots.txt body does not hash to %s; body not stored", sha)
                    continue
                conn.execute(
                    "INSERT INTO robots_bodies (sha256, body, first_seen) VALUES (?, ?, ?)",
                    (sha, body, ts),
                )

    def prune_step(self, before: str, limit: int = PRUNE_BATCH_ROWS) -> PruneResult:
        """One short transaction of retention: up to `limit` violations older than `before`;
        once none is left, request-count hours wholly before it; then robots bodies no record
        references. An empty result means the prune is complete."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        bound = normalize_ts(before)
        with self._connection(write=True) as conn:
            n = conn.execute(
                "DELETE FROM violations WHERE id IN "
                "(SELECT id FROM violations WHERE ts < ? ORDER BY ts LIMIT ?)",
                (bound, limit),
            ).rowcount
            if n:
                return PruneResult(violations=n)
            n = conn.execute(  # WITHOUT ROWID: the primary key names the row
                "DELETE FROM request_counts WHERE (hour, tenant, decision) IN "
                "(SELECT hour, tenant, decision FROM request_counts WHERE hour < ? LIMIT ?)",
                (_hour_bucket(bound), limit),
            ).rowcount
            if n:
                return PruneResult(request_counts=n)
            n = conn.execute(
                "DELETE FROM robots_bodies WHERE sha256 IN "
                "(SELECT b.sha256 FROM robots_bodies AS b WHERE NOT EXISTS "
                "(SELECT 1 FROM violations AS v WHERE v.robots_sha256 = b.sha256) LIMIT ?)",
                (limit,),
            ).rowcount
            return PruneResult(robots_bodies=n)

    def prune(self, before: str, *, batch: int = PRUNE_BATCH_ROWS) -> PruneResult:
        """Retention in full: `prune_step` until nothing is left (each step its own commit)."""
        total = PruneResult()
        while step := self.prune_step(before, batch):
            total += step
        return total

    def add_request_counts(self, counts: Mapping[tuple[str, str], int], ts: str) -> None:
        hour = _hour_bucket(ts)
        rows = []
        for (tenant, decision), n in counts.items():
            if n < 0:
                raise ValueError(f"negative request count for {tenant}/{decision}: {n}")
            if n:
                rows.append((hour, tenant, decision, n))
        if not rows:
            return
        with self._connection(write=True) as conn:
            conn.executemany(
                "INSERT INTO request_counts (hour, tenant, decision, n) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (hour, tenant, decision) DO UPDATE SET n = n + excluded.n",
                rows,
            )

    def query(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> list[ViolationRecord]:
        """Newest first. `since` is inclusive and takes anything `parse_since` does."""
        where: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if since is not None:
            where.append("ts >= ?")
            params.append(parse_since(since))
        sql = f"SELECT {_COLUMNS} FROM violations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC"
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, not {limit}")
            sql += " LIMIT ?"
            params.append(limit)
        with self._connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [ViolationRecord(*row) for row in rows]

    def page(self, flt: ViolationFilter, *, limit: int, after: PageKey | None = None) -> Page:
        """Up to `limit` records matching `flt`, ``ts DESC, id DESC`` (a total order, so pages
        neither repeat nor skip a record, whatever share a timestamp), starting after `after`."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        where, params = _where(flt)
        if after is not None:
            where.append("(ts < ? OR (ts = ? AND id < ?))")
            params += [after[0], after[0], after[1]]
        sql = f"SELECT id, host, {_COLUMNS} FROM violations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        with self._connection() as conn:
            rows = conn.execute(sql, [*params, limit + 1]).fetchall()
        items = [StoredViolation(row[0], row[1], ViolationRecord(*row[2:])) for row in rows]
        more = len(items) > limit
        items = items[:limit]
        return Page(items, (items[-1].record.ts, items[-1].id) if more else None)

    def summary(self, flt: ViolationFilter, *, buckets: int, top_hosts: int = 10) -> Summary:
        """Counts for a dashboard over [flt.since, flt.until) (both required). Without an
        `action` filter, held records (action `delayed`) are left out: they are not violations;
        `action="delayed"` counts only them."""
        if flt.since is None or flt.until is None:
            raise ValueError("summary needs both since and until")
        since, until = normalize_ts(flt.since), normalize_ts(flt.until)
        width = bucket_width_us(since, until, buckets)
        where, params = _where(flt)
        if flt.action is None:
            where.append("action != 'delayed'")
        cond = " AND ".join(where)
        start = epoch_us(since)
        # exact integer microseconds of the stored canonical form, relative to `since`
        offset = (
            "((CAST(strftime('%s', substr(ts, 1, 19)) AS INTEGER) - ?) * 1000000"
            " + CAST(substr(ts, 21, 6) AS INTEGER) - ?)"
        )
        series: dict[str, list[int]] = {}
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot for every count below
            try:
                for tid, index, n in conn.execute(
                    f"SELECT tenant, {offset} / ? AS b, COUNT(*) FROM violations "
                    f"WHERE {cond} GROUP BY tenant, b",
                    [start // 1_000_000, start % 1_000_000, width, *params],
                ):
                    if 0 <= index < buckets:
                        series.setdefault(tid, [0] * buckets)[index] += int(n)
                by_kind = [
                    (kind, int(n))
                    for kind, n in conn.execute(
                        f"SELECT kind, COUNT(*) AS n FROM violations WHERE {cond} "
                        "GROUP BY kind ORDER BY n DESC, kind",
                        params,
                    )
                ]
                hosts = [
                    (tid, host, int(n))
                    for tid, host, n in conn.execute(
                        "SELECT tenant, host, n FROM (SELECT tenant, host, COUNT(*) AS n, "
                        "ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY COUNT(*) DESC, host) "
                        f"AS r FROM violations WHERE {cond} AND host IS NOT NULL "
                        "GROUP BY tenant, host) WHERE r <= ? ORDER BY n DESC, tenant, host",
                        [*params, top_hosts],
                    )
                ]
            finally:
                conn.execute("COMMIT")
        return Summary(
            since=since,
            until=until,
            bucket_us=width,
            buckets=buckets,
            series=dict(sorted(series.items())),
            by_kind=by_kind,
            top_hosts=hosts,
            total=sum(n for _, n in by_kind),
        )

    def latest_violations(self, *, since: str | None = None) -> dict[str, str]:
        """Tenant -> timestamp of its newest violation (held records are not violations)."""
        with self._connection() as conn:
            return {
                tid: ts
                for tid, ts in conn.execute(
                    "SELECT tenant, MAX(ts) FROM violations WHERE ts >= ? "
                    "AND action != 'delayed' GROUP BY tenant",
                    (parse_since(since) if since is not None else "",),
                )
            }

    def robots_body(self, sha256: str) -> bytes | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT body FROM robots_bodies WHERE sha256 = ?", (sha256.lower(),)
            ).fetchone()
        return bytes(row[0]) if row else None

    def report(self, *, since: str | None = None) -> Report:
        bound = parse_since(since) if since is not None else None
        tenants: dict[str, TenantReport] = {}

        def entry(tid: str) -> TenantReport:
            return tenants.setdefault(tid, TenantReport())

        with self._connection() as conn:
            hour_bound = bound[:13] + ":00:00.000000Z" if bound else ""
            for tid, decision, n in conn.execute(
                "SELECT tenant, decision, SUM(n) FROM request_counts WHERE hour >= ? "
                "GROUP BY tenant, decision ORDER BY tenant, SUM(n) DESC, decision",
                (hour_bound,),
            ):
                entry(tid).requests[decision] = int(n)
            for tid, kind, n in conn.execute(
                "SELECT tenant, kind, COUNT(*) FROM violations WHERE ts >= ? "
                "AND action != 'delayed' "
                "GROUP BY tenant, kind ORDER BY tenant, COUNT(*) DESC, kind",
                (bound or "",),
            ):
                entry(tid).violations[kind] = int(n)
            held = {
                tid: int(n)
                for tid, n in conn.execute(
                    "SELECT tenant, COUNT(*) FROM violations WHERE ts >= ? "
                    "AND action = 'delayed' GROUP BY tenant",
                    (bound or "",),
                )
            }
        for tid in held:
            entry(tid)
        tenants = {
            tid: TenantReport(t.requests, t.violations, held.get(tid, 0))
            for tid, t in tenants.items()
        }
        return Report(since=bound, tenants=tenants)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# -- the proxy's writer ------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    rec: ViolationRecord
    body: bytes | None
    done: asyncio.Future[None]


class StoreWriter:
    """The proxy's single path into the store: a bounded queue and one writer task that commits
    each batch of queued records in one transaction (group commit), plus retention.

    Store calls run on `executor` (one thread, shared with the request-count flushes), so the
    event loop never blocks on SQLite and writes stay serial. A failed batch is counted in
    `crawlguard_store_errors_total` (one per record) and logged once; its callers return as
    before: their records are in the JSON log only.
    """

    def __init__(
        self,
        store: ViolationStore,
        executor: Executor,
        *,
        metrics: Metrics | None = None,
        queue_max: int = STORE_QUEUE_MAX,
        batch_max: int = STORE_BATCH_MAX,
        retention_days: int | None = None,
        retention_interval: float = RETENTION_INTERVAL_SECONDS,
        retention_first_delay: float = RETENTION_FIRST_DELAY_SECONDS,
        prune_batch: int = PRUNE_BATCH_ROWS,
    ) -> None:
        self.store = store
        self.executor = executor
        self.metrics = metrics
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self.retention_first_delay = retention_first_delay
        self.prune_batch = prune_batch
        self._queue: deque[_Pending] = deque()
        self._pending = 0  # queued plus the batch being committed
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Records accepted and not yet committed (or failed)."""
        return self._pending

    def start(self) -> None:
        """Start the writer and, with `retention_days`, the retention task (in a running loop)."""
        self._ensure_writer()
        if self.retention_days is not None and self._retention is None and not self._closed:
            self._retention = asyncio.get_running_loop().create_task(
                self._retention_loop(), name="crawlguard-store-retention"
            )

    def _ensure_writer(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="crawlguard-store-writer"
            )

    def submit(self, rec: ViolationRecord, body: bytes | None = None) -> asyncio.Future[None]:
        """Queue `rec`; the future resolves once it is committed (or its batch failed).

        Raises `StoreBacklogged` when `queue_max` records are already waiting. Synchronous, so
        a caller can refuse before it logs anything. After `close` (shutdown) a record is not
        written: it counts as a store error, as it always did, and the future is already done.
        """
        if self._closed:
            if self.metrics is not None:
                self.metrics.store_errors.inc()
            log.error("violation store is closed (shutting down); the record is in the log only")
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._pending >= self.queue_max:
            if self.metrics is not None:
                self.metrics.store_backlogged.inc()
            raise StoreBacklogged(
                f"{self._pending} violation records are waiting for the store "
                f"(at most {self.queue_max}); the store is too slow or stuck"
            )
        self._ensure_writer()
        assert self._wakeup is not None
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rec, body, done))
        self._pending += 1
        self._set_depth()
        self._wakeup.set()
        return done

    async def write(self, rec: ViolationRecord, body: bytes | None = None) -> None:
        """`submit` and wait for the commit. If the caller is cancelled, the record is still
        written (it is queued); only the wait ends."""
        await self.submit(rec, body)

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.store_queue_depth.set(self._pending)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            n = min(len(self._queue), self.batch_max)
            batch = [self._queue.popleft() for _ in range(n)]
            try:
                await loop.run_in_executor(self.executor, self._commit, batch)
            except Exception:
                if self.metrics is not None:
                    self.metrics.store_errors.inc(len(batch))
                log.exception(
                    "violation store write failed for a batch of %d records; "
                    "they are in the log only",
                    len(batch),
                )
            finally:
                self._pending -= len(batch)
                self._set_depth()
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(None)

    def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            self.store.record_many([(item.rec, item.body) for item in batch])
        finally:
            if self.metrics is not None:
                self.metrics.store_write_seconds.observe(time.perf_counter() - started)

    # -- retention ---------------------------------------------------------------------------

    def retention_bound(self, now: datetime | None = None) -> str | None:
        if self.retention_days is None:
            return None
        return _canonical((now or datetime.now(UTC)) - timedelta(days=self.retention_days))

    async def prune_now(self, now: datetime | None = None) -> PruneResult:
        """Delete what `retention_days` no longer keeps, one short transaction per step on the
        writer's thread, so record batches interleave with the prune."""
        before = self.retention_bound(now)
        if before is None:
            return PruneResult()
        loop = asyncio.get_running_loop()
        total = PruneResult()
        while step := await loop.run_in_executor(
            self.executor, self.store.prune_step, before, self.prune_batch
        ):
            total += step
        if self.metrics is not None:
            self.metrics.store_pruned.labels("violations").inc(total.violations)
            self.metrics.store_pruned.labels("request_counts").inc(total.request_counts)
            self.metrics.store_pruned.labels("robots_bodies").inc(total.robots_bodies)
        if total:
            log.info(
                "retention (%d days): pruned %d violations, %d request-count buckets and "
                "%d robots.txt bodies older than %s",
                self.retention_days,
                total.violations,
                total.request_counts,
                total.robots_bodies,
                before,
            )
        return total

    async def _retention_loop(self) -> None:
        await asyncio.sleep(self.retention_first_delay)
        while True:
            try:
                await self.prune_now()
            except Exception:
                log.exception("retention prune failed; it is retried in the next round")
            await asyncio.sleep(self.retention_interval)

    async def close(self) -> None:
        """Refuse new records, stop retention, and wait until every queued record is written."""
        self._closed = True
        if self._retention is not None:
            self._retention.cancel()
            with suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._task
            self._task = None


def open_store(url: str) -> ViolationStore:
    """``sqlite:///rel/path.db`` (relative to the current directory), ``sqlite:////abs.db``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreError(f"store URL {url!r} has no scheme; use sqlite:///path/to/file.db")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/"):
            raise StoreError(
                f"store URL {url!r}: a SQLite URL has three slashes and a path, e.g. "
                "sqlite:///var/crawlguard.db (relative) or sqlite:////srv/crawlguard.db"
            )
        path = rest[1:]
        if not path or path.endswith("/"):
            raise StoreError(f"store URL {url!r} names no database file")
        if "?" in path:
            raise StoreError(f"store URL {url!r}: SQLite URL options are not supported")
        return SQLiteStore(path)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        raise StoreError(
            "store URL scheme 'postgresql' is not supported until the scale-out store lands; "
            "use sqlite:///var/crawlguard.db"
        )
    raise StoreError(f"unsupported store URL scheme {scheme!r}; use sqlite:///path/to/file.db")


__all__ = [
    "Page",
    "PageKey",
    "PruneResult",
    "Report",
    "SQLiteStore",
    "StoreBacklogged",
    "StoreError",
    "StoreWriter",
    "StoredViolation",
    "Summary",
    "TenantReport",
    "ViolationFilter",
    "ViolationStore",
    "bucket_width_us",
    "epoch_us",
    "from_epoch_us",
    "normalize_ts",
    "open_store",
    "parse_since",
    "url_host",
]
