"""The composition root: builds the parts of one proxy process from a config (tenants, store,
pacing state, robots.txt cache, egress policy, metrics), reloads them, and serves the request
path as the live `Context` of the decision pipeline (crawlguard.policy.pipeline), plus the
effects the proxy carries out: recording, counting, origin back-off.

The mitmproxy addon (crawlguard.proxy.addon) is a thin adapter over this and the pipeline, so
the same code serves `crawlguard run`, `mitmdump -s addons/crawlguard_addon.py` and the local
dev mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from crawlguard.admin.metrics import Metrics
from crawlguard.config import Config, ConfigError, Tenant, collector_paused
from crawlguard.egress import EgressPolicy
from crawlguard.policy.auth import Authenticator
from crawlguard.policy.budget import SiteBudget, SiteTurn, budget_refusal
from crawlguard.policy.decisions import Action, Decision, Kind
from crawlguard.policy.identity import Target
from crawlguard.policy.pacing import (
    THROTTLE_STATUSES,
    HeldPool,
    Pacer,
    PacingOutcome,
    pacing_key,
    pacing_rule,
)
from crawlguard.policy.pipeline import RequestInfo
from crawlguard.policy.ratelimit import rate_cap
from crawlguard.policy.records import ViolationRecord, log_line, utc_now_iso
from crawlguard.policy.robots import RobotsRules
from crawlguard.policy.tenants import TenantRuntime, TenantSet, build_tenant_set
from crawlguard.robots.cache import RobotsCache, RobotsEntry
from crawlguard.robots.parse_pool import RobotsParsePool
from crawlguard.state import StateUnavailable, open_state
from crawlguard.state.sites import SiteAsk, SiteView
from crawlguard.state.sites_open import open_sites
from crawlguard.store import ViolationStore, open_store, store_spool_dir

if TYPE_CHECKING:
    from crawlguard.robots.shared import RedisRobots
    from crawlguard.tenancy import TenantRegistry
    from crawlguard.tenancy.sync import TenantSync


def site_unavailable(site: str, exc: StateUnavailable, robots_sha256: str | None) -> Decision:
    """`state-unavailable` for a request whose site budget lives in a shared state that is down
    (`state.on_error: closed`)."""
    return Decision(
        Kind.STATE_UNAVAILABLE,
        rule="state.on_error: closed",
        reason="crawlguard cannot reach its shared state, so it cannot tell whether the "
        f"platform keeps {site}'s budget.",
        retry_after=exc.retry_after,
        robots_sha256=robots_sha256,
    )


def open_shared_robots(url: str) -> RedisRobots | None:
    """crawlguard.robots.shared's, imported (and redis with it, ~0.1 s) only when `state.url`
    is shared: a proxy on memory:// state starts without it."""
    if not url.startswith(("redis://", "rediss://")):
        return None
    from crawlguard.robots.shared import open_shared_robots as open_shared

    return open_shared(url)


log = logging.getLogger("crawlguard")
violation_log = logging.getLogger("crawlguard.violations")

COUNT_FLUSH_SECONDS = 10.0
ROBOTS_LANE = "/robots.txt"  # suffix of the pacing site a tenant's own robots.txt fetches use

HELD = "held"
"""The request-count decision of a request that `delay` pacing held until its slot (its record
says kind `crawl-delay`, action `delayed`). Not a violation: the tenant chose delay pacing and
the proxy paced it. Counted once when the hold starts, also if the client leaves before its
slot (the request was never refused)."""


def ssl_context(cfg: Config) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cfg.proxy.upstream_ca_file:
        try:
            ctx.load_verify_locations(cfg.proxy.upstream_ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(
                f"proxy.upstream_ca_file: cannot load {cfg.proxy.upstream_ca_file!r}: {reason}"
            ) from None
    return ctx


class Runtime:
    """Per-process crawlguard state: tenants, robots cache, store, metrics."""

    def __init__(self, cfg: Config, *, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.tenants: dict[str, TenantRuntime] = {}
        self.auth: Authenticator[TenantRuntime] = Authenticator({})
        self.tenant_set = TenantSet.empty()  # tenants, auth and the shared token index
        # `crawlguard dev` (127.0.0.1 only): every request is this tenant's, with or without
        # credentials. Never set from a config file.
        self.open_tenant: str | None = None
        # tenancy.source: store (crawlguard.tenancy): tenants from the registry, kept current
        self.tenancy: TenantRegistry | None = None
        self.tenant_sync: TenantSync | None = None
        if cfg.tenancy.source == "store":
            self._open_tenancy(cfg)
        else:
            self._load_tenants(cfg)
        # postgresql://: records spool to <confdir>/store-spool while PostgreSQL is down
        self.store: ViolationStore = open_store(
            cfg.store.url, spool_dir=store_spool_dir(cfg.proxy.confdir), metrics=self.metrics
        )
        self.egress = EgressPolicy.from_config(cfg.destinations)
        self.robots = RobotsCache(
            egress=self.egress,
            user_agent=cfg.robots.user_agent,
            max_age=cfg.robots.max_age,
            fetch_timeout=cfg.robots.fetch_timeout,
            max_origins=cfg.robots.max_origins,
            parse_timeout=cfg.robots.parse_timeout,
            parse_pool=RobotsParsePool(cfg.robots.parse_workers, metrics=self.metrics),
            ssl=ssl_context(cfg),
            on_fetch=lambda result: self.metrics.robots_fetches.labels(result).inc(),
            on_fetch_seconds=self.metrics.robots_fetch_seconds.observe,
            on_lookup=lambda result: self.metrics.robots_cache_lookups.labels(result).inc(),
            # redis:// state: one robots.txt cache (and one fetch per origin) for all replicas;
            # never refuses a request when Redis is down (fetches per process instead).
            shared=open_shared_robots(cfg.state.url),
        )
        self.pacer = Pacer(
            open_state(
                cfg.state.url, cfg.state.on_error, on_fallback=self.metrics.state_fallbacks.inc
            ),
            default_min_interval=cfg.pacing.default_min_interval,
            max_hold=cfg.pacing.max_hold,
        )
        # the platform's one budget per site, shared by every tenant (and replica, on redis://)
        self.budget = SiteBudget(
            # one Redis pool with pacing; its outages are counted once, by pacing's state
            open_sites(cfg.state.url, cfg.state.on_error, pacing=self.pacer.state),
            cfg.platform,
            default_min_interval=cfg.pacing.default_min_interval,
        )
        self.metrics.held_requests_limit.set(cfg.pacing.max_held)
        self.held = HeldPool(cfg.pacing.max_held, cfg.pacing.max_hold)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crawlguard-store")
        from crawlguard.store import StoreWriter
        from crawlguard.store.disk import store_disk_path
        from crawlguard.store.fold import Folder

        # violation records: bounded queue, group commit, retention (same thread as the
        # counts), folding of repeated refusals, disk gauges
        self.store_writer = StoreWriter(
            self.store,
            self._writer,
            metrics=self.metrics,
            retention_days=cfg.store.retention_days,
            folder=Folder(
                after=cfg.store.fold_after,
                tenant_after=cfg.store.fold_tenant_after,
                interval=cfg.store.fold_interval,
            ),
            disk_path=store_disk_path(cfg.store.url, cfg.proxy.confdir),
            min_free_bytes=cfg.store.min_free_bytes,
        )
        self._counts: Counter[tuple[str, str]] = Counter()
        self._flusher: asyncio.Task[None] | None = None
        from crawlguard.policy.limits import TenantLimits

        # per tenant id, kept across reloads: in-flight counts and max_rps buckets
        self.limits = TenantLimits()

    def _load_tenants(self, cfg: Config) -> None:
        """Tenants and credentials from `cfg` (at start: nothing is serving yet)."""
        tenants = self._file_tenants(cfg)
        if tenants is not None:
            self._install(self.build_tenants(tenants))

    @staticmethod
    def _file_tenants(cfg: Config) -> Sequence[Tenant] | None:
        """The tenants a config file brings: the one place that decides whether start-up and
        a reload take tenants from the file. None: they come from elsewhere (the tenant
        registry, through `replace_tenants`), and a reload leaves the running set alone."""
        return None if cfg.tenancy.source == "store" else cfg.tenants

    def build_tenants(
        self,
        tenants: Sequence[Tenant],
        retired: Mapping[str, Sequence[tuple[bytes, float]]] | None = None,
    ) -> TenantSet:
        """A new tenant set, reusing what the running one has unchanged. Pure and thread-safe
        (it only reads the running set), so it runs off the event loop."""
        # The collector paused: a full collection over the objects just made would hold the
        # interpreter lock, so the event loop, for a quarter of a second at 100,000 tenants.
        with collector_paused():
            return build_tenant_set(tenants, retired, self.tenant_set)

    def _install(self, built: TenantSet) -> None:
        """Swap the running tenant set in one step on the loop: a request sees one set."""
        built.activate()
        self.tenant_set, self.tenants, self.auth = built, built.tenants, built.auth

    def _open_tenancy(self, cfg: Config) -> None:
        """The registry and its running set, loaded here (off the loop) before the proxy
        serves; the file's tenants seed it. A database that is down leaves the set empty: the
        sync seeds and loads it once the database answers."""
        from crawlguard.tenancy import TenancyError, open_registry
        from crawlguard.tenancy.sync import TenantSync, seed

        try:
            self.tenancy = open_registry(cfg)
        except TenancyError as exc:
            raise ConfigError(f"tenancy.source: store: {exc.message}") from None
        tenants: list[Tenant] = []
        retired: dict[str, list[tuple[bytes, float]]] = {}
        pending: Config | None = None
        try:
            seed(self.tenancy, cfg)
            tenants, retired = self.tenancy.running_set()
        except TenancyError as exc:
            if exc.status != 503:
                self.tenancy.close()
                raise ConfigError(f"tenancy.source: store: {exc.message}") from None
            log.warning("tenant registry unavailable at start (%s); retrying", exc.message)
            pending = cfg
        # rotated tokens still in their grace work from the first request too
        self._install(self.build_tenants(tenants, retired))
        self.tenant_sync = TenantSync(self.tenancy, self.replace_tenants, seed=pending)

    async def replace_tenants(
        self,
        tenants: Sequence[Tenant],
        *,
        retired: Mapping[str, Sequence[tuple[bytes, float]]] = {},  # read only
    ) -> None:
        """Build the new tenant set off the event loop (a thread), reuse unchanged
        TenantRuntime objects, swap atomically. `retired`: per tenant id, old token digests
        still accepted until the given wall-clock time (time.time()) — a rotation's grace."""
        self._install(await asyncio.to_thread(self.build_tenants, tenants, retired))

    async def reload_async(self, load: Callable[[], Config]) -> list[str]:
        """`reload` of the config `load` returns (SIGHUP, `crawlguard reload`): reading it and
        building the tenant set happen in a thread, so the event loop never waits for
        100,000 tenants, and objects of the file's unchanged tenants die in that thread too
        (the running ones serve on). Raises what `load` raises (ConfigError)."""

        def prepare() -> tuple[Config, TenantSet | None]:
            with collector_paused():  # through load and build: see build_tenants
                return build(load())

        def build(cfg: Config) -> tuple[Config, TenantSet | None]:
            tenants = self._file_tenants(cfg)
            if tenants is None:
                return cfg, None  # the running set stays (`reload` asks again, on the loop)
            built = self.build_tenants(tenants)
            if built.tenants.keys() != {t.id for t in cfg.tenants}:
                return cfg, built
            running = cfg.model_copy(update={"tenants": built.configs()})
            read = cfg.tenants
            del cfg
            while read:  # one at a time: freeing 100,000 at once would hold the loop too
                read.pop()
            return running, built

        cfg, built = await asyncio.to_thread(prepare)
        return self.reload(cfg, built=built)

    def reload(self, cfg: Config, *, built: TenantSet | None = None) -> list[str]:
        """Apply a new config to the running proxy; returns what it could not apply.

        Tenants (credentials, tokens, modes, pacing, limits), `pacing` and `destinations`
        change in place; connections, pacing state and the robots.txt cache are kept. The
        rest (listen addresses, store, state, robots fetching) needs a restart: those
        keys keep their running values and are named in the result. The operator token
        (`admin.token_sha256` / `token_env`) applies in place: the admin server reads it per
        request, so changing it revokes the old token and its dashboard sessions at once.
        """
        kept = [
            name
            for name in ("proxy", "admin", "store", "state", "robots")
            if getattr(cfg, name) != getattr(self.cfg, name)
        ]
        running = self.cfg.admin
        if (cfg.admin.listen_host, cfg.admin.port) == (running.listen_host, running.port):
            kept = [name for name in kept if name != "admin"]  # only the token changed
        if cfg.tenancy.source != self.cfg.tenancy.source:  # where tenants come from
            kept.append("tenancy")
        listen = {"listen_host": running.listen_host, "port": running.port}
        cfg = cfg.model_copy(update={"admin": cfg.admin.model_copy(update=listen)})
        if self.tenancy is None:  # tenancy.source: store: the registry's, not the file's
            if built is None and (tenants := self._file_tenants(cfg)) is not None:
                built = self.build_tenants(tenants)
            if built is not None:
                self._install(built)
        self.pacer.default_min_interval = cfg.pacing.default_min_interval
        self.pacer.max_hold = cfg.pacing.max_hold
        self.held.limit, self.held.window = cfg.pacing.max_held, cfg.pacing.max_hold
        self.budget.configure(
            cfg.platform,
            default_min_interval=cfg.pacing.default_min_interval,
        )
        self.metrics.held_requests_limit.set(cfg.pacing.max_held)
        self._bind_gauges()
        if cfg.destinations != self.cfg.destinations:
            self.egress.reconfigure(cfg.destinations)  # shared with the robots.txt fetcher
        self.cfg = cfg.model_copy(
            update={name: getattr(self.cfg, name) for name in kept if name != "admin"}
        )
        return kept

    # -- lifecycle ---------------------------------------------------------------------------

    def _bind_gauges(self) -> None:
        """Gauges read at scrape time from this Runtime's live objects (rebound on reload, so a
        shared `Metrics` always reports the Runtime that runs)."""
        robots = self.robots
        self.metrics.robots_cache_entries.set_function(lambda: float(len(robots)))

    def start(self) -> None:
        self._bind_gauges()
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        self.store_writer.start()
        if self.tenant_sync is not None:
            self.tenant_sync.start(asyncio.get_running_loop())

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self.tenant_sync is not None:
            await asyncio.to_thread(self.tenant_sync.stop)
        if self.tenancy is not None:
            await asyncio.to_thread(self.tenancy.close)
        await self.store_writer.close()  # every accepted record is committed first
        await self.flush_counts()
        await self.robots.close()
        await self.pacer.state.close()
        await self.budget.state.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self.store.close)
        self._writer.shutdown(wait=True)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(COUNT_FLUSH_SECONDS)
            await self.flush_counts()

    async def flush_counts(self) -> None:
        if not self._counts:
            return
        counts, self._counts = dict(self._counts), Counter()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._writer, self.store.add_request_counts, counts, utc_now_iso()
            )
        except Exception:
            log.exception("could not write request counts; they are kept for the next flush")
            self._counts.update(counts)

    # -- the request path --------------------------------------------------------------------

    def authenticate(self, header: str | None, *, count: bool = True) -> TenantRuntime | None:
        """The tenant of a `Proxy-Authorization` value. `count=False`: not a request the proxy
        answers with 407 (the engine refuses it anyway), so not an auth failure either."""
        if self.open_tenant is not None:
            return self.tenants.get(self.open_tenant)
        tenant = self.auth.authenticate(header)
        if tenant is None and count:
            self.metrics.auth_failures.inc()
        return tenant

    def take_hold(self, tenant: TenantRuntime) -> Kind | None:
        """A place in the held pool for one `delay`-paced request (`HeldPool.take`)."""
        refused = self.held.take(tenant.id)
        if refused is None:
            self.metrics.held_by_tenant.labels(tenant.id).set(self.held.held[tenant.id])
        return refused

    def give_back_hold(self, tenant: TenantRuntime) -> None:
        self.held.give_back(tenant.id)
        self.metrics.held_by_tenant.labels(tenant.id).set(self.held.held.get(tenant.id, 0))

    def connect_credentials(self, header: str | None) -> tuple[TenantRuntime, bytes | None] | None:
        """The tenant of a CONNECT's `Proxy-Authorization` and the token digest it presented,
        which its tunnel keeps (None in `crawlguard dev`: no credentials)."""
        if self.open_tenant is not None:
            tenant = self.tenants.get(self.open_tenant)
            return (tenant, None) if tenant is not None else None
        checked = self.auth.check(header)
        if checked is None:
            self.metrics.auth_failures.inc()
        return checked

    def tunnel_tenant(self, tenant_id: str, credential: bytes | None) -> TenantRuntime | None:
        """The running set's tenant for a tunnel opened by `tenant_id` with `credential`;
        None once that tenant is gone or that token is no longer accepted (rotated and its
        grace over): the tunnel must end."""
        if self.open_tenant is not None or credential is None:
            tenant = self.tenants.get(tenant_id)
            return tenant if credential is None and self.open_tenant is not None else None
        return self.auth.accepts(tenant_id, credential, time.time())

    def dial_refusal(self, address: str, port: int) -> Decision | None:
        """The running destination policy on an address already resolved and pinned (a tunnel
        opened before a reload, the connection mitmproxy is about to dial)."""
        reason = self.egress.dial_reason(address, port)
        if reason is None:
            return None
        return Decision(Kind.DESTINATION_FORBIDDEN, rule="destinations", reason=reason)

    def pacing_site(self, target: Target) -> str:
        """The site of `target` one pacing slot (and an origin back-off) covers."""
        return target.origin if self.cfg.pacing.scope == "origin" else target.host

    def pacing_sites(self, req: RequestInfo, pinned: str | None) -> tuple[str, tuple[str, ...]]:
        """The slot a request is paced on, and further ones it also takes (`pacing.scope`)."""
        assert req.target is not None
        site = self.pacing_site(req.target)
        also = (f"@{pinned}",) if self.cfg.pacing.scope == "address" and pinned else ()
        if req.is_robots_txt:
            return site + ROBOTS_LANE, tuple(a + ROBOTS_LANE for a in also)
        return site, also

    async def admit(self, target: Target) -> str | Decision:
        """The checked address to dial for `target`, or the `destination-forbidden` decision."""
        resolution = await self.egress.admit(target.host, target.port)
        if resolution.reason is not None:
            return Decision(
                Kind.DESTINATION_FORBIDDEN, rule="destinations", reason=resolution.reason
            )
        return resolution.pinned

    async def robots_txt(self, req: RequestInfo, tenant: TenantRuntime) -> RobotsEntry:
        """The origin's robots.txt: cached, or fetched once and parsed in the tenant's turn."""
        return await self.robots.get(req.robots_origin, tenant=tenant.id)

    async def cancel(self, outcome: PacingOutcome) -> None:
        await self.pacer.cancel(outcome)

    async def pace(
        self,
        tenant: TenantRuntime,
        req: RequestInfo,
        decision: Decision,
        pinned: str | None = None,
    ) -> tuple[Decision, PacingOutcome]:
        """Pacing for a request the rest of the policy allows, on the slots `pacing_sites`
        names (`pinned`: the address it is dialled at). A held outcome still needs its place
        in the held pool (`take_hold`). A shared state that is down with
        `state.on_error: closed` decides `state-unavailable`."""
        site, also = self.pacing_sites(req, pinned)
        try:
            outcome = await self.pacer.pace(
                tenant.id,
                site,
                also=also,
                crawl_delay=decision.crawl_delay,
                request_rate=decision.request_rate,
                hold=tenant.cfg.pacing == "delay",
                enforce=tenant.enforce,
            )
        except StateUnavailable as exc:  # the cause is logged once per outage, not told here
            unavailable = Decision(
                Kind.STATE_UNAVAILABLE,
                rule="state.on_error: closed",
                reason="crawlguard cannot reach its shared pacing state, so it cannot tell "
                "whether this request keeps the site's crawl delay.",
                retry_after=exc.retry_after,
                crawl_delay=decision.crawl_delay,
                robots_sha256=decision.robots_sha256,
            )
            key = pacing_key(tenant.id, site)
            return unavailable, PacingOutcome(
                Kind.STATE_UNAVAILABLE, False, 0.0, exc.retry_after, 0.0, key
            )
        if outcome.kind is Kind.ALLOWED:
            return decision, outcome
        paced = Decision(
            outcome.kind,
            rule=pacing_rule(decision, outcome, self.cfg.pacing.default_min_interval),
            reason=f"at most one request every {outcome.interval:g} s to {site} "
            f"for tenant {tenant.id} (pacing.scope: {self.cfg.pacing.scope}).",
            retry_after=outcome.retry_after,
            crawl_delay=outcome.interval,
            robots_sha256=decision.robots_sha256,
            delay_seconds=round(outcome.wait, 3) if outcome.held else None,
        )
        return paced, outcome

    async def site_turn(
        self,
        tenant: TenantRuntime,
        req: RequestInfo,
        decision: Decision,
        outcome: PacingOutcome,
        rules: RobotsRules | None,
    ) -> SiteTurn | Decision:
        """The site's shared budget for a request pacing forwards (`crawlguard.policy.budget`):
        a granted turn, a pending one (held: asked again until its fair slot), or the
        `site-budget` refusal of a `reject` tenant (its own pacing slot given back: it stayed
        within its pacing). `state-unavailable` when a shared state is down and closed."""
        assert req.target is not None
        budget = self.budget
        site = budget.site_of(req.target.host)
        seconds, source, limits = budget.site_interval(site, rules, self.tenant_set.index)
        hold = tenant.cfg.pacing == "delay"
        ask = SiteAsk(
            site,
            tenant.id,
            weight=tenant.cfg.weight,
            interval=seconds,
            gap=outcome.interval if hold else 0.0,
            max_concurrency=limits.max_concurrency,
            whole_seconds=not hold,
            force=not tenant.enforce,
        )
        if not budget.shared and ask.interval <= 0 and ask.max_concurrency is None:
            return SiteTurn(ask, granted=True, source=source)  # per-tenant, uncapped
        if outcome.held:  # its own slot first: the site is asked when that comes
            return SiteTurn(ask, source=source)
        try:
            grant = await budget.ask(ask)
        except StateUnavailable as exc:
            await self.pacer.cancel(outcome)
            return site_unavailable(site, exc, decision.robots_sha256)
        budget.note_rate(site, grant.rate)
        if grant.granted:
            return SiteTurn(ask, granted=True, lease=grant.lease, source=source)
        if hold:
            return SiteTurn(ask, refusal=grant, source=source)
        await self.pacer.cancel(outcome)  # not the tenant's doing: its own slot goes back
        return budget_refusal(site, grant, source, tenant.id, decision.robots_sha256)

    async def site_wait(
        self, turn: SiteTurn, seconds: float, robots_sha256: str | None
    ) -> tuple[str | None, Decision | None]:
        """A held request's turn at its site, asked again at each fair-slot estimate for at
        most `seconds`: (its lease, None) once granted, or (None, the refusal): `site-budget`
        when its fair slot comes later, `state-unavailable` when a shared state is down."""
        budget = self.budget
        try:
            grant = await budget.wait_turn(turn, budget.clock() + seconds)
        except StateUnavailable as exc:
            return None, site_unavailable(turn.ask.site, exc, robots_sha256)
        budget.note_rate(turn.ask.site, grant.rate)
        if grant.granted:
            return grant.lease, None
        refused = budget_refusal(turn.ask.site, grant, turn.source, turn.ask.tenant, robots_sha256)
        return None, refused

    def site_of(self, host: str) -> str:
        """The site key of a canonical host (`platform.site_key`)."""
        return self.budget.site_of(host)

    async def site_views(self, limit: int) -> list[SiteView]:
        """The busiest sites (most slots granted in the last minute), for operators."""
        return await self.budget.views(limit)

    async def site_view(self, site: str) -> SiteView | None:
        return await self.budget.view(site)

    async def release_site(self, site: str, lease: str | None) -> None:
        """A request that held a site's concurrency lease ended."""
        with contextlib.suppress(StateUnavailable):  # it expires on its own (LEASE_TTL)
            await self.budget.release(site, lease)

    async def observe_site(
        self,
        host: str,
        status: int,
        retry_after: str | None,
        seconds: float | None,
        headers: Mapping[str, str],
    ) -> None:
        """A site's answer to any tenant feeds the platform's back-off on that site (`shared`
        mode: in `per-tenant` mode each tenant backs off alone, as pacing does)."""
        if not self.budget.shared:
            return
        cap = rate_cap(headers)
        site = self.budget.site_of(host)
        try:
            slowed = await self.budget.observe(
                site, status, retry_after, seconds, (cap.max_rps, cap.pause)
            )
        except StateUnavailable:
            return
        if slowed:
            self.metrics.site_backoffs.inc()

    def count(self, tenant: TenantRuntime, decision: Kind | str) -> None:
        """One request's decision for crawlguard_requests_total and the store's request counts:
        a Kind, or `HELD` for a request delay pacing held and then forwarded (not refused)."""
        label = str(decision)
        self.metrics.requests.labels(tenant.id, label).inc()
        self._counts[(tenant.id, label)] += 1

    async def observe_response(
        self, tenant: TenantRuntime, site: str, status: int, retry_after: str | None
    ) -> None:
        """An origin's answer to this tenant: 429/503 start (or extend) a back-off on the
        pacing site it was paced on (`pacing_sites`, not its robots.txt lane)."""
        await self.pacer.observe_response(tenant.id, site, status, retry_after)
        if status in THROTTLE_STATUSES:
            self.metrics.origin_backoffs.labels(tenant.id).inc()

    async def record(
        self, tenant: TenantRuntime, decision: Decision, action: Action, req: RequestInfo
    ) -> None:
        """Write the violation durably (store and log) before the caller answers.

        The record is bounded (`ViolationRecord.bounded`) for both copies. Raises
        `crawlguard.store.StoreBacklogged` when the store's write queue is full: then nothing
        was recorded or logged, and the caller must refuse the request instead. A refusal
        beyond the fold rate (`store.fold_after`) returns at once: it is counted into the
        folded record its interval writes (and logs) when it ends.
        """
        rec = ViolationRecord(
            ts=utc_now_iso(),
            tenant=tenant.id,
            kind=decision.kind.value,
            action=action.value,
            method=req.method,
            url=req.url,
            user_agent=req.user_agent,
            rule=decision.rule,
            crawl_delay=decision.crawl_delay,
            retry_after=decision.retry_after,
            robots_sha256=decision.robots_sha256,
            delay_seconds=decision.delay_seconds,
            reason=decision.reason,
        ).bounded()
        body = None
        if decision.robots_sha256 and req.target is not None:
            entry = self.robots.peek(req.robots_origin)
            if entry is not None and entry.sha256 == decision.robots_sha256:
                body = entry.body
        if self.store_writer.fold(rec, body):
            if action is not Action.DELAYED:
                self.metrics.violations.labels(tenant.id, decision.kind.value).inc()
            return
        # Queued first: StoreBacklogged leaves no half-made record behind.
        committed = self.store_writer.submit(rec, body)
        if action is not Action.DELAYED:  # held, then forwarded: paced as asked, no violation
            self.metrics.violations.labels(tenant.id, decision.kind.value).inc()
        violation_log.info(log_line(rec))
        # A failed batch is counted and logged by the writer; the JSON line above is the
        # second copy, so the caller answers all the same.
        await committed
