"""robots.txt parsing in a separate process, so a big or hostile file never stalls the proxy.

Parsing is pure Python: in a thread it holds the interpreter lock, and the event loop that
serves every tenant waits for it (measured with `benchmarks/bystander.py`: 100 host names of
a 500 KiB file, parsed in threads, pushed a bystander tenant's p50 to 111 ms and p99 to
336 ms). In a worker process the parse costs the loop only the unpickling of the result
(≤ 6 ms for a 500 KiB file of 30,000 rules), and the pool's size bounds how many parses run
at once, whatever number of host names point at one server.

The pool starts on first use (spawn: mitmproxy's process has threads, fork would copy their
locks) and is rebuilt if a worker dies; if a worker cannot be started at all, parsing falls
back to a thread, logged once, rather than failing robots.txt for everyone.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from crawlguard.robots import RobotsRules

log = logging.getLogger("crawlguard")

DEFAULT_WORKERS = 1


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


def _worker_pid() -> int:
    return os.getpid()


class RobotsParsePool:
    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._fallback = False

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=context,
                initializer=_follow_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def parse(self, body: bytes) -> RobotsRules:
        if self._fallback:
            return await asyncio.to_thread(RobotsRules.parse, body)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                return await loop.run_in_executor(self._executor(), _parse, body)
            except (BrokenProcessPool, OSError) as exc:
                self._discard()
                if attempt == 2:
                    log.error(
                        "robots.txt parser process unavailable (%r); parsing in a thread", exc
                    )
                    self._fallback = True
        return await asyncio.to_thread(RobotsRules.parse, body)

    async def worker_pid(self) -> int:
        """The pid that parses (tests: proves the parse leaves the proxy's process)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), _worker_pid)

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_SHARED = RobotsParsePool()


async def parse(body: bytes) -> RobotsRules:
    """Parse in the process-wide pool: one worker for every cache (and reload) in a process."""
    return await _SHARED.parse(body)
