"""The registry's database access, SQLite or PostgreSQL, behind one small interface.

Both run every change as one serialised transaction (SQLite `BEGIN IMMEDIATE`; PostgreSQL a
transaction-scoped advisory lock per schema), so audit ids are handed out in commit order and
`version()` (the newest audit id) never skips a change another process commits later. Reads
are one snapshot (a running set never mixes two versions). SQL is written with `?`
placeholders; the PostgreSQL side turns them into `%s`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from crawlguard.tenancy.records import TenancyError

BUSY_TIMEOUT_SECONDS = 10.0
NOTIFY_CHANNEL = "crawlguard_tenancy"
"""PostgreSQL channels are per database, not per schema: the payload names the schema whose
registry changed, and a listener acts only on its own (tests run many schemas in one database)."""
ADVISORY_LOCK_CLASS = 0x43475454  # "CGTT": one writer per schema at a time

Row = tuple[Any, ...]
# Columns of tenancy_tenants added after its first release: made on open where missing (a
# constant default, so existing rows get it without a rewrite). `weight`: issue 22.
ADDED_SQLITE = (("weight", "REAL NOT NULL DEFAULT 1"),)
ADDED_PG = (("weight", "double precision NOT NULL DEFAULT 1"),)
_LOCK = "SELECT pg_advisory_xact_lock(%s::integer, hashtext(coalesce(current_schema(), '')))"


class Duplicate(Exception):
    """A unique key refused a row: another writer won a race the checks could not see."""


class Tx:
    """One transaction's statements."""

    def __init__(self, conn: Any, *, pg: bool) -> None:
        self._conn = conn
        self._pg = pg

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._pg:
            cur = self._conn.execute(sql.replace("?", "%s"), params)
            return list(cur.fetchall()) if cur.description else []
        return list(self._conn.execute(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None


class Database(Protocol):
    where: str  # for messages: the file or the redacted URL

    def write(self) -> Any: ...  # context manager -> Tx, one serialised transaction
    def read(self) -> Any: ...  # context manager -> Tx, one snapshot
    def close(self) -> None: ...


_SQLITE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tenancy_tenants (
        id              TEXT PRIMARY KEY,
        product_tokens  TEXT NOT NULL,
        mode            TEXT NOT NULL,
        pacing          TEXT NOT NULL,
        max_concurrency INTEGER,
        max_rps         REAL,
        allow_hosts     TEXT NOT NULL,
        deny_hosts      TEXT NOT NULL,
        token_sha256    TEXT NOT NULL,
        disabled        INTEGER NOT NULL DEFAULT 0,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        weight          REAL NOT NULL DEFAULT 1
    )""",
    """CREATE TABLE IF NOT EXISTS tenancy_retired (
        tenant  TEXT NOT NULL,
        digest  TEXT NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (tenant, digest)
    )""",
    """CREATE TABLE IF NOT EXISTS tenancy_tokens (
        token  TEXT PRIMARY KEY,
        tenant TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tenancy_tokens_tenant ON tenancy_tokens (tenant)",
    """CREATE TABLE IF NOT EXISTS tenancy_audit (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      TEXT NOT NULL,
        actor   TEXT NOT NULL,
        tenant  TEXT NOT NULL,
        action  TEXT NOT NULL,
        changes TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tenancy_audit_tenant ON tenancy_audit (tenant, id)",
]


class SQLiteDatabase:
    """Its own connection to the store's file (WAL, busy timeout), shared by this process's
    threads under a lock."""

    def __init__(self, path: str) -> None:
        self.where = path
        self._lock = threading.Lock()
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise TenancyError(
                503, None, f"cannot open the tenant registry {path!r}: {exc}"
            ) from None
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SQLITE_SCHEMA:
                conn.execute(statement)
            have = {row[1] for row in conn.execute("PRAGMA table_info(tenancy_tenants)")}
            for column, declaration in ADDED_SQLITE:
                if column not in have:
                    conn.execute(f"ALTER TABLE tenancy_tenants ADD COLUMN {column} {declaration}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise TenancyError(
                503, None, f"cannot use the tenant registry {path!r}: {exc}"
            ) from None
        self._conn: sqlite3.Connection | None = conn

    @contextmanager
    def _tx(self, begin: str) -> Iterator[Tx]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise TenancyError(503, None, "the tenant registry is closed")
            try:
                conn.execute(begin)
                try:
                    yield Tx(conn, pg=False)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as exc:
                raise Duplicate(str(exc)) from exc
            except sqlite3.Error as exc:
                raise TenancyError(503, None, f"tenant registry {self.where!r}: {exc}") from exc

    def write(self) -> Any:
        return self._tx("BEGIN IMMEDIATE")

    def read(self) -> Any:
        return self._tx("BEGIN")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tenancy_tenants (
        id              text COLLATE "C" PRIMARY KEY,
        product_tokens  text NOT NULL,
        mode            text NOT NULL,
        pacing          text NOT NULL,
        max_concurrency integer,
        max_rps         double precision,
        allow_hosts     text NOT NULL,
        deny_hosts      text NOT NULL,
        token_sha256    text NOT NULL,
        disabled        smallint NOT NULL DEFAULT 0,
        created_at      text NOT NULL,
        updated_at      text NOT NULL,
        weight          double precision NOT NULL DEFAULT 1
    )""",
    """CREATE TABLE IF NOT EXISTS tenancy_retired (
        tenant  text COLLATE "C" NOT NULL,
        digest  text NOT NULL,
        expires double precision NOT NULL,
        PRIMARY KEY (tenant, digest)
    )""",
    """CREATE TABLE IF NOT EXISTS tenancy_tokens (
        token  text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tenancy_tokens_tenant ON tenancy_tokens (tenant)",
    """CREATE TABLE IF NOT EXISTS tenancy_audit (
        id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ts      text NOT NULL,
        actor   text NOT NULL,
        tenant  text COLLATE "C" NOT NULL,
        action  text NOT NULL,
        changes text NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tenancy_audit_tenant ON tenancy_audit (tenant, id)",
    *(f"ALTER TABLE tenancy_tenants ADD COLUMN IF NOT EXISTS {c} {d}" for c, d in ADDED_PG),
]


class PostgresDatabase:
    """Its own connection to the store's database and schema (`store.url`, its search_path
    included), re-made after a failure; every change sends a NOTIFY in its transaction."""

    def __init__(self, url: str) -> None:
        from crawlguard.store import StoreError
        from crawlguard.store.postgres import connection_params

        try:
            self.params = connection_params(url)
        except StoreError as exc:
            raise TenancyError(400, None, str(exc)) from None
        host, port = self.params.get("host", ""), self.params.get("port", "")
        self.where = f"postgresql://{host}:{port}/{self.params.get('dbname', '')}"
        self._lock = threading.Lock()
        self._conn: Any = None
        self._ready = False
        self._closed = False  # connected at first use: a proxy starts while PostgreSQL is down

    def connect(self) -> Any:
        """A new autocommit connection (the sync's listener makes its own with this)."""
        import psycopg

        try:
            return psycopg.connect(autocommit=True, **self.params)
        except psycopg.Error as exc:
            raise TenancyError(
                503, None, f"cannot connect to the tenant registry {self.where}: {_first(exc)}"
            ) from None

    def _create(self, conn: Any) -> None:
        """The tables, and the columns later versions added (`ADDED_PG`), made if missing: a
        registry made by an older crawlguard is upgraded the first time this one opens it."""
        exists = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n "
            "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = "
            "ANY(%s)",
            (["tenancy_tenants", "tenancy_retired", "tenancy_tokens", "tenancy_audit"],),
        ).fetchone()
        columns = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = 'tenancy_tenants' AND column_name = ANY(%s)",
            ([column for column, _ in ADDED_PG],),
        ).fetchone()
        if exists and exists[0] == 4 and columns and columns[0] == len(ADDED_PG):
            return
        with conn.transaction():
            conn.execute(
                _LOCK,
                (ADVISORY_LOCK_CLASS,),
            )
            for statement in _PG_SCHEMA:
                conn.execute(statement)

    @contextmanager
    def _use(self) -> Iterator[Any]:
        import psycopg
        from psycopg import errors as pg_errors

        with self._lock:
            if self._closed:
                raise TenancyError(503, None, "the tenant registry is closed")
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._drop()
                conn = self.connect()
                try:
                    if not self._ready:
                        self._create(conn)
                        self._ready = True
                except psycopg.Error as exc:
                    conn.close()
                    raise TenancyError(
                        503, None, f"tenant registry {self.where}: {_first(exc)}"
                    ) from None
                self._conn = conn
            try:
                yield self._conn
            except pg_errors.UniqueViolation as exc:
                raise Duplicate(str(exc)) from exc
            except psycopg.Error as exc:
                if isinstance(exc, pg_errors.UndefinedTable):
                    self._ready = False
                if (
                    self._conn.closed
                    or self._conn.broken
                    or isinstance(
                        exc,
                        psycopg.OperationalError
                        | psycopg.InterfaceError
                        | pg_errors.UndefinedTable,
                    )
                ):
                    self._drop()
                raise TenancyError(
                    503, None, f"tenant registry {self.where}: {_first(exc)}"
                ) from exc

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None

    @contextmanager
    def write(self) -> Iterator[Tx]:
        with self._use() as conn, conn.transaction():
            conn.execute(
                _LOCK,
                (ADVISORY_LOCK_CLASS,),
            )
            yield Tx(conn, pg=True)
            conn.execute("SELECT pg_notify(%s, coalesce(current_schema(), ''))", (NOTIFY_CHANNEL,))

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._use() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield Tx(conn, pg=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` store URL, as `crawlguard.store.open_store` reads it."""
    rest = url.partition("://")[2]
    path = rest[1:]
    if not rest.startswith("/") or not path or path.endswith("/") or "?" in path:
        raise TenancyError(400, None, f"store URL {url!r} names no SQLite database file")
    return path


def open_database(url: str) -> Database:
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SQLiteDatabase(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise TenancyError(
        400, None, f"store URL {url!r}: the tenant registry needs sqlite or postgresql"
    )
