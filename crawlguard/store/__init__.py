"""The violation store (SPEC: "Violations"): durable records, robots.txt bodies, request counts.

The proxy writes a record *before* it answers the request, so `record` must be durable when
it returns. Allowed requests never touch the store one by one: the proxy counts them in memory
and flushes hourly buckets with `add_request_counts`.

Timestamps are handed in and out in one canonical form, UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``
(the form of `crawlguard.policy.records.utc_now_iso`), so string order is time order and `since`
filters are plain index range scans.

Layout:

* this module: the `ViolationStore` protocol every backend implements, its errors and result
  types, the time helpers the CLI and the admin API share, and `open_store(url)`;
* `crawlguard.store.sqlite`: `SQLiteStore` (``sqlite:///path``), one file per host;
* `crawlguard.store.postgres`: `PostgresStore` (``postgresql://user@host:5432/db``), shared
  by any number of proxy processes and hosts;
* `crawlguard.store.spool`: `SpoolingStore`, the proxy's wrapper around `PostgresStore`: while
  PostgreSQL is unreachable, records go to a local fsync'd append-only file and are replayed,
  exactly once, when it returns;
* `crawlguard.store.writer`: `StoreWriter`, the proxy's single path into the store: a bounded
  queue with group commit (`StoreBacklogged` when full) and the retention loop.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crawlguard.policy.identity import IdentityError, canonical_host
from crawlguard.policy.records import ViolationRecord

if TYPE_CHECKING:
    from crawlguard.admin.metrics import Metrics

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


class StoreUnavailable(StoreError):
    """A server store (PostgreSQL) cannot be reached or refuses work for now (connection lost,
    server shutting down, read-only, disk full): worth retrying later. With a spool, the proxy
    writes records to the spool instead (crawlguard.store.spool)."""


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

    def record_many(
        self,
        items: Sequence[tuple[ViolationRecord, bytes | None]],
        uids: Sequence[str] | None = None,
    ) -> int | None:
        """`uids` (one per item) make the write idempotent; returns how many were written (a
        spooling store: None)."""
        ...

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

    def export_page(
        self, *, since: str | None, after: PageKey | None, limit: int
    ) -> list[tuple[PageKey, str, ViolationRecord]]:
        """Records oldest first (``ts, id``) after `after`: ((ts, id), uid, record)."""
        ...

    def close(self) -> None: ...


# -- time helpers ------------------------------------------------------------------------------

_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def canonical_ts(dt: datetime) -> str:
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat(timespec="microseconds") + "Z"


def normalize_ts(value: str) -> str:
    """ISO 8601 (with Z, an offset, or naive meaning UTC) -> the canonical stored form."""
    try:
        if _CANONICAL.match(value):  # already canonical (most calls): only check the date
            datetime.fromisoformat(value[:-1])
            return value
        return canonical_ts(datetime.fromisoformat(value.strip()))
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
            return canonical_ts((now or datetime.now(UTC)) - timedelta(seconds=seconds))
        except OverflowError:
            raise ValueError(f"invalid since {value!r}: the duration is too long") from None
    try:
        return normalize_ts(value)
    except ValueError:
        raise ValueError(
            f"invalid since {value!r}: expected ISO 8601 (e.g. 2024-05-01T12:00:00Z) or a "
            "duration back from now such as 7d, 12h, 30m, 1h30m (units s, m, h, d, w)"
        ) from None


_CANONICAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def new_uid() -> str:
    """A record's uid: a UUIDv7 (RFC 9562) as 32 hex digits. Time-ordered, so the unique
    index grows at its end (an import of millions stays fast) and uids sort by write time."""
    ms = time.time_ns() // 1_000_000
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | secrets.randbits(76)
    value = value & ~(0b11 << 62) | 0b10 << 62  # the RFC 9562 variant
    return f"{value:032x}"


def hour_bucket(ts: str) -> str:
    return normalize_ts(ts)[:13] + ":00:00.000000Z"


def epoch_us(ts: str) -> int:
    """Microseconds since the epoch of a timestamp (exact: no float on the way)."""
    dt = datetime.fromisoformat(normalize_ts(ts)[:-1]).replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def from_epoch_us(us: int) -> str:
    return canonical_ts(_EPOCH + timedelta(microseconds=us))


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
    return _canonical_or_none(host)


@functools.lru_cache(maxsize=4096)
def _canonical_or_none(host: str) -> str | None:
    """Cached: a store's records name a few hosts many times (an import of millions)."""
    try:
        return canonical_host(host)
    except (IdentityError, ValueError):
        return None


def store_spool_dir(confdir: str | Path) -> Path:
    """Where the proxy spools violation records while a PostgreSQL store is unreachable:
    ``<proxy.confdir>/store-spool``, beside its CA and pid file (crawlguard.store.spool)."""
    return Path(confdir).expanduser() / "store-spool"


# -- opening a store by URL ---------------------------------------------------------------------


def open_store(
    url: str, *, spool_dir: str | Path | None = None, metrics: Metrics | None = None
) -> ViolationStore:
    """The store `url` names.

    * ``sqlite:///rel/path.db`` (relative to the current directory), ``sqlite:////abs.db``;
    * ``postgresql://user@host:5432/db`` (or ``postgres://``; libpq parameters as a query
      string, e.g. ``?sslmode=require``; no password in the URL: libpq reads ``PGPASSWORD``
      or a password file). The schema is created or migrated on open.

    `spool_dir` (the proxy's, PostgreSQL only): records go to a spool file there while
    PostgreSQL is unreachable and are replayed when it returns; the store then also opens
    while PostgreSQL is down. Without it (the operator commands) an unreachable server is a
    `StoreUnavailable`. `metrics` counts spooled and replayed records.
    """
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
    if scheme in ("postgresql", "postgres"):
        from crawlguard.store.postgres import PostgresStore

        if spool_dir is None:
            return PostgresStore(url)
        from crawlguard.store.spool import SpoolingStore

        return SpoolingStore(PostgresStore(url, connect=False), Path(spool_dir), metrics=metrics)
    if scheme.startswith(("postgresql+", "postgres+")):
        raise StoreError(
            f"store URL {url!r}: write a plain libpq URL, postgresql://user@host:5432/db "
            "(no driver suffix)"
        )
    raise StoreError(
        f"unsupported store URL scheme {scheme!r}; use sqlite:///path/to/file.db or "
        "postgresql://user@host:5432/db"
    )


# The backends, re-exported so `from crawlguard.store import SQLiteStore, StoreWriter` keeps
# working (imported last: they build on the definitions above). PostgreSQL's modules load
# psycopg, so they are imported by `open_store` only when a postgresql:// URL asks for them.
from crawlguard.store.sqlite import SCHEMA_VERSION, SQLiteStore  # noqa: E402
from crawlguard.store.writer import StoreWriter  # noqa: E402

__all__ = [
    "PRUNE_BATCH_ROWS",
    "SCHEMA_VERSION",
    "Page",
    "PageKey",
    "PruneResult",
    "Report",
    "SQLiteStore",
    "StoreBacklogged",
    "StoreError",
    "StoreUnavailable",
    "StoreWriter",
    "StoredViolation",
    "Summary",
    "TenantReport",
    "ViolationFilter",
    "ViolationStore",
    "bucket_width_us",
    "canonical_ts",
    "epoch_us",
    "from_epoch_us",
    "hour_bucket",
    "new_uid",
    "normalize_ts",
    "open_store",
    "parse_since",
    "store_spool_dir",
    "url_host",
]
