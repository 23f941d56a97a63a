"""Keeps a running proxy's tenants equal to the registry's running set (`tenancy.source:
store`), in every process and every replica, without a restart.

One thread per process watches the registry's `version()` (the newest audit id):

* SQLite: polled every `POLL_SECONDS` (one indexed `SELECT max(id)`);
* PostgreSQL: `LISTEN crawlguard_tenancy` on a connection of its own; every change NOTIFYs in
  its transaction with its schema as the payload (channels are per database, not per schema),
  and a notification only means "look at the version now", never the data. The version is
  also read every `PG_CHECK_SECONDS` and after the listener reconnects (a notification sent
  while it was away is gone).

The first pass loads the whole running set. After that a changed version loads only the
tenants the audit log names since the version that runs (`changed_since`, `running_subset`:
a change costs the same with 10 or 100,000 tenants), and the new set goes to `apply`
(`Runtime.replace_tenants`, which reuses unchanged tenants) on the proxy's event loop. Every
`RESYNC_SECONDS` the whole set is loaded again, the safety net for anything missed; it is
applied only if it differs from what runs. A database that cannot be reached changes
nothing: the last good set keeps serving, the outage is logged once (and its end), and the
thread retries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from crawlguard.config import Config, Tenant
from crawlguard.tenancy.db import NOTIFY_CHANNEL, PostgresDatabase
from crawlguard.tenancy.records import TenancyError
from crawlguard.tenancy.registry import TenantRegistry

log = logging.getLogger("crawlguard")

POLL_SECONDS = 0.5
PG_CHECK_SECONDS = 5.0
RESYNC_SECONDS = 30.0
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # after the n-th failure in a row (then the last)
APPLY_TIMEOUT_SECONDS = 120.0
SEED_ACTOR = "config-seed"

Retired = Mapping[str, Sequence[tuple[bytes, float]]]
Apply = Callable[..., Awaitable[None]]  # apply(tenants, retired=...)


def seed(registry: TenantRegistry, cfg: Config) -> list[str]:
    """The config file's tenants that the registry does not hold yet, created from the file
    (their token hash kept; audited as `config-seed`). The registry wins afterwards."""
    if not cfg.tenants:
        return []
    items = [t.model_dump(exclude_none=True) for t in cfg.tenants]
    added = registry.import_file(items, actor=SEED_ACTOR)
    if added:
        log.info("tenant registry: %d tenant(s) seeded from the config file", len(added))
    return added


class TenantSync:
    """The watcher thread of one process."""

    def __init__(
        self,
        registry: TenantRegistry,
        apply: Apply,
        *,
        poll: float = POLL_SECONDS,
        resync: float = RESYNC_SECONDS,
        seed: Config | None = None,
    ) -> None:
        """`seed`: a config whose tenants still need seeding (the database was down at
        start)."""
        self.registry = registry
        self._seed = seed
        self.apply = apply
        self.poll = poll
        self.resync = resync
        self.applied_version: int | None = None  # the version of the set last applied
        self.applied = 0  # sets applied so far
        self.checks = 0  # looks at the version so far
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failures = 0
        # the set last applied: tenants by id, retired digests by tenant id
        self._last: tuple[dict[str, Tenant], dict[str, list[tuple[bytes, float]]]] | None = None
        self._listener: Any = None  # PostgreSQL: the LISTEN connection
        self._schema = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, *, version: int | None = None) -> None:
        """Watch from now on; `version`: that of the set the Runtime already serves."""
        if self._thread is not None:
            return
        self._loop = loop
        self.applied_version = version
        self._thread = threading.Thread(
            target=self._run, name="crawlguard-tenancy-sync", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Blocking (run it off the loop): the thread ends within about a second."""
        self._stop.set()
        listener = self._listener
        if listener is not None:
            with suppress(Exception):
                listener.close()  # wakes a wait on notifications
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        next_resync = time.monotonic() + self.resync
        while not self._stop.is_set():
            try:
                full = time.monotonic() >= next_resync
                self._check(full=full)
                if full:
                    next_resync = time.monotonic() + self.resync
                if self._failures:
                    log.info("tenant registry reachable again; tenants are current")
                self._failures = 0
                self._wait()
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not self._failures:
                    log.warning(
                        "tenant registry unreachable (%s); keeping the last good set of "
                        "tenants and retrying",
                        exc,
                    )
                self._failures += 1
                self._drop_listener()
                pause = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS)) - 1]
                self._stop.wait(pause)

    def _check(self, *, full: bool) -> None:
        if self._seed is not None:
            try:
                seed(self.registry, self._seed)
            except TenancyError as exc:
                if exc.status == 503:
                    raise
                log.error("tenant registry: the config file's tenants not seeded: %s", exc)
            self._seed = None
        self.checks += 1
        if full or self._last is None or self.applied_version is None:
            version = self.registry.version()
            if not full and version == self.applied_version:
                return
            tenants, retired = self.registry.running_set()
            running = {t.id: t for t in tenants}
            if full and (running, retired) == self._last:
                self.applied_version = version
                return  # the resync found what runs already: nothing to rebuild
        else:  # only the tenants the audit log names since the version that runs
            version, ids = self.registry.changed_since(self.applied_version)
            if version == self.applied_version:
                return
            subset, subset_retired = self.registry.running_subset(ids)
            running = {k: v for k, v in self._last[0].items() if k not in ids}
            running.update((t.id, t) for t in subset)
            now = time.time()
            retired = {
                k: kept
                for k, v in self._last[1].items()
                if k not in ids and (kept := [(d, e) for d, e in v if e > now])
            }
            retired.update(subset_retired)
        self._apply(list(running.values()), retired)
        changed = self.applied_version is not None
        self.applied_version = version
        self._last = (running, retired)
        self.applied += 1
        (log.info if changed else log.debug)(
            "tenants from the registry (version %d) applied: %d tenant(s)", version, len(running)
        )

    def _apply(self, tenants: list[Tenant], retired: Retired) -> None:
        loop = self._loop
        assert loop is not None
        future = asyncio.run_coroutine_threadsafe(self.apply(tenants, retired=retired), loop)
        future.result(APPLY_TIMEOUT_SECONDS)

    def _wait(self) -> None:
        """Until the next look at the version: the poll interval (SQLite), or a notification
        for this schema or PG_CHECK_SECONDS (PostgreSQL)."""
        db = self.registry.db
        if not isinstance(db, PostgresDatabase):
            self._stop.wait(self.poll)
            return
        if self._listener is None:
            conn = db.connect()
            try:
                row = conn.execute("SELECT coalesce(current_schema(), '')").fetchone()
                self._schema = row[0] if row else ""
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            except Exception:
                conn.close()
                raise
            self._listener = conn
            return  # listening now: look at the version once more (a change may have slipped by)
        deadline = time.monotonic() + PG_CHECK_SECONDS
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for note in self._listener.notifies(timeout=min(left, 1.0), stop_after=1):
                if note.payload == self._schema:
                    return

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with suppress(Exception):
                listener.close()
