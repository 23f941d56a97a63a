"""`SpoolingStore`: the proxy's PostgreSQL store, durable while PostgreSQL is unreachable.

SPEC "Violations": a record is durable before the response is sent. When PostgreSQL cannot
take a batch (server down, connection lost, read-only, disk full: `StoreUnavailable`), the
batch goes to a local spool file instead, fsync'd before `record_many` returns, so the request
is still answered only after its record is on disk. From then on every record goes to the
spool, in order, until a background thread has reconnected (back-off 0.5 s doubling to 30 s,
with jitter) and replayed the spool into PostgreSQL, oldest first, in batches; the spool is
then truncated and records go to PostgreSQL directly again.

Exactly once: every record gets a uid before its first write attempt and keeps it in the
spool; PostgreSQL stores each uid once (``ON CONFLICT (uid) DO NOTHING``). A batch whose
COMMIT outcome was unknown, or a replay interrupted by a crash and run again, writes nothing
twice.

The spool directory (``<proxy.confdir>/store-spool``, next to the pid file and the CA) holds
one file per process, ``spool-<ns>-<pid>.jsonl``, held under an exclusive ``flock`` while the
process runs. A file nobody holds was left by a process that died (SIGKILL, power loss): the
next process to start with that directory adopts it and replays it before its own records.
A graceful stop removes an empty file and keeps a non-empty one for the next start.

File format, JSON lines, append-only: ``{"uid": "<hex>", "record": {...}}`` per record, and
``{"body": "<sha256>", "data": "<base64>"}`` once per robots.txt body per file, before the
first record that cites it. A torn last line (a crash mid-write: that request was never
answered) is ignored; an unreadable line elsewhere is logged and skipped.

While PostgreSQL is down, reads (admin API) fail fast with `StoreUnavailable`, retention
waits, and request counts are summed in memory and written when it is back (they were never
per-request durable: the proxy flushes them every few seconds).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawlguard.policy.records import ViolationRecord
from crawlguard.store import (
    PRUNE_BATCH_ROWS,
    Page,
    PageKey,
    PruneResult,
    Report,
    StoreError,
    StoreUnavailable,
    Summary,
    ViolationFilter,
    hour_bucket,
    new_uid,
    normalize_ts,
)

if TYPE_CHECKING:
    from crawlguard.admin.metrics import Metrics
    from crawlguard.store.postgres import PostgresStore

log = logging.getLogger("crawlguard")

SPOOL_PATTERN = "spool-*.jsonl"
REPLAY_BATCH = 500
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
STILL_DOWN_LOG_SECONDS = 300.0
CLOSE_WAIT_SECONDS = 30.0

_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolFile:
    """This process's spool: created under a temporary name, locked, then renamed into place,
    so no other process ever sees it unlocked."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"spool-{time.time_ns():020d}-{os.getpid()}.jsonl"
        temp = directory / f".{name}.new"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path = directory / name
            os.rename(temp, self.path)
            _fsync_dir(directory)
        except BaseException:
            os.close(fd)
            with suppress(OSError):
                temp.unlink()
            raise
        self.directory = directory
        self.fd: int | None = fd
        self.size = 0
        self.bodies: set[str] = set()  # robots bodies written since the last truncate
        self.records = 0  # records in the file now
        self.cuts = 0  # failed appends cut back: a reader past the cut must start over

    def append(self, entries: Sequence[tuple[str, ViolationRecord, bytes | None]]) -> None:
        """Append and fdatasync; on failure the file is cut back to where it was, so a
        half-written batch never reaches a reader."""
        assert self.fd is not None
        lines: list[bytes] = []
        bodies: set[str] = set()
        for uid, rec, body in entries:
            sha = rec.robots_sha256.lower() if rec.robots_sha256 else None
            if body is not None and sha and sha not in self.bodies and sha not in bodies:
                data = base64.b64encode(body).decode("ascii")
                lines.append(_line({"body": sha, "data": data}))
                bodies.add(sha)
            lines.append(_line({"uid": uid, "record": rec.to_dict()}))
        data = b"".join(lines)
        start = self.size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            _fdatasync(self.fd)
        except OSError:
            self.cuts += 1
            with suppress(OSError):
                os.ftruncate(self.fd, start)
            raise
        self.size += len(data)
        self.records += len(entries)
        self.bodies |= bodies

    def truncate(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        _fdatasync(self.fd)
        self.size = 0
        self.records = 0
        self.bodies.clear()

    def close(self) -> None:
        """Release the file: removed when empty, kept (for the next start) otherwise."""
        if self.fd is None:
            return
        if self.size == 0:
            with suppress(OSError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


class Orphan:
    """A spool file left by a process that is gone, locked by us until replayed."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def remove(self) -> None:
        with suppress(FileNotFoundError):
            self.path.unlink()
        with suppress(OSError):
            _fsync_dir(self.path.parent)
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def adopt_orphans(directory: Path, own: Path) -> list[Orphan]:
    """Spool files in `directory` no live process holds, oldest first; each is locked for us.
    Leftover temporary files (a crash between create and rename: empty) are removed."""
    orphans: list[Orphan] = []
    for path in sorted(directory.glob(".spool-*.new")):
        fd = _try_lock(path)
        if fd is not None:
            with suppress(OSError):
                path.unlink()
            os.close(fd)
    for path in sorted(directory.glob(SPOOL_PATTERN)):
        if path == own:
            continue
        fd = _try_lock(path)
        if fd is not None:
            orphans.append(Orphan(path, fd))
    return orphans


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a live process holds it
        os.close(fd)
        return None
    return fd


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


class _Stopped(Exception):
    """close() asked the replayer to stop between batches."""


class SpoolingStore:
    """A `PostgresStore` with a spool (see the module docstring). Same protocol."""

    def __init__(
        self,
        inner: PostgresStore,
        directory: Path,
        *,
        metrics: Metrics | None = None,
        retry_min: float = RETRY_MIN_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
        replay_batch: int = REPLAY_BATCH,
    ) -> None:
        self.inner = inner
        self.directory = directory
        self.metrics = metrics
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.replay_batch = replay_batch
        try:
            self._spool = SpoolFile(directory)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store spool in {directory}: {exc.strerror or exc}"
            ) from None
        try:
            self._orphans = adopt_orphans(directory, self._spool.path)
        except OSError as exc:
            self._spool.close()
            raise StoreError(
                f"cannot read the store spool in {directory}: {exc.strerror or exc}"
            ) from None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._spooling = bool(self._orphans)  # True: new records go to the spool
        self._down: str | None = None  # why PostgreSQL is unreachable, while it is
        self._down_logged = 0.0
        self._replayed_offset = 0  # bytes of our own spool already in PostgreSQL
        self._bodies: dict[str, bytes] = {}  # robots bodies read from our own spool
        self._counts: Counter[tuple[str, str, str]] = Counter()  # (hour, tenant, decision)
        try:
            inner.ping()
        except StoreUnavailable as exc:
            self._went_down(exc)
        except BaseException:
            self._release_files()
            raise
        if self._orphans:
            log.warning(
                "store spool %s: %d spool file(s) left by an earlier process; replaying them "
                "into PostgreSQL",
                directory,
                len(self._orphans),
            )
        with self._lock:
            if self._spooling or self._down is not None:
                self._start_replayer()

    @property
    def spooling(self) -> bool:
        """True while records go to the spool (PostgreSQL down, or a replay not finished)."""
        return self._spooling

    @property
    def spool_path(self) -> Path:
        return self._spool.path

    # -- writes ------------------------------------------------------------------------------

    def record(self, rec: ViolationRecord, robots_body: bytes | None = None) -> None:
        self.record_many([(rec, robots_body)])

    def record_many(
        self,
        items: Sequence[tuple[ViolationRecord, bytes | None]],
        uids: Sequence[str] | None = None,
    ) -> None:
        """Durable on return: committed in PostgreSQL, or fsync'd to the spool."""
        if not items:
            return
        for rec, _ in items:
            normalize_ts(rec.ts)  # a bad record fails the batch before anything is written
        ids = list(uids) if uids is not None else [new_uid() for _ in items]
        with self._lock:
            if self._closed:
                raise StoreError("the violation store is closed")
            if not self._spooling:
                try:
                    self.inner.record_many(items, ids)
                    return
                except StoreUnavailable as exc:
                    self._went_down(exc)
            entries = [(uid, rec, body) for uid, (rec, body) in zip(ids, items, strict=True)]
            try:
                self._spool.append(entries)
            except OSError as exc:
                raise StoreError(
                    f"the store spool {self._spool.path} cannot be written (PostgreSQL is "
                    f"unavailable or still replaying it): {exc.strerror or exc}"
                ) from None
            if self.metrics is not None:
                self.metrics.store_spooled.inc(len(entries))

    def add_request_counts(self, counts: Mapping[tuple[str, str], int], ts: str) -> None:
        with self._lock:
            if self._down is None:
                try:
                    self.inner.add_request_counts(counts, ts)
                    return
                except StoreUnavailable as exc:
                    self._went_down(exc)
            hour = hour_bucket(ts)
            for (tenant, decision), n in counts.items():
                if n < 0:
                    raise ValueError(f"negative request count for {tenant}/{decision}: {n}")
                if n:
                    self._counts[(hour, tenant, decision)] += n

    def prune_step(self, before: str, limit: int = PRUNE_BATCH_ROWS) -> PruneResult:
        return self._direct(self.inner.prune_step, before, limit)

    def prune(self, before: str, *, batch: int = PRUNE_BATCH_ROWS) -> PruneResult:
        total = PruneResult()
        while step := self.prune_step(before, batch):
            total += step
        return total

    # -- reads: PostgreSQL's view (spooled records show once replayed) -------------------------

    def _direct[T](self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        down = self._down
        if down is not None:
            raise StoreUnavailable(
                f"{down} (violation records are spooled in {self.directory} and written to "
                "PostgreSQL when it is back)"
            )
        return fn(*args, **kw)

    def query(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> list[ViolationRecord]:
        return self._direct(self.inner.query, tenant=tenant, kind=kind, since=since, limit=limit)

    def page(self, flt: ViolationFilter, *, limit: int, after: PageKey | None = None) -> Page:
        return self._direct(self.inner.page, flt, limit=limit, after=after)

    def summary(self, flt: ViolationFilter, *, buckets: int, top_hosts: int = 10) -> Summary:
        return self._direct(self.inner.summary, flt, buckets=buckets, top_hosts=top_hosts)

    def latest_violations(self, *, since: str | None = None) -> dict[str, str]:
        return self._direct(self.inner.latest_violations, since=since)

    def robots_body(self, sha256: str) -> bytes | None:
        return self._direct(self.inner.robots_body, sha256)

    def report(self, *, since: str | None = None) -> Report:
        return self._direct(self.inner.report, since=since)

    def export_page(
        self, *, since: str | None, after: PageKey | None, limit: int
    ) -> list[tuple[PageKey, str, ViolationRecord]]:
        return self._direct(self.inner.export_page, since=since, after=after, limit=limit)

    # -- outage and replay -------------------------------------------------------------------

    def _went_down(self, exc: StoreError) -> None:
        with self._lock:
            self._spooling = True
            if self._down is None:
                log.error(
                    "%s; violation records go to the spool %s until PostgreSQL is back",
                    exc,
                    self._spool.path,
                )
                self._down_logged = time.monotonic()
            self._down = str(exc)
            self._start_replayer()

    def _start_replayer(self) -> None:
        """(Lock held.) One replayer thread at a time; it ends once the spool is drained."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._replay_loop, name="crawlguard-store-spool", daemon=True
            )
            self._thread.start()

    def _replay_loop(self) -> None:
        delay = self.retry_min
        while not self._stop.is_set():
            try:
                if self._replay():
                    return
            except _Stopped:
                return
            except StoreUnavailable as exc:
                with self._lock:
                    self._down = str(exc)
                if time.monotonic() - self._down_logged >= STILL_DOWN_LOG_SECONDS:
                    self._down_logged = time.monotonic()
                    log.warning(
                        "PostgreSQL store still unavailable (%s); %d records wait in the spool %s",
                        exc,
                        self._spool.records,
                        self._spool.path,
                    )
            except Exception:
                log.exception("replaying the store spool failed; retrying")
            self._stop.wait(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, self.retry_max)

    def _replay(self) -> bool:
        """Reconnect, replay orphans and then our own spool; True once drained (spooling off)."""
        self.inner.ping()
        replayed = 0
        while self._orphans:
            orphan = self._orphans[0]
            n = self._replay_file(orphan.path, 0, {})
            orphan.remove()
            self._orphans.pop(0)
            replayed += n
            log.info("store spool: replayed %d records from %s", n, orphan.path)
        # catch up without the lock (the writer keeps appending), then the tail with it
        replayed += self._replay_own()
        with self._lock:
            replayed += self._replay_own()
            self._flush_counts()
            self._spool.truncate()
            self._replayed_offset = 0
            self._bodies.clear()
            was_down = self._down
            self._down = None
            self._spooling = False
            self._thread = None
        if was_down is not None or replayed:
            log.warning(
                "PostgreSQL store is back: %d spooled records replayed; writing directly again",
                replayed,
            )
        return True

    def _replay_own(self) -> int:
        cuts = self._spool.cuts

        def committed(offset: int) -> None:
            # a failed append was cut back meanwhile: offsets past it mean nothing now, so
            # start over (what is replayed again is skipped by its uid)
            self._replayed_offset = offset if self._spool.cuts == cuts else 0

        return self._replay_file(self._spool.path, self._replayed_offset, self._bodies, committed)

    def _replay_file(
        self,
        path: Path,
        start: int,
        bodies: dict[str, bytes],
        committed: Callable[[int], None] | None = None,
    ) -> int:
        """Replay the complete lines of `path` from byte `start` in batches; returns the records
        replayed. `committed` hears the offset after each committed batch, so an interrupted
        replay resumes there (and repeating a batch is harmless anyway)."""
        batch: list[_Record] = []
        replayed = 0
        offset = start
        with path.open("rb") as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn or still being written: never acknowledged, not ours yet
                at, offset = offset, offset + len(line)
                entry = _parse(line)
                if isinstance(entry, _Body):
                    bodies[entry.sha256] = entry.data
                elif isinstance(entry, _Record):
                    batch.append(entry)
                else:
                    log.error("store spool %s: unreadable line at byte %d skipped", path, at)
                if len(batch) >= self.replay_batch:
                    replayed += self._write_batch(batch, bodies)
                    batch = []
                    if committed is not None:
                        committed(offset)
                    if self._stop.is_set():
                        raise _Stopped
        if batch:
            replayed += self._write_batch(batch, bodies)
        if committed is not None:
            committed(offset)
        return replayed

    def _write_batch(self, batch: list[_Record], bodies: dict[str, bytes]) -> int:
        def body(rec: ViolationRecord) -> bytes | None:
            return bodies.get(rec.robots_sha256.lower()) if rec.robots_sha256 else None

        try:
            self.inner.record_many([(e.rec, body(e.rec)) for e in batch], [e.uid for e in batch])
            written = len(batch)
        except StoreUnavailable:
            raise
        except (StoreError, ValueError, TypeError):
            written = 0  # one record PostgreSQL refuses for good must not wedge the replay
            for uid, rec in batch:
                try:
                    self.inner.record_many([(rec, body(rec))], [uid])
                    written += 1
                except StoreUnavailable:
                    raise
                except (StoreError, ValueError, TypeError) as exc:
                    log.error(
                        "spooled record %s cannot be stored and is dropped from the spool "
                        "(it is in the JSON violation log): %s; record: %s",
                        uid,
                        exc,
                        json.dumps(rec.to_dict(), separators=(",", ":")),
                    )
                    if self.metrics is not None:
                        self.metrics.store_errors.inc()
        if self.metrics is not None:
            self.metrics.store_replayed.inc(written)
        return written

    def _flush_counts(self) -> None:
        """(Lock held.) Request counts summed while PostgreSQL was down."""
        by_hour: dict[str, dict[tuple[str, str], int]] = {}
        for (hour, tenant, decision), n in self._counts.items():
            by_hour.setdefault(hour, {})[(tenant, decision)] = n
        for hour, counts in sorted(by_hour.items()):
            self.inner.add_request_counts(counts, hour)
            for tenant, decision in counts:
                del self._counts[(hour, tenant, decision)]

    # -- shutdown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the replayer and release the spool: an empty one is removed, records not yet
        replayed stay in it for the next start."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(CLOSE_WAIT_SECONDS)
        with self._lock:
            if self._spool.size:
                log.warning(
                    "PostgreSQL store: %d spooled records are kept in %s; the next start "
                    "replays them",
                    self._spool.records,
                    self._spool.path,
                )
            lost = sum(self._counts.values())
            if lost:
                log.warning("PostgreSQL store down at stop: %d request counts not written", lost)
            self._release_files()
        self.inner.close()

    def _release_files(self) -> None:
        self._spool.close()
        for orphan in self._orphans:
            orphan.release()


@dataclass(frozen=True, slots=True)
class _Record:
    uid: str
    rec: ViolationRecord

    def __iter__(self) -> Iterator[Any]:
        return iter((self.uid, self.rec))


@dataclass(frozen=True, slots=True)
class _Body:
    sha256: str
    data: bytes


def _parse(line: bytes) -> _Record | _Body | None:
    """A spool line, or None if it cannot be read."""
    try:
        obj = json.loads(line)
        if "body" in obj:
            return _Body(str(obj["body"]), base64.b64decode(obj["data"], validate=True))
        return _Record(str(obj["uid"]), ViolationRecord.from_dict(obj["record"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


__all__ = ["SpoolFile", "SpoolingStore", "adopt_orphans"]
