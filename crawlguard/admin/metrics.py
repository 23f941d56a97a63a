"""Prometheus metrics (SPEC: "Admin HTTP server"). Labels hold tenant ids, kinds and results only,
never a URL or host, so cardinality stays bounded by config.

`crawlguard run --workers N` (crawlguard.cli.workers): each worker process writes its metrics to
prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a private directory the
parent creates and removes) and the parent's ONE admin endpoint serves their aggregate
(`AggregatedMetrics`): counters and histograms are summed over every worker that ever ran (a
restarted worker's counts are kept, so they never go down); each gauge says how it combines
(`multiprocess_mode`, used only in that mode): `livesum` for what adds up over the live
workers, `livemax` for what each worker has on its own. A `set_function` gauge is computed at
scrape time in its own process, which the parent cannot do: workers copy those into their
files every `FUNCTION_GAUGE_SECONDS` (`publish_function_gauges`).
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from crawlguard import __version__

# `_created` series double the exposition for no use here.
disable_created_metrics()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FUNCTION_GAUGES = ("robots_cache_entries",)
"""Gauges the Runtime binds with `set_function` (read at scrape time in their own process)."""
FUNCTION_GAUGE_SECONDS = 1.0
"""How often a worker copies its `FUNCTION_GAUGES` into its multiprocess file."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "crawlguard_requests",
            "Proxied requests by tenant and decision.",
            ["tenant", "decision"],
            registry=self.registry,
        )
        self.violations = Counter(
            "crawlguard_violations",
            "Recorded violations by tenant and kind (monitor mode included).",
            ["tenant", "kind"],
            registry=self.registry,
        )
        self.robots_fetches = Counter(
            "crawlguard_robots_fetches",
            "robots.txt fetch attempts by result.",
            ["result"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "crawlguard_decision_seconds",
            "Time to decide a request (robots.txt fetch included, pacing holds excluded).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5),
            registry=self.registry,
        )
        self.delayed = Gauge(
            "crawlguard_delayed_requests",
            "Requests currently held by delay pacing.",
            multiprocess_mode="livesum",  # held by all live workers together
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "crawlguard_auth_failures",
            "Requests refused with 407 (missing or wrong proxy credentials).",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "crawlguard_store_errors",
            "Violation records the store failed to write (they still went to the log).",
            registry=self.registry,
        )

        self.store_queue_depth = Gauge(
            "crawlguard_store_queue_depth",
            "Violation records accepted and waiting for their store commit.",
            multiprocess_mode="livesum",  # every worker has its own writer and queue
            registry=self.registry,
        )
        self.store_write_seconds = Histogram(
            "crawlguard_store_write_seconds",
            "Time to commit one batch of violation records (group commit), failures included.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10),
            registry=self.registry,
        )
        self.store_backlogged = Counter(
            "crawlguard_store_backlogged",
            "Violation records refused because the store write queue was full.",
            registry=self.registry,
        )
        self.store_pruned = Counter(
            "crawlguard_store_pruned",
            "Rows deleted by store.retention_days, by table.",
            ["table"],
            registry=self.registry,
        )

        # -- robots.txt cache, pacing holds, origin back-off, build ----------------------------
        self.robots_cache_entries = Gauge(
            "crawlguard_robots_cache_entries",
            "Origins the robots.txt cache holds now (an entry, or its first fetch in flight).",
            multiprocess_mode="livemax",  # each worker has its own cache: the largest one
            registry=self.registry,
        )
        self.robots_cache_lookups = Counter(
            "crawlguard_robots_cache_lookups",
            "robots.txt cache lookups by result: hit (a fresh cached entry was used) or miss "
            "(the request had to fetch robots.txt or wait for a fetch in flight).",
            ["result"],
            registry=self.registry,
        )
        self.robots_fetch_seconds = Histogram(
            "crawlguard_robots_fetch_seconds",
            "Wall time of each robots.txt fetch (all redirect hops), failures included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.hold_seconds = Histogram(
            "crawlguard_hold_seconds",
            "How long each request held by delay pacing waited, until it was forwarded or "
            "its client left.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.held_requests_limit = Gauge(
            "crawlguard_held_requests_limit",
            "pacing.max_held: requests delay pacing may hold at once (beyond it, 429).",
            multiprocess_mode="livesum",  # per process: N workers may hold N times as many
            registry=self.registry,
        )
        self.origin_backoffs = Counter(
            "crawlguard_origin_backoffs",
            "Origin back-offs started or extended because an origin answered the tenant "
            "429 or 503.",
            ["tenant"],
            registry=self.registry,
        )
        self.site_backoffs = Counter(
            "crawlguard_site_backoffs",
            "Times the platform slowed down on a site for every tenant (a 429/503 to any "
            "tenant, sustained 5xx, a doubled response time). Which sites: GET /api/sites.",
            registry=self.registry,
        )
        self.build_info = Gauge(
            "crawlguard_build_info",
            "Always 1; the version label is the running crawlguard's.",
            ["version"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.build_info.labels(__version__).set(1)

        self.state_fallbacks = Counter(
            "crawlguard_state_fallbacks",
            "Outages of the shared pacing state (redis://) during which this process paced "
            "from its own memory (state.on_error: open); one per outage.",
            registry=self.registry,
        )
        self.store_spooled = Counter(
            "crawlguard_store_spooled",
            "Violation records written to the local spool (fsync'd) because the PostgreSQL "
            "store was unavailable; replayed when it is back.",
            registry=self.registry,
        )
        self.store_replayed = Counter(
            "crawlguard_store_replayed",
            "Spooled violation records replayed into the PostgreSQL store.",
            registry=self.registry,
        )

        # -- issue 18 item 10: the held pool, by tenant --------------------------------------
        self.held_by_tenant = Gauge(
            "crawlguard_held_requests",
            "Requests each tenant has held by delay pacing now: whose requests fill "
            "pacing.max_held (crawlguard_delayed_requests is their sum).",
            ["tenant"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        # -- issue 18 item 16: wrong operator credentials on the admin server -------------------
        self.admin_auth_failures = admin_auth_failures(self.registry)
        # -- issue 18 item 13: records by the million (folding, disk space) -------------------
        self.violations_folded = Counter(
            "crawlguard_violations_folded",
            "Refusals counted into a folded record instead of a record of their own "
            "(store.fold_after / fold_tenant_after); crawlguard_violations_total still counts "
            "every refusal.",
            ["tenant"],
            registry=self.registry,
        )
        self.store_disk_free_bytes = Gauge(
            "crawlguard_store_disk_free_bytes",
            "Free bytes on the filesystem of the violation store (SQLite) or of its spool "
            "(PostgreSQL), refreshed every 10 s.",
            multiprocess_mode="livemin",
            registry=self.registry,
        )
        self.store_disk_low = Gauge(
            "crawlguard_store_disk_low",
            "1 while crawlguard_store_disk_free_bytes is below store.min_free_bytes, else 0.",
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        # -- issue 18 item 11: connections before authentication (proxy.client_limits) --------
        self.unauthenticated_closed = Counter(
            "crawlguard_unauthenticated_closed",
            "Client connections closed before they authenticated, to make room: the oldest of "
            "a source over proxy.max_unauthenticated_per_source, or at proxy.max_connections "
            "the oldest of the source holding the most unauthenticated connections.",
            registry=self.registry,
        )
        # -- issue 18 item 12: the robots.txt parse queue (crawlguard/robots/parse_pool.py) ----
        self.robots_parse_queue_depth = Gauge(
            "crawlguard_robots_parse_queue_depth",
            "robots.txt parses waiting for a parser process, all tenants (each parse once).",
            multiprocess_mode="livesum",  # every proxy process has its own parser pool
            registry=self.registry,
        )
        self.robots_parse_queued = Gauge(
            "crawlguard_robots_parse_queued",
            "robots.txt parses waiting in this tenant's queue (a parse several tenants wait "
            "for is in each of their queues).",
            ["tenant"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.robots_parse_seconds = Histogram(
            "crawlguard_robots_parse_seconds",
            "Time from queueing a robots.txt parse to its result (queue wait included).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.robots_parse_timeouts = Counter(
            "crawlguard_robots_parse_timeouts",
            "robots.txt parses not done within robots.parse_timeout: the requests waiting got "
            "robots-unreachable (or a stale copy); the parse went on and its result was cached.",
            registry=self.registry,
        )
        self.robots_parse_pool_failures = Counter(
            "crawlguard_robots_parse_pool_failures",
            "robots.txt parser pool failures (a worker process died, or none could be "
            "started); the pool is rebuilt after a back-off.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def publish_function_gauges(self) -> None:
        """Multiprocess mode: write the current value of each `set_function` gauge to this
        process's file (the parent aggregates files, it cannot call a worker's function).
        `collect` calls the bound function; `set` writes the file."""
        for name in FUNCTION_GAUGES:
            gauge: Gauge = getattr(self, name)
            for family in gauge.collect():
                for sample in family.samples:
                    gauge.set(sample.value)


class AggregatedMetrics:
    """The parent of `--workers N`: the sum of the workers' multiprocess files in `path`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry, path=str(self.path))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def process_dead(self, pid: int) -> None:
        """A worker exited: its `live*` gauges leave the aggregate (its counts stay)."""
        multiprocess.mark_process_dead(pid, str(self.path))


ADMIN_AUTH_REASONS = ("bearer", "login", "throttled")


def admin_auth_failures(registry: CollectorRegistry) -> Counter:
    """`crawlguard_admin_auth_failures_total{reason}` in `registry`. The parent of `--workers N`
    makes its own (its /metrics is the workers' aggregate, and no worker runs an admin server);
    the admin server sets every `ADMIN_AUTH_REASONS` child, so a worker writes none."""
    return Counter(
        "crawlguard_admin_auth_failures",
        "Operator credentials refused by the admin server: bearer (a wrong Authorization "
        "header), login (a wrong token posted to /login), throttled (an attempt answered 429 "
        "unchecked: its source failed too often).",
        ["reason"],
        registry=registry,
    )
