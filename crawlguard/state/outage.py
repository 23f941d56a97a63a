"""`Outage`: when to leave an unreachable shared backend alone, and when to try it again.

Used by `FailoverState` (the Redis pacing state) and `RedisRobots` (the shared robots.txt
cache). The first failed call starts an outage; from then on the backend is left alone for a
short interval (0.25 s, doubling up to 5 s while it stays down), after which exactly one call
probes it (concurrent calls keep skipping it until that probe answers); the first success ends
the outage. A call already under way when the outage was noticed does not lengthen the
interval. Each outage is reported once when it starts (`on_start`, with the error) and once
when it ends (`on_end`, with its length in seconds): the callers log those in their own words.

Only the failures a caller names as outages (`expected`: a connection refused, a timeout, an
error reply) start one; anything else is a bug in crawlguard, not a backend going away: it is
logged with its traceback and raised, never hidden behind the fail-open/closed policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("crawlguard")

T = TypeVar("T")

MIN_DOWN_INTERVAL = 0.25
MAX_DOWN_INTERVAL = 5.0


class Outage:
    """The outage state of one shared backend (see the module docstring)."""

    def __init__(
        self,
        *,
        expected: tuple[type[Exception], ...],
        on_start: Callable[[Exception], None],
        on_end: Callable[[float], None],
        min_interval: float = MIN_DOWN_INTERVAL,
        max_interval: float = MAX_DOWN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.expected = expected
        self.on_start = on_start
        self.on_end = on_end
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._clock = clock
        self._since: float | None = None
        self._until = 0.0
        self._interval = 0.0
        self._probing = False
        self.error: Exception | None = None  # the latest failure of this outage's probes
        self.count = 0  # outages seen since start

    @property
    def down(self) -> bool:
        """True while the backend is considered unreachable."""
        return self._since is not None

    @property
    def next_probe(self) -> float:
        """When (on `clock`) the backend may be probed again; 0 when it is up."""
        return self._until

    def skip(self) -> bool:
        """Leave the backend alone: inside the down interval, or another call is probing."""
        if self._since is None:
            return False
        return self._probing or self._clock() < self._until

    async def call(self, op: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """``(True, result)`` of `op`, or ``(False, None)`` when it was skipped or failed with
        an `expected` error (recorded here, never raised). Any other error is raised."""
        if self.skip():
            return False, None
        probe = self._since is not None
        if probe:
            self._probing = True
        try:
            result = await op()
        except self.expected as exc:
            self.failed(exc, probe)
            return False, None
        except Exception:
            log.exception("crawlguard bug: unexpected error from a shared backend call")
            raise
        finally:
            if probe:
                self._probing = False
        self.recovered()
        return True, result

    def failed(self, exc: Exception, probe: bool) -> None:
        """A call failed; `probe`: it was the one call let through during the outage."""
        now = self._clock()
        if self._since is None:  # a new outage
            self._since = now
            self._interval = self.min_interval
            self.count += 1
            self.error = exc
            self.on_start(exc)
        elif probe:  # still down: wait longer before the next probe
            self._interval = min(self._interval * 2, self.max_interval)
            self.error = exc
        else:  # a call already under way when the outage was noticed
            return
        self._until = now + self._interval

    def recovered(self) -> None:
        """A call succeeded: the outage (if any) is over."""
        if self._since is None:
            return
        since = self._since
        self._since = None
        self._until = 0.0
        self._interval = 0.0
        self.error = None
        self.on_end(self._clock() - since)
