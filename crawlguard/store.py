"""The violation store (SPEC: "Violations"): durable records, robots.txt bodies, request counts.

The proxy writes a record *before* it answers the request, so `record` must be durable when
it returns. Allowed requests never touch the store one by one: the proxy counts them in memory
and flushes hourly buckets with `add_request_counts`.

Timestamps are stored in one canonical form, UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the form of
`crawlguard.records.utc_now_iso`), so string order is time order and `since` filters are plain
index range scans.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from crawlguard.records import FIELDS, ViolationRecord

log = logging.getLogger("crawlguard")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 10.0  # `run --workers N` processes share one SQLite file


class StoreError(Exception):
    """The store cannot be opened or used; the message is phrased for the operator."""


@dataclass(frozen=True, slots=True)
class TenantReport:
    requests: dict[str, int] = field(default_factory=dict)  # decision -> requests
    violations: dict[str, int] = field(default_factory=dict)  # kind -> records

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


class ViolationStore(Protocol):
    def record(self, rec: ViolationRecord, robots_body: bytes | None = None) -> None: ...

    def add_request_counts(self, counts: Mapping[tuple[str, str], int], ts: str) -> None: ...

    def query(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> list[ViolationRecord]: ...

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


# -- SQLite ------------------------------------------------------------------------------------

_SCHEMA = f"""
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
    reason        TEXT
);
CREATE INDEX IF NOT EXISTS violations_tenant_ts ON violations (tenant, ts);
CREATE INDEX IF NOT EXISTS violations_kind_ts ON violations (kind, ts);
CREATE INDEX IF NOT EXISTS violations_ts ON violations (ts);
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
PRAGMA user_version = {SCHEMA_VERSION};
"""

_COLUMNS = ", ".join(FIELDS)
_INSERT = f"INSERT INTO violations ({_COLUMNS}) VALUES ({', '.join('?' for _ in FIELDS)})"


class SQLiteStore:
    """One connection shared by threads under a lock: writes are serial anyway (one writer per
    SQLite file), and the proxy writes from a single worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._known_bodies: set[str] = set()
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
                try:
                    conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
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
        values = rec.to_dict()
        values["ts"] = normalize_ts(rec.ts)
        sha = rec.robots_sha256.lower() if rec.robots_sha256 else None
        body = None
        if robots_body is not None and sha and sha not in self._known_bodies:
            if hashlib.sha256(robots_body).hexdigest() == sha:
                body = robots_body
            else:  # keep the record; a body under the wrong address would mislead the audit
                log.warning("robots.txt body does not hash to %s; body not stored", sha)
        with self._connection(write=True) as conn:
            conn.execute(_INSERT, [values[f] for f in FIELDS])
            if body is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO robots_bodies (sha256, body, first_seen) "
                    "VALUES (?, ?, ?)",
                    (sha, body, values["ts"]),
                )
        if body is not None and sha:
            self._known_bodies.add(sha)  # only once committed: a rollback must not hide it

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
                "GROUP BY tenant, kind ORDER BY tenant, COUNT(*) DESC, kind",
                (bound or "",),
            ):
                entry(tid).violations[kind] = int(n)
        return Report(since=bound, tenants=tenants)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


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
    "Report",
    "SQLiteStore",
    "StoreError",
    "TenantReport",
    "ViolationStore",
    "normalize_ts",
    "open_store",
    "parse_since",
]
