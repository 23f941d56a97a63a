"""`StoreWriter`: the proxy's single path into the violation store.

Writes from the proxy go through one `StoreWriter`: a bounded queue drained by a single writer
that commits each batch of queued records in one transaction (group commit); every caller
still waits for its own record's commit. When the queue is full the writer refuses new records
with `StoreBacklogged` rather than letting memory and latency grow without bound. The writer
also runs retention (`store.retention_days`): an hourly prune of old records in small batches;
folding (`store.fold_*`, crawlguard.store.fold): a refusal beyond the fold rate is only
counted, and the writer writes (and logs) each interval's folded records when it ends and at
close; and the disk gauges (`store.min_free_bytes`, crawlguard.store.disk).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from crawlguard.policy.records import ViolationRecord, log_line
from crawlguard.store import (
    PRUNE_BATCH_ROWS,
    RETENTION_FIRST_DELAY_SECONDS,
    RETENTION_INTERVAL_SECONDS,
    STORE_BATCH_MAX,
    STORE_QUEUE_MAX,
    PruneResult,
    StoreBacklogged,
    ViolationStore,
    canonical_ts,
)
from crawlguard.store.disk import DISK_CHECK_SECONDS, DiskSpace, disk_space
from crawlguard.store.fold import Folder

if TYPE_CHECKING:
    from crawlguard.admin.metrics import Metrics

log = logging.getLogger("crawlguard")
violation_log = logging.getLogger("crawlguard.violations")


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
        folder: Folder | None = None,
        disk_path: Path | None = None,
        min_free_bytes: int = 0,
        disk_interval: float = DISK_CHECK_SECONDS,
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
        self.folder = folder
        self.disk_path = disk_path
        self.min_free_bytes = min_free_bytes
        self.disk_interval = disk_interval
        self._folding: asyncio.Task[None] | None = None
        self._disk: asyncio.Task[None] | None = None
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
        """Start the writer and, as configured, the retention, folding and disk tasks (in a
        running loop)."""
        self._ensure_writer()
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self.retention_days is not None and self._retention is None:
            self._retention = loop.create_task(
                self._retention_loop(), name="crawlguard-store-retention"
            )
        if self.folder is not None and self._folding is None:
            self._folding = loop.create_task(self._fold_loop(), name="crawlguard-store-fold")
        if self.disk_path is not None and self._disk is None:
            self._disk = loop.create_task(self._disk_loop(), name="crawlguard-store-disk")

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
        return self._enqueue(rec, body)

    def _enqueue(self, rec: ViolationRecord, body: bytes | None) -> asyncio.Future[None]:
        self._ensure_writer()
        assert self._wakeup is not None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
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

    # -- folding -----------------------------------------------------------------------------

    def fold(self, rec: ViolationRecord, body: bytes | None = None) -> bool:
        """True when `rec` was counted into a folded record (the caller writes and logs
        nothing); False when it is to be recorded on its own (`submit`). Without a folder, or
        once closed, nothing folds."""
        if self.folder is None or self._closed:
            return False
        if self.folder.one_by_one(rec, body):
            return False
        if self.metrics is not None:
            self.metrics.violations_folded.labels(rec.tenant).inc(rec.count)
        return True

    def _write_folds(self, items: list[tuple[ViolationRecord, bytes | None]]) -> None:
        """Queue and log folded records. Past `queue_max` too: their refusals were answered
        already, and their number per interval is bounded by the folder."""
        for rec, body in items:
            self._enqueue(rec, body)
            violation_log.info(log_line(rec))

    async def _fold_loop(self) -> None:
        assert self.folder is not None
        while True:
            await asyncio.sleep(max(self.folder.seconds_left(), 0.0) + 0.001)
            self._write_folds(self.folder.take_due())

    # -- disk --------------------------------------------------------------------------------

    async def check_disk(self) -> DiskSpace | None:
        """Measure the store's disk and refresh the gauges (statvfs off the event loop: a hung
        mount must not stall requests). None when it cannot be measured (logged)."""
        if self.disk_path is None:
            return None
        try:
            space = await asyncio.to_thread(disk_space, self.disk_path, self.min_free_bytes)
        except OSError as exc:
            log.warning("cannot measure the store's disk at %s: %s", self.disk_path, exc)
            return None
        if self.metrics is not None:
            self.metrics.store_disk_free_bytes.set(space.free_bytes)
            self.metrics.store_disk_low.set(1 if space.low else 0)
        return space

    async def _disk_loop(self) -> None:
        warned = False  # log once per episode of low space, not every check
        while True:
            space = await self.check_disk()
            low = space is not None and space.low
            if low and not warned and space is not None:
                log.warning("%s", space.warning())
            warned = low
            await asyncio.sleep(self.disk_interval)

    # -- retention ---------------------------------------------------------------------------

    def retention_bound(self, now: datetime | None = None) -> str | None:
        if self.retention_days is None:
            return None
        return canonical_ts((now or datetime.now(UTC)) - timedelta(days=self.retention_days))

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
        """Write every folded record, refuse new records, stop the background tasks, and wait
        until every queued record is written."""
        for name in ("_retention", "_folding", "_disk"):
            task: asyncio.Task[None] | None = getattr(self, name)
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
                setattr(self, name, None)
        if self.folder is not None and not self._closed:
            self._write_folds(self.folder.drain())
        self._closed = True
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._task
            self._task = None


__all__ = ["StoreWriter"]
