"""robots.txt parsing in worker processes, queued fairly per tenant, never in the proxy's thread.

Processes: parsing is pure Python; in a thread it holds the interpreter lock, and the event loop
that serves every tenant waits for it (measured with `benchmarks/bystander.py`: 100 host names
of a 500 KiB file, parsed in threads, pushed a bystander tenant's p50 to 111 ms and p99 to
336 ms). In a worker the loop pays only the unpickling of the result (6-10 ms for a 500 KiB
file of 30,000 rules).

A fair queue: with one FIFO in front of one worker, one tenant asking for 60 sites whose
robots.txt is 500 KiB made another tenant's first request to a new site wait 31-34 s (20.6 s in
benchmarks/bystander.py's parse-queue phase on 2 cores; 0.4 s with this queue). Here each
tenant has its own FIFO, the tenants with work waiting are served round-robin, and at most
`workers` parses run at once. A parse several tenants wait for (one origin, one fetch) is
queued for each of them and runs at whichever turn comes first, so no tenant can park another
tenant's site at the end of its own queue. How long a request waits is bounded by the robots
cache (`robots.parse_timeout`); the parse itself is never dropped, its result is cached.

A dead worker breaks its `ProcessPoolExecutor`: the pool is rebuilt (at once after the first
failure, then after 0.5 s, 1 s, … 30 s while failures come in a row), the parses it held are
retried once, and queued parses wait meanwhile. Never a fallback to parsing in the proxy's
thread: that turned two deaths into a stall of every tenant for the rest of the process's life.

The workers start on first use (spawn: mitmproxy's process has threads, fork would copy their
locks) and exit with their owner, even a SIGKILLed one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from crawlguard.policy.robots import RobotsRules

if TYPE_CHECKING:
    from crawlguard.admin.metrics import Metrics

log = logging.getLogger("crawlguard")

MAX_DEFAULT_WORKERS = 4
BACKOFF_BASE = 0.5  # seconds before the second rebuild in a row; doubles per failure
BACKOFF_MAX = 30.0
ATTEMPTS = 2  # a parse whose worker died is retried once: a body that kills twice fails closed

Tenant = str | None
"""The tenant a parse is queued for (None: no tenant, e.g. a cache used outside the proxy)."""


def default_workers() -> int:
    """One parser per core, 1 to 4: parses are bursts of CPU, and the event loop needs a core."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


class ParserUnavailable(Exception):
    """No worker process could run this parse (the pool died or could not start, or closed)."""


def _follow_parent(parent: int) -> None:
    """Worker initializer: exit when the proxy process is gone (even SIGKILLed), so no parser
    process outlives it. Linux asks the kernel (PR_SET_PDEATHSIG); elsewhere a thread polls."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() == parent:
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def _parse(body: bytes) -> RobotsRules:
    return RobotsRules.parse(body)


def _worker_pid(_: object) -> int:
    return os.getpid()


@dataclass(eq=False)
class ParseJob:
    """One unit of work for a worker; `future` resolves when it lands (never in-thread)."""

    fn: Callable[[Any], Any]
    arg: Any  # the body; dropped once the job has landed
    future: asyncio.Future[Any]
    queued_at: float
    generation: int
    owners: set[Tenant] = field(default_factory=set)  # tenants whose queues hold it
    started: bool = False
    attempts: int = 0


class RobotsParsePool:
    """Worker processes behind per-tenant FIFOs served round-robin. Use it from one event loop
    at a time (jobs of a loop that went away are forgotten when another loop uses the pool)."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        metrics: Metrics | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.workers = max(1, int(workers)) if workers is not None else default_workers()
        self._metrics = metrics
        self._backoff_base = float(backoff_base)
        self._backoff_max = float(backoff_max)
        self._pool: ProcessPoolExecutor | None = None
        self._queues: OrderedDict[Tenant, deque[ParseJob]] = OrderedDict()
        self._queued: Counter[Tenant] = Counter()  # jobs waiting to start, per owner
        self._waiting = 0  # distinct jobs waiting to start
        self._running: set[ParseJob] = set()  # jobs in a worker now
        self._last: Tenant = None  # the tenant served last: not served twice in a row
        self._failures = 0  # pool failures in a row (deaths, failed starts)
        self._not_before = 0.0  # time.monotonic() before which the pool is not rebuilt
        self._wake: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._closed = False

    # -- public ------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Parses in a worker now."""
        return len(self._running)

    def queued(self, tenant: Tenant = None, *, total: bool = False) -> int:
        """Parses waiting to start in `tenant`'s queue (or all, each once, with `total`)."""
        return self._waiting if total else self._queued[tenant]

    @property
    def failures(self) -> int:
        """Pool failures in a row (0 after a parse that landed)."""
        return self._failures

    def submit(self, body: bytes, tenants: Iterable[Tenant] = (None,)) -> ParseJob:
        """Queue a parse of `body` for each of `tenants` (it runs once, at the first turn)."""
        return self._submit(_parse, body, tenants)

    def queue_for(self, job: ParseJob, tenant: Tenant) -> None:
        """`tenant` waits for `job` too: queue it in that tenant's FIFO as well."""
        if job.future.done() or tenant in job.owners or job.generation != self._generation:
            return
        job.owners.add(tenant)
        if not job.started:
            self._queues.setdefault(tenant, deque()).append(job)
            self._queued[tenant] += 1
            self._publish((tenant,))
            self._pump()

    async def result(self, job: ParseJob, timeout: float | None = None) -> Any:
        """The job's result. TimeoutError (counted) after `timeout` s; the job goes on, and a
        later call gets its result. Cancelling the caller does not cancel the job."""
        if timeout is None:
            return await asyncio.shield(job.future)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(job.future)
        except TimeoutError:
            if self._metrics is not None:
                self._metrics.robots_parse_timeouts.inc()
            raise

    async def parse(self, body: bytes, tenant: Tenant = None) -> RobotsRules:
        """Rules for `body`, parsed in a worker process; ParserUnavailable when none could."""
        rules: RobotsRules = await self.result(self.submit(body, (tenant,)))
        return rules

    async def worker_pid(self) -> int:
        """The pid of a worker that runs parses (tests: proves parsing leaves this process)."""
        pid: int = await self.result(self._submit(_worker_pid, None, (None,)))
        return pid

    def close(self, wait: bool = True) -> None:
        """Fail what waits, stop the workers (after their current parse). Final."""
        self._closed = True
        self._forget(ParserUnavailable("robots.txt parser pool closed"))
        self._discard(wait=wait)

    # -- queueing ----------------------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], Any], arg: Any, tenants: Iterable[Tenant]) -> ParseJob:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:  # that loop is gone (tests): its jobs have no waiters
                self._forget(None)
            self._loop = loop
        job = ParseJob(fn, arg, loop.create_future(), time.monotonic(), self._generation)
        if self._closed:
            job.future.set_exception(ParserUnavailable("robots.txt parser pool closed"))
            return job
        job.owners = set(tenants) or {None}
        self._enqueue(job, front=False)
        self._pump()
        return job

    def _enqueue(self, job: ParseJob, *, front: bool) -> None:
        job.started = False
        for tenant in job.owners:
            queue = self._queues.setdefault(tenant, deque())
            if front:
                queue.appendleft(job)
            else:
                queue.append(job)
            self._queued[tenant] += 1
        self._waiting += 1
        self._publish(job.owners)

    def _next(self) -> ParseJob | None:
        """Round-robin over the tenants with work waiting; FIFO within a tenant."""
        if len(self._queues) > 1 and next(iter(self._queues)) == self._last:
            self._queues.move_to_end(self._last)
        while self._queues:
            tenant, queue = next(iter(self._queues.items()))
            job = None
            while queue and job is None:
                candidate = queue.popleft()
                if not candidate.started:  # else: started at another owner's turn
                    job = candidate
            if queue:
                self._queues.move_to_end(tenant)
            else:
                del self._queues[tenant]
            if job is not None:
                self._last = tenant
                return job
        return None

    def _pump(self) -> None:
        """Start queued jobs while a worker is free and the pool is not backing off."""
        if self._closed or self._loop is None:
            return
        while len(self._running) < self.workers and self._waiting > 0:
            pause = self._not_before - time.monotonic()
            if pause > 0:
                if self._wake is None:
                    self._wake = self._loop.call_later(pause, self._woken)
                return
            job = self._next()
            if job is None:  # pragma: no cover - counts and queues disagree
                log.error("robots.txt parse queue: %d jobs counted, none queued", self._waiting)
                self._waiting = 0
                return
            self._start(job)

    def _woken(self) -> None:
        self._wake = None
        self._pump()

    # -- running -----------------------------------------------------------------------------

    def _start(self, job: ParseJob) -> None:
        job.started = True
        job.attempts += 1
        self._waiting -= 1
        for tenant in job.owners:
            self._queued[tenant] -= 1
        self._publish(job.owners)
        self._running.add(job)
        pool = self._pool
        try:
            if pool is None:
                context = multiprocessing.get_context("spawn")
                pool = self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=context,
                    initializer=_follow_parent,
                    initargs=(os.getpid(),),
                )
            done = pool.submit(job.fn, job.arg)  # spawns a worker when one is missing
        except (OSError, RuntimeError) as exc:  # BrokenProcessPool is a RuntimeError
            self._running.discard(job)
            self._failed(pool, exc)
            self._retry_or_fail(job, exc)
            return
        done.add_done_callback(partial(self._from_thread, self._loop, job, pool))

    def _from_thread(
        self,
        loop: asyncio.AbstractEventLoop | None,
        job: ParseJob,
        pool: ProcessPoolExecutor,
        done: Future[Any],
    ) -> None:
        """The executor's callback (its own thread): hand the result to the event loop."""
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._landed, job, pool, done)
        except RuntimeError:
            pass  # that event loop is closed: nobody waits for this job any more

    def _landed(self, job: ParseJob, pool: ProcessPoolExecutor, done: Future[Any]) -> None:
        if job not in self._running:
            return  # forgotten (another event loop took the pool over, or it closed)
        self._running.discard(job)
        if done.cancelled():  # the pool was discarded under it (another job saw it die)
            self._retry_or_fail(job, BrokenProcessPool("parser pool discarded"))
        elif isinstance(exc := done.exception(), BrokenProcessPool):
            self._failed(pool, exc)
            self._retry_or_fail(job, exc)
        else:
            self._failures = 0
            if exc is not None:  # the parser itself raised: the cache fails that site closed
                self._settle(job, exc=exc)
            else:
                self._settle(job, result=done.result())
            if self._metrics is not None:
                self._metrics.robots_parse_seconds.observe(time.monotonic() - job.queued_at)
        self._pump()

    def _settle(
        self, job: ParseJob, *, result: Any = None, exc: BaseException | None = None
    ) -> None:
        job.arg = None  # stale queue entries keep the job, not its 500 KiB body
        if job.future.done() or job.future.get_loop().is_closed():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _retry_or_fail(self, job: ParseJob, exc: BaseException) -> None:
        if self._closed or job.attempts >= ATTEMPTS:
            why = "closed" if self._closed else f"{job.attempts} attempts, last: {exc!r}"
            self._settle(job, exc=ParserUnavailable(f"no robots.txt parser process ({why})"))
        else:
            self._enqueue(job, front=True)

    def _failed(self, pool: ProcessPoolExecutor | None, exc: BaseException) -> None:
        """A worker died or could not start: drop the pool, rebuild it after the back-off."""
        if pool is not self._pool:
            return  # that pool's failure is handled already (each of its jobs reports it)
        self._discard(wait=False)
        self._failures += 1
        pause = 0.0
        if self._failures > 1:
            pause = min(self._backoff_max, self._backoff_base * 2 ** min(self._failures - 2, 32))
        self._not_before = time.monotonic() + pause
        if self._metrics is not None:
            self._metrics.robots_parse_pool_failures.inc()
        what = (
            "a robots.txt parser process died"
            if isinstance(exc, BrokenProcessPool)
            else "could not start a robots.txt parser process"
        )
        log.error(
            "%s (%s; failure %d in a row): the parser pool is rebuilt %s; parses wait "
            "meanwhile (their requests fail closed, robots-unreachable, after "
            "robots.parse_timeout) and are never run in the proxy's thread",
            what,
            exc,
            self._failures,
            f"in {pause:g} s" if pause else "now",
        )

    def _discard(self, *, wait: bool) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=wait, cancel_futures=True)

    def _forget(self, exc: BaseException | None) -> None:
        """Drop every job of this generation (failing their futures with `exc`, if given)."""
        jobs = {job for queue in self._queues.values() for job in queue} | self._running
        if exc is not None:
            for job in jobs:
                self._settle(job, exc=exc)
        tenants = set(self._queued)
        self._queues.clear()
        self._queued.clear()
        self._running.clear()
        self._waiting = 0
        self._generation += 1
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._publish(tenants)

    def _publish(self, tenants: Iterable[Tenant]) -> None:
        if self._metrics is None:
            return
        self._metrics.robots_parse_queue_depth.set(self._waiting)
        for tenant in tenants:
            if tenant is not None:
                self._metrics.robots_parse_queued.labels(tenant).set(self._queued[tenant])


_SHARED: RobotsParsePool | None = None


def shared() -> RobotsParsePool:
    """The process-wide pool for caches given none of their own (tests, benchmarks)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = RobotsParsePool()
    return _SHARED


async def parse(body: bytes, tenant: Tenant = None) -> RobotsRules:
    """Parse in the process-wide pool."""
    return await shared().parse(body, tenant)
