"""`SQLiteStore`: the violation store in one SQLite file (``sqlite:///path/to/file.db``).

WAL journal and ``synchronous = FULL``, so a returned commit is on disk. One connection shared
by threads under a lock; the schema version is SQLite's ``user_version`` (see `_migrate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crawlguard.policy.records import FIELDS, ViolationRecord
from crawlguard.store import (
    PRUNE_BATCH_ROWS,
    Page,
    PageKey,
    PruneResult,
    Report,
    StoredViolation,
    StoreError,
    Summary,
    ViolationFilter,
    epoch_us,
    hour_bucket,
    new_uid,
    normalize_ts,
    rollup,
    sql,
    url_host,
)

log = logging.getLogger("crawlguard")
ALL = rollup.ALL

SCHEMA_VERSION = 5
# 2: index on violations.robots_sha256 (orphaned robots bodies pruning)
# 3: violations.host (canonical host of the url, backfilled) for the admin API's host filter
# 4: violations.count, first_ts, last_ts (folded records; existing rows count 1)
# 5: violations.uid (unique, backfilled), the roll-ups (crawlguard.store.rollup) and
#    request_counts_daily, built from the records and the hourly counts
CACHE_KIB = 65_536  # page cache per connection at most (allocated as used)
BUSY_TIMEOUT_SECONDS = 10.0  # `run --workers N` processes share one SQLite file

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
    count         INTEGER NOT NULL DEFAULT 1,
    first_ts      TEXT,
    last_ts       TEXT,
    host          TEXT,
    uid           TEXT
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
CREATE TABLE IF NOT EXISTS request_counts_daily (
    day      TEXT NOT NULL,
    tenant   TEXT NOT NULL,
    decision TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (day, tenant, decision)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_kinds (
    span   INTEGER NOT NULL,
    start  INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    kind   TEXT NOT NULL,
    action TEXT NOT NULL,
    n      INTEGER NOT NULL,
    last   TEXT NOT NULL,
    PRIMARY KEY (span, start, tenant, kind, action)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_hosts (
    span   INTEGER NOT NULL,
    start  INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    host   TEXT NOT NULL,
    kind   TEXT NOT NULL,
    action TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (span, start, tenant, host, kind, action)
) WITHOUT ROWID;
"""
# After the host and uid columns exist (an older table gets them from `_migrate`).
_HOST_INDEX = "CREATE INDEX IF NOT EXISTS violations_host_ts ON violations (host, ts)"
_UID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS violations_uid ON violations (uid)"
# Columns added after version 1, in order; ADD COLUMN with a constant default rewrites nothing.
_ADDED_COLUMNS = (
    ("host", "TEXT"),
    ("count", "INTEGER NOT NULL DEFAULT 1"),
    ("first_ts", "TEXT"),
    ("last_ts", "TEXT"),
    ("uid", "TEXT"),
)
MIGRATE_BATCH_ROWS = 10_000
ROLLUP_BUILD_ROWS = 100_000  # records rolled up per statement when version 5 builds them

_COLUMNS = sql.COLUMNS
# exact integer seconds and microseconds of the stored canonical form
_TS_S = "CAST(strftime('%s', substr(ts, 1, 19)) AS INTEGER)"
_TS_US = f"({_TS_S} * 1000000 + CAST(substr(ts, 21, 6) AS INTEGER))"
_SQL = sql.Dialect(ph="?", ts=str, ts_us=_TS_US)  # timestamps stored in their canonical form
_INSERT = (
    f"INSERT INTO violations (uid, {_COLUMNS}, host) "
    f"VALUES (?, {', '.join('?' for _ in FIELDS)}, ?)"
)
_DAILY_SUBTRACT = (
    "UPDATE request_counts_daily SET n = n - ? WHERE day = ? AND tenant = ? AND decision = ?"
)
_KIND_UPSERT = (
    f"INSERT INTO rollup_kinds ({rollup.KIND_KEY}, n, last) VALUES (?, ?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT ({rollup.KIND_KEY}) DO UPDATE SET n = n + excluded.n, "
    "last = max(last, excluded.last)"
)
_HOST_UPSERT = (
    f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) VALUES (?, ?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT ({rollup.HOST_KEY}) DO UPDATE SET n = n + excluded.n"
)

# `import_rows`: a staging table per connection (TEMP: in the connection's temp store, never
# in the shared file), emptied after every batch
_STAGE_COLUMNS = f"uid, {_COLUMNS}, host"
_STAGE_TABLE = f"CREATE TEMP TABLE IF NOT EXISTS import_stage ({_STAGE_COLUMNS}, hour INTEGER)"
_STAGE_INSERT = (
    f"INSERT INTO temp.import_stage ({_STAGE_COLUMNS}, hour) "
    f"VALUES ({', '.join('?' for _ in range(len(FIELDS) + 3))})"
)
_STAGE_TO_VIOLATIONS = (
    f"INSERT INTO main.violations ({_STAGE_COLUMNS}) "
    f"SELECT {_STAGE_COLUMNS} FROM temp.import_stage ORDER BY rowid"
)


def _stage_rollups() -> tuple[str, ...]:
    """The roll-up upserts of what is left in the staging table (the rows inserted): the same
    sums `rollup.Deltas` makes, grouped in SQL. `WHERE true`: SQLite's upsert-after-SELECT
    parsing rule."""
    out = []
    for span in rollup.SPANS:
        start = f"hour / {span} * {span}"
        out.append(
            f"INSERT INTO rollup_kinds ({rollup.KIND_KEY}, n, last) "
            f"SELECT {span}, {start}, tenant, kind, action, sum(count), "
            "max(coalesce(last_ts, ts)) FROM temp.import_stage WHERE true "
            f"GROUP BY 2, tenant, kind, action ON CONFLICT ({rollup.KIND_KEY}) "
            "DO UPDATE SET n = n + excluded.n, last = max(last, excluded.last)"
        )
        out.append(
            f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
            f"SELECT {span}, {start}, tenant, host, kind, action, sum(count) "
            "FROM temp.import_stage WHERE host IS NOT NULL "
            f"GROUP BY 2, tenant, host, kind, action ON CONFLICT ({rollup.HOST_KEY}) "
            "DO UPDATE SET n = n + excluded.n"
        )
        out.append(  # the per-host sums of every violation (rollup.ALL)
            f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
            f"SELECT {span}, {start}, tenant, host, '{ALL}', '{ALL}', sum(count) "
            "FROM temp.import_stage WHERE host IS NOT NULL AND action <> 'delayed' "
            f"GROUP BY 2, tenant, host ON CONFLICT ({rollup.HOST_KEY}) "
            "DO UPDATE SET n = n + excluded.n"
        )
    out.append(  # the all-time rows (span 0)
        f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
        "SELECT 0, 0, tenant, host, kind, action, sum(count) "
        "FROM temp.import_stage WHERE host IS NOT NULL "
        f"GROUP BY tenant, host, kind, action ON CONFLICT ({rollup.HOST_KEY}) "
        "DO UPDATE SET n = n + excluded.n"
    )
    out.append(
        f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
        f"SELECT 0, 0, tenant, host, '{ALL}', '{ALL}', sum(count) "
        "FROM temp.import_stage WHERE host IS NOT NULL AND action <> 'delayed' "
        f"GROUP BY tenant, host ON CONFLICT ({rollup.HOST_KEY}) "
        "DO UPDATE SET n = n + excluded.n"
    )
    return tuple(out)


_STAGE_ROLLUPS = _stage_rollups()


def _build_rollups(conn: sqlite3.Connection) -> None:
    """Version 5: the roll-ups of the records already stored, in batches of record ids."""
    top = conn.execute("SELECT max(id) FROM violations").fetchone()[0] or 0
    for lo in range(0, top, ROLLUP_BUILD_ROWS):
        hi = lo + ROLLUP_BUILD_ROWS
        for span in rollup.SPANS:
            start = f"({_TS_S} / {span}) * {span}"
            conn.execute(
                f"INSERT INTO rollup_kinds ({rollup.KIND_KEY}, n, last) "
                f"SELECT {span}, {start}, tenant, kind, action, sum(count), "
                "max(coalesce(last_ts, ts)) FROM violations WHERE id > ? AND id <= ? "
                f"GROUP BY 2, tenant, kind, action ON CONFLICT ({rollup.KIND_KEY}) "
                "DO UPDATE SET n = n + excluded.n, last = max(last, excluded.last)",
                (lo, hi),
            )
            conn.execute(
                f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
                f"SELECT {span}, {start}, tenant, host, kind, action, sum(count) "
                "FROM violations WHERE id > ? AND id <= ? AND host IS NOT NULL "
                f"GROUP BY 2, tenant, host, kind, action ON CONFLICT ({rollup.HOST_KEY}) "
                "DO UPDATE SET n = n + excluded.n",
                (lo, hi),
            )
            conn.execute(  # the per-host sums of every violation (rollup.ALL)
                f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
                f"SELECT {span}, {start}, tenant, host, '{ALL}', '{ALL}', sum(count) "
                "FROM violations WHERE id > ? AND id <= ? AND host IS NOT NULL "
                f"AND action <> 'delayed' GROUP BY 2, tenant, host "
                f"ON CONFLICT ({rollup.HOST_KEY}) DO UPDATE SET n = n + excluded.n",
                (lo, hi),
            )
        conn.execute(  # the all-time rows (span 0) top hosts subtract from
            f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
            "SELECT 0, 0, tenant, host, kind, action, sum(count) "
            "FROM violations WHERE id > ? AND id <= ? AND host IS NOT NULL "
            f"GROUP BY tenant, host, kind, action ON CONFLICT ({rollup.HOST_KEY}) "
            "DO UPDATE SET n = n + excluded.n",
            (lo, hi),
        )
        conn.execute(
            f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
            f"SELECT 0, 0, tenant, host, '{ALL}', '{ALL}', sum(count) "
            "FROM violations WHERE id > ? AND id <= ? AND host IS NOT NULL "
            f"AND action <> 'delayed' GROUP BY tenant, host "
            f"ON CONFLICT ({rollup.HOST_KEY}) DO UPDATE SET n = n + excluded.n",
            (lo, hi),
        )


def _migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the schema to SCHEMA_VERSION in one transaction (idempotent, so two
    processes opening an old file at once are fine: the second finds the version current):
    tables and indexes, then the columns later versions added: version 3's `host`
    (backfilled from each record's url), version 4's `count` (1 for every existing record),
    `first_ts` and `last_ts`, version 5's `uid` (backfilled) and roll-ups (built)."""
    try:
        # one script: executescript would commit a transaction begun before it
        conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}")
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            conn.execute("COMMIT")  # another process migrated while we waited for the lock
            return
        columns = {row[1] for row in conn.execute("PRAGMA table_info(violations)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in columns:
                conn.execute(f"ALTER TABLE violations ADD COLUMN {name} {decl}")
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
        last = 0
        while rows := conn.execute(
            "SELECT id FROM violations WHERE id > ? AND uid IS NULL ORDER BY id LIMIT ?",
            (last, MIGRATE_BATCH_ROWS),
        ).fetchall():
            last = rows[-1][0]
            conn.executemany(
                "UPDATE violations SET uid = ? WHERE id = ?",
                [(new_uid(), rid) for (rid,) in rows],
            )
        conn.execute(_UID_INDEX)
        conn.execute("DELETE FROM rollup_kinds")  # built from scratch: the records are the truth
        conn.execute("DELETE FROM rollup_hosts")
        conn.execute("DELETE FROM request_counts_daily")
        _build_rollups(conn)
        conn.execute(
            "INSERT INTO request_counts_daily (day, tenant, decision, n) "
            "SELECT substr(hour, 1, 10) || 'T00:00:00.000000Z', tenant, decision, sum(n) "
            "FROM request_counts GROUP BY 1, tenant, decision"
        )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # index pages of big stores
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

    def record_many(
        self,
        items: Sequence[tuple[ViolationRecord, bytes | None]],
        uids: Sequence[str] | None = None,
    ) -> int:
        """Write all `items` in one transaction (group commit), with their roll-ups: all are
        durable on return, or none is written and the error is raised. Records are bounded
        (`ViolationRecord.bounded`). `uids` (one per item, any UUID spelling) make the write
        idempotent: a record whose uid is stored already is skipped. Returns how many were
        written."""
        if uids is not None and len(uids) != len(items):
            raise ValueError("one uid per record")
        rows: list[list[Any]] = []
        shas: list[str | None] = []
        bodies: dict[str, tuple[bytes, str]] = {}
        for i, (rec, robots_body) in enumerate(items):
            row = [None, *astuple_shallow(rec.bounded())]  # not to_dict: asdict deep-copies
            row[_TS_AT] = normalize_ts(rec.ts)
            for at in _TIMES_AT:
                if row[at] is not None:
                    row[at] = normalize_ts(row[at])
            sha = rec.robots_sha256.lower() if rec.robots_sha256 else None
            row[_SHA_AT] = sha  # lower-case, as robots_bodies is keyed
            row[0] = _uid(uids[i]) if uids is not None else new_uid()
            row.append(url_host(row[_URL_AT]))
            rows.append(row)
            shas.append(sha)
            if robots_body is not None and sha and sha not in bodies:
                bodies[sha] = (robots_body, row[_TS_AT])
        if not rows:
            return 0
        with self._connection(write=True) as conn:
            if uids is not None:
                rows, shas = _new_rows(conn, rows, shas)
            conn.executemany(_INSERT, rows)
            deltas = rollup.Deltas()
            for row in rows:
                deltas.add(*(row[i] for i in _DELTA_AT), row[_LAST_AT] or row[1])
            conn.executemany(_KIND_UPSERT, deltas.kind_rows())
            conn.executemany(_HOST_UPSERT, deltas.host_rows())
            cited = set(shas)
            for sha, (body, ts) in bodies.items():
                if sha not in cited:
                    continue  # its records were stored before
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
        return len(rows)

    def import_rows(self, rows: Sequence[Sequence[Any]]) -> int:
        """`crawlguard store import`'s write: `rows` as `crawlguard.cli.store.import_row` makes
        them (validated, bounded, canonical: uid, the FIELDS, host, hour), in one transaction,
        idempotent by uid (stored already or earlier in `rows`: skipped), with the roll-ups of
        the rows actually inserted. Returns how many were.

        Set-based, so SQLite does the work with the GIL released while the next batch is
        parsed: the rows go into a TEMP staging table, the ones whose uid is stored already
        are deleted from it, and the rest is inserted and rolled up in a few statements. The
        write lock (BEGIN IMMEDIATE) is held throughout, so another writer (the proxy) cannot
        add a uid between the check and the insert; it waits (busy timeout) a batch at most."""
        seen: set[str] = set()
        unique = [r for r in rows if not (r[0] in seen or seen.add(r[0]))]
        if not unique:
            return 0
        with self._connection(write=True) as conn:
            conn.execute(_STAGE_TABLE)  # IF NOT EXISTS: a rolled-back batch may have made it
            conn.execute("DELETE FROM temp.import_stage")
            conn.executemany(_STAGE_INSERT, unique)
            conn.execute(
                "DELETE FROM temp.import_stage WHERE EXISTS "
                "(SELECT 1 FROM main.violations AS v WHERE v.uid = import_stage.uid)"
            )
            n = conn.execute(_STAGE_TO_VIOLATIONS).rowcount
            if n:
                for stmt in _STAGE_ROLLUPS:
                    conn.execute(stmt)
            conn.execute("DELETE FROM temp.import_stage")
        return n

    def prune_step(self, before: str, limit: int = PRUNE_BATCH_ROWS) -> PruneResult:
        """One short transaction of retention: up to `limit` violations older than `before`;
        once none is left, request-count hours wholly before it; then robots bodies no record
        references. An empty result means the prune is complete."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        bound = normalize_ts(before)
        with self._connection(write=True) as conn:
            deleted = conn.execute(sql.prune_violations_sql(_SQL), (bound, limit)).fetchall()
            if deleted:
                deltas = rollup.Deltas()
                for row in deleted:
                    deltas.add(*row)
                for stmt, params in rollup.subtract(_SQL, deltas):
                    conn.executemany(stmt, params)
                return PruneResult(violations=len(deleted))
            hours = conn.execute(  # WITHOUT ROWID: the primary key names the row
                sql.prune_request_counts_sql(_SQL), (hour_bucket(bound), limit)
            ).fetchall()
            if hours:
                days = sql.daily_request_rows(hours)
                conn.executemany(_DAILY_SUBTRACT, [(n, *key) for *key, n in days])
                conn.executemany(
                    "DELETE FROM request_counts_daily WHERE day = ? AND tenant = ? "
                    "AND decision = ? AND n <= 0",
                    [tuple(key) for *key, _ in days],
                )
                return PruneResult(request_counts=len(hours))
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
        hour = hour_bucket(ts)
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
            conn.executemany(
                "INSERT INTO request_counts_daily (day, tenant, decision, n) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, tenant, decision) DO UPDATE SET n = n + excluded.n",
                sql.daily_request_rows(rows),
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
        stmt, params = sql.query_sql(_SQL, tenant=tenant, kind=kind, since=since, limit=limit)
        with self._connection() as conn:
            rows = conn.execute(stmt, params).fetchall()
        return [ViolationRecord(*row) for row in rows]

    def page(self, flt: ViolationFilter, *, limit: int, after: PageKey | None = None) -> Page:
        """Up to `limit` records matching `flt`, ``ts DESC, id DESC`` (a total order, so pages
        neither repeat nor skip a record, whatever share a timestamp), starting after `after`."""
        cursor = None
        if after is not None:
            cursor = ("(ts < ? OR (ts = ? AND id < ?))", [after[0], after[0], after[1]])
        stmt, params = sql.page_sql(_SQL, flt, limit, cursor)
        with self._connection() as conn:
            rows = conn.execute(stmt, params).fetchall()
        items = [StoredViolation(row[0], row[1], ViolationRecord(*row[2:])) for row in rows]
        return sql.page_of(items, limit)

    def summary(self, flt: ViolationFilter, *, buckets: int, top_hosts: int = 10) -> Summary:
        """Counts for a dashboard over [flt.since, flt.until) (both required). Without an
        `action` filter, held records (action `delayed`) are left out: they are not violations;
        `action="delayed"` counts only them."""
        q = sql.summary_query(flt, buckets)
        series: dict[str, list[int]] = {}
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot for every count below
            try:
                q.add_series(series, conn.execute(*q.series_sql(_SQL)))
                by_kind = [(kind, int(n)) for kind, n in conn.execute(*q.by_kind_sql(_SQL))]
                first, last = conn.execute(sql.SPAN_SQL).fetchone()
                span = None if first is None else (epoch_us(first), epoch_us(last) + 1)
                hosts = [
                    (tid, host, int(n))
                    for tid, host, n in conn.execute(*q.top_hosts_sql(_SQL, top_hosts, span))
                ]
            finally:
                conn.execute("COMMIT")
        return q.result(series, by_kind, hosts)

    def latest_violations(self, *, since: str | None = None) -> dict[str, str]:
        """Tenant -> timestamp of its newest violation (held records are not violations)."""
        stmt, params = sql.latest_sql(_SQL, since)
        with self._connection() as conn:
            return {tid: ts for tid, ts in conn.execute(stmt, params)}

    def robots_body(self, sha256: str) -> bytes | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT body FROM robots_bodies WHERE sha256 = ?", (sha256.lower(),)
            ).fetchone()
        return bytes(row[0]) if row else None

    def report(self, *, since: str | None = None) -> Report:
        q = sql.report_query(_SQL, since)
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot for every count below
            try:
                requests = conn.execute(*q.requests).fetchall()
                violations = conn.execute(*q.violations).fetchall()
                held = conn.execute(*q.held).fetchall()
            finally:
                conn.execute("COMMIT")
        return q.result(requests, violations, held)

    def export_page(
        self, *, since: str | None, after: PageKey | None, limit: int
    ) -> list[tuple[PageKey, str, ViolationRecord]]:
        """Up to `limit` records oldest first (``ts, id``) from `since` on, after `after`:
        ((ts, id), uid, record), for `crawlguard store export`."""
        keyset = None
        if after is not None:
            keyset = ("(ts > ? OR (ts = ? AND id > ?))", [after[0], after[0], after[1]])
        stmt, params = sql.export_sql(_SQL, since, keyset, limit)
        with self._connection() as conn:
            rows = conn.execute(stmt, params).fetchall()
        return [((row[2], row[0]), row[1], ViolationRecord(*row[2:])) for row in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# positions in an `_INSERT` row: ts, tenant, kind, action, host, count; then last_ts
_DELTA_AT = (
    *(1 + FIELDS.index(f) for f in ("ts", "tenant", "kind", "action")),
    len(FIELDS) + 1,
    1 + FIELDS.index("count"),
)
_LAST_AT = 1 + FIELDS.index("last_ts")
_TS_AT = 1 + FIELDS.index("ts")
_TIMES_AT = (1 + FIELDS.index("first_ts"), _LAST_AT)
_SHA_AT = 1 + FIELDS.index("robots_sha256")
_URL_AT = 1 + FIELDS.index("url")


def astuple_shallow(rec: ViolationRecord) -> tuple[Any, ...]:
    """The record's fields in FIELDS order (dataclasses.astuple deep-copies: slow)."""
    return tuple(getattr(rec, f) for f in FIELDS)


_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _uid(value: str) -> str:
    """A uid in the stored form (32 lower-case hex digits) from any UUID spelling."""
    return value if _HEX32.match(value) else uuid.UUID(value).hex


def _new_rows(
    conn: sqlite3.Connection, rows: list[list[Any]], shas: list[str | None]
) -> tuple[list[list[Any]], list[str | None]]:
    """The rows whose uid is neither stored already nor earlier in the batch (the write
    transaction holds the file's write lock, so nobody adds one meanwhile)."""
    stored = {
        uid
        for (uid,) in conn.execute(
            "SELECT uid FROM violations WHERE uid IN (SELECT value FROM json_each(?))",
            (json.dumps([row[0] for row in rows]),),
        )
    }
    keep: list[list[Any]] = []
    keep_shas: list[str | None] = []
    for row, sha in zip(rows, shas, strict=True):
        if row[0] not in stored:
            stored.add(row[0])
            keep.append(row)
            keep_shas.append(sha)
    return keep, keep_shas


__all__ = ["SCHEMA_VERSION", "SQLiteStore"]
