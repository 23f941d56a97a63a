"""``state.on_error`` around a shared backend: what pacing does while Redis is unreachable.

`FailoverState` is a `PacingState` that forwards every call to the shared backend until one
fails with a `StateBackendError` (unreachable, timed out, an error reply; any other exception
is a bug, logged and raised: the request then fails closed at the proxy's last gate).
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
from typing import Protocol, TypeVar

from crawlguard.state import (
    Backoff,
    MemoryState,
    OnError,
    PacingState,
    Reservation,
    StateBackendError,
    StateUnavailable,
)
from crawlguard.state.outage import MAX_DOWN_INTERVAL, MIN_DOWN_INTERVAL, Outage

log = logging.getLogger("crawlguard")

T = TypeVar("T")


class _Closable(Protocol):
    async def close(self) -> None: ...


class Failover[S: _Closable]:
    """A shared backend (`primary`) with ``state.on_error`` applied while it is down: the
    outage bookkeeping, the fallback and the log lines that pacing's state and the site
    budgets (crawlguard.state.sites_failover) share. `what` names the state in the log."""

    what = "shared state"
    fallback_does = "per process"  # what runs meanwhile in `open` mode, for the log line

    def __init__(
        self,
        primary: S,
        *,
        on_error: OnError = "closed",
        fallback: S | None = None,
        on_fallback: Callable[[], None] | None = None,
        min_interval: float = MIN_DOWN_INTERVAL,
        max_interval: float = MAX_DOWN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_error not in ("closed", "open"):
            raise ValueError(f"on_error must be closed or open, not {on_error!r}")
        self.primary = primary
        self.on_error = on_error
        self.fallback: S | None = None  # closed: nothing stands in for the backend
        if on_error == "open":
            self.fallback = fallback if fallback is not None else self.new_fallback()
        self.on_fallback = on_fallback
        self._clock = clock
        self._outage = Outage(
            expected=(StateBackendError,),
            on_start=self._outage_started,
            on_end=self._outage_ended,
            min_interval=min_interval,
            max_interval=max_interval,
            clock=clock,
        )

    def new_fallback(self) -> S:
        """The per-process state that stands in while the backend is down (`open`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.primary!r}, on_error={self.on_error!r})"

    @property
    def down(self) -> bool:
        """True while the shared backend is considered unreachable."""
        return self._outage.down

    def retry_after(self) -> int:
        """Whole seconds (≥ 1) until the backend is probed again."""
        return max(1, math.ceil(self._outage.next_probe - self._clock() - 1e-9))

    async def close(self) -> None:
        try:
            await self.primary.close()
        except Exception as exc:  # closing a dead connection must not stop the shutdown
            log.warning("closing the %s failed: %s", self.what, exc)
        if self.fallback is not None:
            await self.fallback.close()

    async def _call(self, op: Callable[[S], Awaitable[T]], *, required: bool) -> T | None:
        """`op` on the primary unless it is down; else on the fallback (open), else raise
        `StateUnavailable` (closed, `required`) or return None (closed, feedback)."""
        ok, result = await self._outage.call(lambda: op(self.primary))
        if ok:
            return result
        if self.fallback is not None:
            return await op(self.fallback)
        if required:
            error = self._outage.error
            raise StateUnavailable(self.retry_after(), _cause(error) if error is not None else "")
        return None

    def _outage_started(self, exc: Exception) -> None:
        if self.fallback is not None:
            what = f"{self.fallback_does} (state.on_error: open) until it is back"
        else:
            what = "refusing paced requests with 503 state-unavailable (state.on_error: closed)"
        log.warning("%s unreachable (%s); %s", self.what, _cause(exc), what)
        if self.fallback is not None and self.on_fallback is not None:
            self.on_fallback()

    def _outage_ended(self, seconds: float) -> None:
        log.info("%s reachable again after %.1f s; sharing resumed", self.what, seconds)


class FailoverState(Failover[PacingState]):
    """A shared `PacingState` (`primary`) with ``state.on_error`` applied while it is down."""

    what = "shared pacing state"
    fallback_does = "pacing per process"

    def new_fallback(self) -> PacingState:
        return MemoryState()

    # -- the PacingState calls -----------------------------------------------------------

    async def reserve(
        self,
        key: str,
        interval: float,
        now: float,
        max_wait: float,
        *,
        force: bool = False,
        also: tuple[str, ...] = (),
    ) -> Reservation:
        return await self._call(
            lambda s: s.reserve(key, interval, now, max_wait, force=force, also=also),
            required=True,
        )

    async def release(
        self, key: str, slot: float, interval: float, *, also: tuple[str, ...] = ()
    ) -> None:
        await self._call(lambda s: s.release(key, slot, interval, also=also), required=False)

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


def _cause(exc: Exception) -> str:
    """How a failure of the shared backend is told (a `StateBackendError`'s own message)."""
    if isinstance(exc, StateBackendError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
