"""``state.on_error`` around a shared backend: what pacing does while Redis is unreachable.

`FailoverState` is a `PacingState` that forwards every call to the shared backend until one
fails (`StateBackendError`, or any other exception: a pacing step never crashes a request).
Then the backend is *down*: it is left alone for a short interval
(0.25 s, doubling up to 5 s while it stays down), after which exactly one call probes it
(concurrent calls keep skipping it until that probe answers); the first success ends the
outage. So a dead Redis costs one fast failure per interval, not one per request, and pacing
is exact again from the first call after it is back.

While down:

* ``closed`` (default): `reserve` and `get_backoff` raise `StateUnavailable` (the request gets
  ``state-unavailable``, 503, Retry-After = seconds until the next probe); `release`,
  `raise_backoff` and `decay_backoff` (feedback after the decision) are dropped.
* ``open``: every call goes to a per-process `MemoryState` (pacing is per process, not
  shared, until Redis is back; what it learnt meanwhile is not copied to Redis).

Each outage is logged once when it starts and once when it ends (not per request), and in
``open`` mode `on_fallback` is called once per outage (the ``crawlguard_state_fallbacks_total``
counter).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from crawlguard.state import (
    Backoff,
    MemoryState,
    OnError,
    PacingState,
    Reservation,
    StateBackendError,
    StateUnavailable,
)

log = logging.getLogger("crawlguard")

T = TypeVar("T")

MIN_DOWN_INTERVAL = 0.25
MAX_DOWN_INTERVAL = 5.0


class FailoverState:
    """A shared `PacingState` (`primary`) with ``state.on_error`` applied while it is down."""

    def __init__(
        self,
        primary: PacingState,
        *,
        on_error: OnError = "closed",
        fallback: PacingState | None = None,
        on_fallback: Callable[[], None] | None = None,
        min_interval: float = MIN_DOWN_INTERVAL,
        max_interval: float = MAX_DOWN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_error not in ("closed", "open"):
            raise ValueError(f"on_error must be closed or open, not {on_error!r}")
        self.primary = primary
        self.on_error = on_error
        self.fallback: PacingState | None = None  # closed: nothing stands in for the backend
        if on_error == "open":
            self.fallback = fallback if fallback is not None else MemoryState()
        self.on_fallback = on_fallback
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._clock = clock
        self._down_since: float | None = None
        self._down_until = 0.0
        self._interval = 0.0
        self._probing = False
        self._cause = ""
        self.outages = 0  # outages seen since start

    def __repr__(self) -> str:
        return f"FailoverState({self.primary!r}, on_error={self.on_error!r})"

    @property
    def down(self) -> bool:
        """True while the shared backend is considered unreachable."""
        return self._down_since is not None

    def retry_after(self) -> int:
        """Whole seconds (≥ 1) until the backend is probed again."""
        return max(1, math.ceil(self._down_until - self._clock() - 1e-9))

    # -- the PacingState calls -----------------------------------------------------------

    async def reserve(
        self, key: str, interval: float, now: float, max_wait: float, *, force: bool = False
    ) -> Reservation:
        return await self._call(
            lambda s: s.reserve(key, interval, now, max_wait, force=force), required=True
        )

    async def release(self, key: str, slot: float, interval: float) -> None:
        await self._call(lambda s: s.release(key, slot, interval), required=False)

    async def get_backoff(self, key: str, now: float) -> Backoff | None:
        return await self._call(lambda s: s.get_backoff(key, now), required=True)

    async def raise_backoff(
        self, key: str, now: float, retry_after: float | None, base: float, cap: float
    ) -> Backoff:
        result = await self._call(
            lambda s: s.raise_backoff(key, now, retry_after, base, cap), required=False
        )
        return result if result is not None else Backoff(0.0, 0)  # closed: not stored

    async def decay_backoff(self, key: str, now: float) -> None:
        await self._call(lambda s: s.decay_backoff(key, now), required=False)

    async def close(self) -> None:
        try:
            await self.primary.close()
        except Exception as exc:  # closing a dead connection must not stop the shutdown
            log.warning("closing the shared pacing state failed: %s", exc)
        if self.fallback is not None:
            await self.fallback.close()

    # -- failover ------------------------------------------------------------------------

    async def _call(self, op: Callable[[PacingState], Awaitable[T]], *, required: bool) -> T | None:
        """`op` on the primary unless it is down; else on the fallback (open), else raise
        `StateUnavailable` (closed, `required`) or return None (closed, feedback)."""
        if not self._skip():
            probe = self._down_since is not None
            if probe:
                self._probing = True
            try:
                result = await op(self.primary)
            except Exception as exc:  # StateBackendError, or anything unforeseen: never crash
                self._failed(exc, probe)
            else:
                self._recovered()
                return result
            finally:
                if probe:
                    self._probing = False
        if self.fallback is not None:
            return await op(self.fallback)
        if required:
            raise StateUnavailable(self.retry_after(), self._cause)
        return None

    def _skip(self) -> bool:
        """Leave the backend alone: inside the down interval, or another call is probing."""
        if self._down_since is None:
            return False
        return self._probing or self._clock() < self._down_until

    def _failed(self, exc: Exception, probe: bool) -> None:
        if not isinstance(exc, StateBackendError):
            exc = StateBackendError(f"{type(exc).__name__}: {exc}")
        now = self._clock()
        if self._down_since is None:  # a new outage
            self._down_since = now
            self._interval = self.min_interval
            self.outages += 1
            self._cause = str(exc)
            if self.fallback is not None:
                what = "pacing per process (state.on_error: open) until it is back"
            else:
                what = "refusing paced requests with 503 state-unavailable (state.on_error: closed)"
            log.warning("shared pacing state unreachable (%s); %s", exc, what)
            if self.fallback is not None and self.on_fallback is not None:
                self.on_fallback()
        elif probe:  # still down: wait longer before the next probe
            self._interval = min(self._interval * 2, self.max_interval)
            self._cause = str(exc)
        else:  # a call already under way when the outage was noticed
            return
        self._down_until = now + self._interval

    def _recovered(self) -> None:
        if self._down_since is None:
            return
        log.info(
            "shared pacing state reachable again after %.1f s; shared pacing resumed",
            self._clock() - self._down_since,
        )
        self._down_since = None
        self._down_until = 0.0
        self._interval = 0.0
        self._cause = ""
