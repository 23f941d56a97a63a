"""`PostgresStore`: the violation store in PostgreSQL (``postgresql://user@host:5432/db``).

One database (or schema) shared by every proxy process and the operator commands. Same
protocol and semantics as `SQLiteStore`; what differs is below.

Schema (`SCHEMA_VERSION`, kept in the one-row table ``schema_version``): created or migrated
when a connection is first made, inside one transaction that holds a transaction-scoped
advisory lock (per schema), so two processes starting together neither race nor fail.
Tables are unqualified: they live in the first schema of the connection's ``search_path``
(``?options=-csearch_path%3Dcrawlguard`` in the URL picks one). Timestamps are ``timestamptz``
(handed in and out in the canonical string form); text columns that are filtered or sorted on
use the "C" collation, so ordering is byte order, as in SQLite. Every record carries a ``uid``
(unique): a batch whose commit outcome is unknown (connection lost during COMMIT) or a spool
replayed twice after a crash is written exactly once (``ON CONFLICT (uid) DO NOTHING``).

Durability: autocommit connections with explicit transactions; `record_many` returns after
COMMIT returned, and a server default of ``synchronous_commit = off`` is overridden for the
session. Two connections: one for writes (the proxy's writer thread, the spool replayer) and
one for reads (admin API, CLI), each behind its own lock, so a slow dashboard query never
delays a commit. Lost connections are re-made on the next call.

Errors: `StoreUnavailable` when the server cannot be reached or refuses work for now
(connection errors, shutdown, read-only, out of disk, timeouts: psycopg's OperationalError and
InterfaceError), `StoreError` for anything else. Passwords come from libpq (``PGPASSWORD``, a
password file ``PGPASSFILE`` / ``~/.pgpass``), never from the URL (the config holds no secrets).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from crawlguard.policy.records import FIELDS, ViolationRecord
from crawlguard.store import (
    PRUNE_BATCH_ROWS,
    Page,
    PageKey,
    PruneResult,
    Report,
    StoredViolation,
    StoreError,
    StoreUnavailable,
    Summary,
    ViolationFilter,
    canonical_ts,
    epoch_us,
    hour_bucket,
    new_uid,
    normalize_ts,
    rollup,
    sql,
    url_host,
)

log = logging.getLogger("crawlguard")

SCHEMA_VERSION = 3
# 1: violations (uid unique, timestamptz, host), robots_bodies, request_counts
# 2: violations.count, first_ts, last_ts (folded records; existing rows count 1)
# 3: the roll-ups (crawlguard.store.rollup) and request_counts_daily, built from the records
#    and the hourly counts

# pg_advisory_xact_lock(int4, int4): a fixed class id, and the schema's name hashed, so stores
# in different schemas of one database migrate independently.
ADVISORY_LOCK_CLASS = 0x43474C44  # "CGLD"

# libpq parameters crawlguard sets unless the URL does: a dead server or a silent network
# fails a call within seconds (then the proxy spools) instead of hanging the writer thread.
CONNECT_DEFAULTS: dict[str, str] = {
    "connect_timeout": "5",
    "application_name": "crawlguard",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",  # ms unacknowledged data may wait before the link is dropped
}

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        version   integer NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS violations (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        uid           uuid NOT NULL,
        ts            timestamptz NOT NULL,
        tenant        text COLLATE "C" NOT NULL,
        kind          text COLLATE "C" NOT NULL,
        action        text COLLATE "C" NOT NULL,
        method        text NOT NULL,
        url           text NOT NULL,
        user_agent    text,
        rule          text,
        crawl_delay   double precision,
        retry_after   bigint,
        robots_sha256 text COLLATE "C",
        delay_seconds double precision,
        reason        text,
        count         bigint NOT NULL DEFAULT 1,
        first_ts      timestamptz,
        last_ts       timestamptz,
        host          text COLLATE "C",
        CONSTRAINT violations_uid_key UNIQUE (uid)
    )""",
    # version 2 (a no-op on a table made above; a constant default rewrites nothing)
    "ALTER TABLE violations ADD COLUMN IF NOT EXISTS count bigint NOT NULL DEFAULT 1",
    "ALTER TABLE violations ADD COLUMN IF NOT EXISTS first_ts timestamptz",
    "ALTER TABLE violations ADD COLUMN IF NOT EXISTS last_ts timestamptz",
    "CREATE INDEX IF NOT EXISTS violations_tenant_ts ON violations (tenant, ts)",
    "CREATE INDEX IF NOT EXISTS violations_kind_ts ON violations (kind, ts)",
    "CREATE INDEX IF NOT EXISTS violations_host_ts ON violations (host, ts)",
    "CREATE INDEX IF NOT EXISTS violations_ts ON violations (ts, id)",
    "CREATE INDEX IF NOT EXISTS violations_robots_sha256 ON violations (robots_sha256) "
    "WHERE robots_sha256 IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS robots_bodies (
        sha256     text COLLATE "C" PRIMARY KEY,
        body       bytea NOT NULL,
        first_seen timestamptz NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS request_counts (
        hour     timestamptz NOT NULL,
        tenant   text COLLATE "C" NOT NULL,
        decision text COLLATE "C" NOT NULL,
        n        bigint NOT NULL,
        PRIMARY KEY (hour, tenant, decision)
    )""",
    """CREATE TABLE IF NOT EXISTS request_counts_daily (
        day      timestamptz NOT NULL,
        tenant   text COLLATE "C" NOT NULL,
        decision text COLLATE "C" NOT NULL,
        n        bigint NOT NULL,
        PRIMARY KEY (day, tenant, decision)
    )""",
    """CREATE TABLE IF NOT EXISTS rollup_kinds (
        span   integer NOT NULL,
        start  bigint NOT NULL,
        tenant text COLLATE "C" NOT NULL,
        kind   text COLLATE "C" NOT NULL,
        action text COLLATE "C" NOT NULL,
        n      bigint NOT NULL,
        last   timestamptz NOT NULL,
        PRIMARY KEY (span, start, tenant, kind, action)
    )""",
    """CREATE TABLE IF NOT EXISTS rollup_hosts (
        span   integer NOT NULL,
        start  bigint NOT NULL,
        tenant text COLLATE "C" NOT NULL,
        host   text COLLATE "C" NOT NULL,
        kind   text COLLATE "C" NOT NULL,
        action text COLLATE "C" NOT NULL,
        n      bigint NOT NULL,
        PRIMARY KEY (span, start, tenant, host, kind, action)
    )""",
]
# Version 3 on a store with records: their roll-ups, from scratch (the records are the truth).
_BUILD_ROLLUPS = [
    "DELETE FROM rollup_kinds",
    "DELETE FROM rollup_hosts",
    "DELETE FROM request_counts_daily",
    "INSERT INTO request_counts_daily (day, tenant, decision, n) "
    "SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS d, tenant, "
    "decision, sum(n) FROM request_counts GROUP BY d, tenant, decision",
    *(
        stmt
        for span in rollup.SPANS
        for stmt in (
            f"INSERT INTO rollup_kinds ({rollup.KIND_KEY}, n, last) "
            f"SELECT {span}, floor(EXTRACT(EPOCH FROM ts) / {span})::bigint * {span} AS s, "
            "tenant, kind, action, sum(count), max(coalesce(last_ts, ts)) FROM violations "
            "GROUP BY s, tenant, kind, action",
            f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
            f"SELECT {span}, floor(EXTRACT(EPOCH FROM ts) / {span})::bigint * {span} AS s, "
            "tenant, host, kind, action, sum(count) FROM violations WHERE host IS NOT NULL "
            "GROUP BY s, tenant, host, kind, action",
            f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) "
            f"SELECT {span}, floor(EXTRACT(EPOCH FROM ts) / {span})::bigint * {span} AS s, "
            f"tenant, host, '{rollup.ALL}', '{rollup.ALL}', sum(count) FROM violations "
            "WHERE host IS NOT NULL AND action <> 'delayed' GROUP BY s, tenant, host",
        )
    ),
    f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) SELECT 0, 0, tenant, host, kind, action, "
    "sum(count) FROM violations WHERE host IS NOT NULL GROUP BY tenant, host, kind, action",
    f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) SELECT 0, 0, tenant, host, "
    f"'{rollup.ALL}', '{rollup.ALL}', sum(count) FROM violations "
    "WHERE host IS NOT NULL AND action <> 'delayed' GROUP BY tenant, host",
]

_COLUMNS = sql.COLUMNS
_INSERT = (
    f"INSERT INTO violations (uid, {_COLUMNS}, host) "
    f"VALUES ({', '.join('%s' for _ in range(len(FIELDS) + 2))}) "
    "ON CONFLICT (uid) DO NOTHING RETURNING ts, tenant, kind, action, host, count, "
    "coalesce(last_ts, ts)"
)
_KIND_UPSERT = (
    f"INSERT INTO rollup_kinds ({rollup.KIND_KEY}, n, last) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) "
    f"ON CONFLICT ({rollup.KIND_KEY}) DO UPDATE SET n = rollup_kinds.n + EXCLUDED.n, "
    "last = GREATEST(rollup_kinds.last, EXCLUDED.last)"
)
_HOST_UPSERT = (
    f"INSERT INTO rollup_hosts ({rollup.HOST_KEY}, n) VALUES (%s, %s, %s, %s, %s, %s, %s) "
    f"ON CONFLICT ({rollup.HOST_KEY}) DO UPDATE SET n = rollup_hosts.n + EXCLUDED.n"
)
_TEXT_FIELDS = ("tenant", "kind", "action", "method", "url", "user_agent", "rule", "reason")

# Failures that say "not now" rather than "never": the spool keeps such a batch for later.
_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    pg_errors.ReadOnlySqlTransaction,  # a failover left us on a standby
    pg_errors.UndefinedTable,  # the tables were dropped: re-made on reconnect
)


def connection_params(url: str) -> dict[str, str]:
    """libpq parameters for `url`, with crawlguard's defaults; StoreError if it is unusable."""
    scheme = url.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise StoreError(f"store URL {url!r} is not a postgresql:// URL")
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(f"store URL {_redact(url)!r}: {_first_line(exc)}") from None
    if params.get("password"):
        raise StoreError(
            "store URL holds a password: the config keeps no secrets; "
            "give it to libpq in PGPASSWORD or a password file (PGPASSFILE, ~/.pgpass)"
        )
    params.pop("password", None)
    return {**CONNECT_DEFAULTS, **{k: str(v) for k, v in params.items() if v is not None}}


def _redact(url: str) -> str:
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.partition("@")
    if at and ":" in userinfo:
        return f"{head}{sep}{userinfo.partition(':')[0]}:***@{host}"
    return url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dt(ts: str) -> datetime:
    """A timestamp in any form `normalize_ts` takes -> an aware UTC datetime."""
    return datetime.fromisoformat(normalize_ts(ts)[:-1]).replace(tzinfo=UTC)


def _pg_text(value: str | None) -> str | None:
    """Text PostgreSQL accepts: it refuses NUL characters and lone surrogates (which Python
    strings decoded with surrogateescape may hold); NUL becomes U+2400 (␀), a surrogate its
    backslash escape."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\u2400")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


_SQL = sql.Dialect(ph="%s", ts=_dt, ts_us="(EXTRACT(EPOCH FROM ts) * 1000000)::bigint")
_Rows = list[tuple[Any, ...]]


_TS_AT = tuple(i for i, name in enumerate(FIELDS) if name in ("ts", "first_ts", "last_ts"))


def _record(row: Sequence[Any]) -> ViolationRecord:
    """A row of ``_COLUMNS`` -> the record, its timestamps in the canonical form."""
    values = list(row)
    for i in _TS_AT:
        if values[i] is not None:
            values[i] = canonical_ts(values[i])
    return ViolationRecord(*values)


class _Slot:
    """One connection and the lock that serialises its users."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None

    def drop(self) -> None:
        if self.conn is not None:
            with suppress(Exception):  # closing a broken connection: nothing left to save
                self.conn.close()
            self.conn = None


class PostgresStore:
    """The violation store in PostgreSQL. `connect=False` defers the first connection (and the
    schema check) to the first call or `ping`: the proxy's spool opens it so while PostgreSQL
    is down."""

    def __init__(self, url: str, *, connect: bool = True) -> None:
        self.url = url
        self.display = _redact(url)
        self._params = connection_params(url)
        self._write = _Slot("write")
        self._read = _Slot("read")
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._closed = False
        if connect:
            self.ping()

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(autocommit=True, **self._params)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL store {self.display}: {_first_line(exc)}"
            ) from None
        try:
            mode = conn.execute("SHOW synchronous_commit").fetchone()
            if mode is not None and mode[0] == "off":  # a commit must be durable on return
                conn.execute("SET synchronous_commit = on")
            if not self._migrated:
                with self._migrate_lock:
                    if not self._migrated:
                        self._migrate(conn)
                        self._migrated = True
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise self._error(exc) from None
            raise
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the schema to SCHEMA_VERSION: one transaction under an advisory
        lock, so concurrent starts serialise here and every one sees the finished schema."""
        if self._version(conn) == SCHEMA_VERSION:
            return  # the common case: no lock, no DDL (a read-only role can open the store)
        with conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock("
                "%s::integer, hashtext(coalesce(current_schema(), '')))",
                (ADVISORY_LOCK_CLASS,),
            )
            version = self._version(conn)
            if version == SCHEMA_VERSION:
                return
            if version == 0 and _exists(conn, "violations"):
                raise StoreError(
                    f"the PostgreSQL store {self.display} has a `violations` table that "
                    "crawlguard did not create; give crawlguard its own database or schema "
                    "(e.g. ?options=-csearch_path%3Dcrawlguard)"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            if version < 3:
                for statement in _BUILD_ROLLUPS:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (singleton, version) VALUES (true, %s) "
                "ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
                (SCHEMA_VERSION,),
            )
        log.info("PostgreSQL store %s: schema version %d ready", self.display, SCHEMA_VERSION)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        if not _exists(conn, "schema_version"):
            return 0
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the PostgreSQL store {self.display} has schema version {version}; this "
                f"crawlguard knows up to {SCHEMA_VERSION} (downgrade?)"
            )
        return version

    def _error(self, exc: psycopg.Error) -> StoreError:
        if isinstance(exc, pg_errors.UndefinedTable):
            self._migrated = False  # dropped behind our back: the next connection re-creates
        cls = StoreUnavailable if isinstance(exc, _UNAVAILABLE) else StoreError
        return cls(f"PostgreSQL store {self.display}: {_first_line(exc)}")

    @contextmanager
    def _use(self, slot: _Slot) -> Iterator[psycopg.Connection[Any]]:
        """Lock `slot`, (re)connect it if needed, map driver errors to StoreError."""
        with slot.lock:
            if self._closed:
                raise StoreError("the violation store is closed")
            conn = slot.conn
            if conn is None or conn.closed or conn.broken:
                slot.drop()
                conn = slot.conn = self._connect()
            try:
                yield conn
            except psycopg.Error as exc:
                if conn.closed or conn.broken or isinstance(exc, _UNAVAILABLE):
                    slot.drop()
                raise self._error(exc) from exc

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        with self._use(self._read) as conn:
            yield conn

    def _read_call[T](self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """A read on the read connection; retried once on a fresh connection when the old one
        turns out to be dead (a restarted server), since reads have no side effects."""
        for attempt in (1, 2):
            fresh = self._read.conn is None
            try:
                with self._reading() as conn:
                    return fn(conn)
            except StoreUnavailable:
                if attempt == 2 or fresh:
                    raise
        raise AssertionError("unreachable")

    def ping(self) -> None:
        """Connect the write connection (making the schema current) and check it answers."""
        with self._use(self._write) as conn:
            conn.execute("SELECT 1")

    # -- writes ------------------------------------------------------------------------------

    def record(self, rec: ViolationRecord, robots_body: bytes | None = None) -> None:
        self.record_many([(rec, robots_body)])

    def record_many(
        self,
        items: Sequence[tuple[ViolationRecord, bytes | None]],
        uids: Sequence[str] | None = None,
    ) -> int:
        """Write all `items` in one transaction (group commit), with their roll-ups: all are
        durable on return, or none is written and the error is raised. `uids` (one per item)
        make the write idempotent: a record whose uid is stored already is skipped (and adds
        nothing to the roll-ups). Returns how many were written."""
        if uids is not None and len(uids) != len(items):
            raise ValueError("one uid per record")
        rows: list[list[Any]] = []
        bodies: dict[str, tuple[bytes, datetime]] = {}
        for i, (rec, robots_body) in enumerate(items):
            values = rec.bounded().to_dict()
            ts = _dt(rec.ts)
            for name in _TEXT_FIELDS:
                values[name] = _pg_text(values[name])
            sha = rec.robots_sha256.lower() if rec.robots_sha256 else None
            values["robots_sha256"] = _pg_text(sha)
            values["ts"] = ts
            for name in ("first_ts", "last_ts"):
                if values[name] is not None:
                    values[name] = _dt(values[name])
            uid = uuid.UUID(uids[i] if uids is not None else new_uid())
            rows.append([uid, *(values[f] for f in FIELDS), url_host(values["url"])])
            if robots_body is not None and sha and sha not in bodies:
                bodies[sha] = (robots_body, ts)
        if not rows:
            return 0
        with self._use(self._write) as conn, conn.transaction():
            deltas = rollup.Deltas()
            written = 0
            with conn.cursor() as cur:
                cur.executemany(_INSERT, rows, returning=True)
                while True:
                    for ts, *rest, last in cur.fetchall():  # the rows actually inserted
                        deltas.add(canonical_ts(ts), *rest, canonical_ts(last))
                        written += 1
                    if not cur.nextset():
                        break
                kind_rows = [(*row[:-1], _dt(row[-1])) for row in deltas.kind_rows()]
                cur.executemany(_KIND_UPSERT, kind_rows)
                cur.executemany(_HOST_UPSERT, deltas.host_rows())
            for sha, (body, ts) in sorted(bodies.items()):
                # FOR KEY SHARE: a concurrent prune (FOR UPDATE SKIP LOCKED) cannot delete the
                # body a record of this transaction cites; if it got there first, we insert anew
                if conn.execute(
                    "SELECT 1 FROM robots_bodies WHERE sha256 = %s FOR KEY SHARE", (sha,)
                ).fetchone():
                    continue
                if hashlib.sha256(body).hexdigest() != sha:
                    log.warning("robots.txt body does not hash to %s; body not stored", sha)
                    continue
                conn.execute(
                    "INSERT INTO robots_bodies (sha256, body, first_seen) VALUES (%s, %s, %s) "
                    "ON CONFLICT (sha256) DO NOTHING",
                    (sha, body, ts),
                )
                conn.execute("SELECT 1 FROM robots_bodies WHERE sha256 = %s FOR KEY SHARE", (sha,))
        return written

    def prune_step(self, before: str, limit: int = PRUNE_BATCH_ROWS) -> PruneResult:
        """One short transaction of retention: up to `limit` violations older than `before`;
        once none is left, request-count hours wholly before it; then robots bodies no record
        references. An empty result means the prune is complete."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        bound = _dt(before)
        with self._use(self._write) as conn, conn.transaction():
            deleted = conn.execute(sql.prune_violations_sql(_SQL), (bound, limit)).fetchall()
            if deleted:
                deltas = rollup.Deltas()
                for ts, *rest, last in deleted:
                    deltas.add(canonical_ts(ts), *rest, canonical_ts(last))
                with conn.cursor() as cur:
                    for stmt, params in rollup.subtract(_SQL, deltas):
                        cur.executemany(stmt, params)
                return PruneResult(violations=len(deleted))
            hours = conn.execute(
                sql.prune_request_counts_sql(_SQL), (_dt(hour_bucket(canonical_ts(bound))), limit)
            ).fetchall()
            if hours:
                days = sql.daily_request_rows((canonical_ts(h), *rest) for h, *rest in hours)
                with conn.cursor() as cur:
                    cur.executemany(
                        "UPDATE request_counts_daily SET n = n - %s "
                        "WHERE day = %s AND tenant = %s AND decision = %s",
                        [(n, _dt(day), t, dec) for day, t, dec, n in days],
                    )
                    cur.executemany(
                        "DELETE FROM request_counts_daily "
                        "WHERE day = %s AND tenant = %s AND decision = %s AND n <= 0",
                        [(_dt(day), t, dec) for day, t, dec, _ in days],
                    )
                return PruneResult(request_counts=len(hours))
            # Lock the candidates (skipping bodies a writer holds), then delete them in a new
            # statement, whose snapshot sees records committed while we waited.
            shas = [
                sha
                for (sha,) in conn.execute(
                    "SELECT b.sha256 FROM robots_bodies AS b WHERE NOT EXISTS "
                    "(SELECT 1 FROM violations AS v WHERE v.robots_sha256 = b.sha256) "
                    "LIMIT %s FOR UPDATE SKIP LOCKED",
                    (limit,),
                )
            ]
            if not shas:
                return PruneResult()
            n = conn.execute(
                "DELETE FROM robots_bodies AS b WHERE b.sha256 = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM violations AS v WHERE v.robots_sha256 = b.sha256)",
                (shas,),
            ).rowcount
            return PruneResult(robots_bodies=n)

    def prune(self, before: str, *, batch: int = PRUNE_BATCH_ROWS) -> PruneResult:
        """Retention in full: `prune_step` until nothing is left (each step its own commit)."""
        total = PruneResult()
        while step := self.prune_step(before, batch):
            total += step
        return total

    def add_request_counts(self, counts: Mapping[tuple[str, str], int], ts: str) -> None:
        hour = _dt(hour_bucket(ts))
        rows = []
        for (tenant, decision), n in sorted(counts.items()):  # one lock order for every writer
            if n < 0:
                raise ValueError(f"negative request count for {tenant}/{decision}: {n}")
            if n:
                rows.append((hour, _pg_text(tenant), _pg_text(decision), n))
        if not rows:
            return
        with self._use(self._write) as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO request_counts (hour, tenant, decision, n) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (hour, tenant, decision) DO UPDATE "
                "SET n = request_counts.n + EXCLUDED.n",
                rows,
            )
            cur.executemany(
                "INSERT INTO request_counts_daily (day, tenant, decision, n) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (day, tenant, decision) DO UPDATE "
                "SET n = request_counts_daily.n + EXCLUDED.n",
                [
                    (_dt(day), t, dec, n)
                    for day, t, dec, n in sql.daily_request_rows(
                        (canonical_ts(h), t, dec, n) for h, t, dec, n in rows
                    )
                ],
            )

    # -- reads -------------------------------------------------------------------------------

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

        def run(conn: psycopg.Connection[Any]) -> list[ViolationRecord]:
            return [_record(row) for row in conn.execute(stmt, params)]

        return self._read_call(run)

    def page(self, flt: ViolationFilter, *, limit: int, after: PageKey | None = None) -> Page:
        """Up to `limit` records matching `flt`, ``ts DESC, id DESC`` (a total order, so pages
        neither repeat nor skip a record, whatever share a timestamp), starting after `after`."""
        cursor = None
        if after is not None:
            cursor = ("(ts, id) < (%s, %s)", [_dt(after[0]), after[1]])
        stmt, params = sql.page_sql(_SQL, flt, limit, cursor)

        def run(conn: psycopg.Connection[Any]) -> list[StoredViolation]:
            return [
                StoredViolation(int(row[0]), row[1], _record(row[2:]))
                for row in conn.execute(stmt, params)
            ]

        return sql.page_of(self._read_call(run), limit)

    def summary(self, flt: ViolationFilter, *, buckets: int, top_hosts: int = 10) -> Summary:
        """Counts for a dashboard over [flt.since, flt.until) (both required). Without an
        `action` filter, held records (action `delayed`) are left out: they are not violations;
        `action="delayed"` counts only them."""
        q = sql.summary_query(flt, buckets)

        def run(
            conn: psycopg.Connection[Any],
        ) -> tuple[dict[str, list[int]], list[tuple[str, int]], list[tuple[str, str, int]]]:
            series: dict[str, list[int]] = {}
            with conn.transaction():  # one snapshot for every count below
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                q.add_series(series, conn.execute(*q.series_sql(_SQL)))
                by_kind = [(kind, int(n)) for kind, n in conn.execute(*q.by_kind_sql(_SQL))]
                row = conn.execute(sql.SPAN_SQL).fetchone()
                span = None
                if row is not None and row[0] is not None:
                    span = (epoch_us(canonical_ts(row[0])), epoch_us(canonical_ts(row[1])) + 1)
                hosts = [
                    (tid, host, int(n))
                    for tid, host, n in conn.execute(*q.top_hosts_sql(_SQL, top_hosts, span))
                ]
            return series, by_kind, hosts

        return q.result(*self._read_call(run))

    def latest_violations(self, *, since: str | None = None) -> dict[str, str]:
        """Tenant -> timestamp of its newest violation (held records are not violations)."""
        stmt, params = sql.latest_sql(_SQL, since)

        def run(conn: psycopg.Connection[Any]) -> dict[str, str]:
            return {tid: canonical_ts(ts) for tid, ts in conn.execute(stmt, params)}

        return self._read_call(run)

    def robots_body(self, sha256: str) -> bytes | None:
        def run(conn: psycopg.Connection[Any]) -> bytes | None:
            row = conn.execute(
                "SELECT body FROM robots_bodies WHERE sha256 = %s", (_pg_text(sha256.lower()),)
            ).fetchone()
            return bytes(row[0]) if row else None

        return self._read_call(run)

    def report(self, *, since: str | None = None) -> Report:
        q = sql.report_query(_SQL, since)

        def run(conn: psycopg.Connection[Any]) -> tuple[_Rows, _Rows, _Rows]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                requests = conn.execute(*q.requests).fetchall()
                violations = conn.execute(*q.violations).fetchall()
                held = conn.execute(*q.held).fetchall()
            return requests, violations, held

        return q.result(*self._read_call(run))

    def export_page(
        self, *, since: str | None, after: PageKey | None, limit: int
    ) -> list[tuple[PageKey, str, ViolationRecord]]:
        """Up to `limit` records oldest first (``ts, id``) from `since` on, after `after`:
        ((ts, id), uid, record), for `crawlguard store export`."""
        keyset = None
        if after is not None:
            keyset = ("(ts, id) > (%s, %s)", [_dt(after[0]), after[1]])
        stmt, params = sql.export_sql(_SQL, since, keyset, limit)

        def run(conn: psycopg.Connection[Any]) -> list[tuple[PageKey, str, ViolationRecord]]:
            out = []
            for row in conn.execute(stmt, params):
                rec = _record(row[2:])
                out.append(((rec.ts, int(row[0])), uuid.UUID(str(row[1])).hex, rec))
            return out

        return self._read_call(run)

    def close(self) -> None:
        self._closed = True
        for slot in (self._write, self._read):
            with slot.lock:
                slot.drop()


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    """Whether `table` exists in the schema tables are created in. A catalogue query (the
    statement's snapshot), not to_regclass: the relation cache may still hold a negative entry
    from before another process's migration committed while we waited for the lock."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c "
        "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = %s)",
        (table,),
    ).fetchone()
    return bool(row and row[0])


__all__ = ["SCHEMA_VERSION", "PostgresStore", "connection_params"]
