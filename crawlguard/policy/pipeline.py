"""The order of checks: one function takes what the proxy read of a request and returns its
decision. This is the only place the order is written; the addon, `crawlguard explain`, the
dev mode, the pytest plugin and the benchmarks all call `decide`.

    head → identity → the tenant's host globs → destination (resolve and classify, or a
    tunnel's pinned address against the running policy) → mode `off` → user agent →
    tenant limits → robots.txt → pacing → the site's shared budget → the held pool

The first refusal decides. The head comes first: a head the origin could read differently
from the proxy (control characters, a `Connection` header naming framing, two `Host`s) is
refused before anything reads it. Tenant limits come before robots.txt and pacing, so a
request over them fetches no robots.txt and takes no pacing slot. The site budget comes after
the tenant's own pacing: a tenant faster than its Crawl-delay is its own violation; one within
it that waits for the platform's shared pace is not (`site-budget`).

No I/O of its own: what needs the world (DNS, robots.txt, the pacing state) is asked of a
`Context`, which the proxy's runtime implements live and `explain` offline.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Protocol

from crawlguard.policy.budget import SiteTurn
from crawlguard.policy.decisions import Decision, Kind
from crawlguard.policy.headers import head_problem
from crawlguard.policy.identity import IdentityError, Target, canonical_host, request_identity
from crawlguard.policy.limits import TenantLimits, host_decision
from crawlguard.policy.pacing import PacingOutcome, retry_after_seconds
from crawlguard.policy.plan import Plan, plan
from crawlguard.policy.robots import RobotsRules
from crawlguard.policy.tenants import TenantRuntime
from crawlguard.policy.ua import UAVerdict

ROBOTS_METHODS = frozenset({"GET", "HEAD"})

AMBIGUOUS = UAVerdict(
    Kind.UA_AMBIGUOUS,
    "ambiguous:several-user-agents",
    "The request carries more than one User-Agent header; the site would see a client "
    "crawlguard did not check.",
)


def invalid(reason: str) -> Decision:
    return Decision(Kind.REQUEST_INVALID, rule="canonical request", reason=reason)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the proxy read of one request, before any check: the target as the request line
    (or the tunnel's CONNECT) names it, and the header fields as received."""

    method: str
    scheme: str
    host: str
    port: int | None
    path: str  # the request target as sent (origin-form)
    fields: tuple[tuple[bytes, bytes], ...] = ()
    pinned: str | None = None  # a tunnel's address, admitted with its (canonical) host at CONNECT

    @property
    def user_agents(self) -> list[str]:
        return [
            value.decode("utf-8", "surrogateescape")
            for name, value in self.fields
            if name.lower() == b"user-agent"
        ]

    @property
    def spelling(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One request as decided: its canonical target (what is dialled and forwarded), not the
    client's spelling of it. `target` is None only for a request that has no canonical form;
    `raw` is then its spelling, kept for the record."""

    method: str
    target: Target | None
    user_agent: str | None
    raw: str = ""

    @property
    def url(self) -> str:
        if self.target is None:
            return self.raw
        if self.method in ("CONNECT", "TUNNEL"):  # authority-form, as a CONNECT line says it
            t = self.target
            return f"[{t.host}]:{t.port}" if ":" in t.host else f"{t.host}:{t.port}"
        return self.target.url

    @property
    def origin(self) -> str:
        assert self.target is not None
        return self.target.origin

    @property
    def robots_origin(self) -> tuple[str, str, int]:
        assert self.target is not None
        return (self.target.scheme, self.target.host, self.target.port)

    @property
    def is_robots_txt(self) -> bool:
        """A GET or HEAD of exactly /robots.txt: exempt from robots rules (RFC 9309 §2.2.2:
        the file is always allowed), and paced on a lane of its own, so a crawler's one
        robots.txt fetch does not take its first page's slot, and a loop of them is paced
        all the same. Other methods and a query make it an ordinary request."""
        return (
            self.target is not None
            and self.target.path == "/robots.txt"
            and self.method in ROBOTS_METHODS
        )


class RobotsAnswer(Protocol):
    """What the robots.txt step needs of a cache entry (crawlguard.robots.cache.RobotsEntry)."""

    @property
    def available(self) -> bool: ...
    @property
    def rules(self) -> RobotsRules: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def result(self) -> str: ...
    def retry_after(self, now: float) -> int: ...


class Context(Protocol):
    """The world as the pipeline asks it: the proxy's runtime, or `explain`'s offline view."""

    @property
    def limits(self) -> TenantLimits: ...

    async def admit(self, target: Target) -> str | Decision:
        """The checked address to dial for `target`, or `destination-forbidden`."""
        ...

    def dial_refusal(self, address: str, port: int) -> Decision | None:
        """The running destination policy on an address pinned earlier (a tunnel's)."""
        ...

    async def robots_txt(self, req: RequestInfo, tenant: TenantRuntime) -> RobotsAnswer:
        """The origin's robots.txt (fetched, cached, parsed in the tenant's fair turn)."""
        ...

    async def pace(
        self, tenant: TenantRuntime, req: RequestInfo, decision: Decision, pinned: str | None
    ) -> tuple[Decision, PacingOutcome]:
        """Pacing for an allowed request: its slot taken, held or refused."""
        ...

    def take_hold(self, tenant: TenantRuntime) -> Kind | None:
        """A place in the held pool for a request pacing holds (`HeldPool.take`)."""
        ...

    async def cancel(self, outcome: PacingOutcome) -> None:
        """A held slot is not used after all: give it back."""
        ...

    async def site_turn(
        self,
        tenant: TenantRuntime,
        req: RequestInfo,
        decision: Decision,
        outcome: PacingOutcome,
        rules: RobotsRules | None,
    ) -> SiteTurn | Decision:
        """The site's shared budget for a request pacing forwards: a granted turn, a pending
        one (held until its fair slot), or a refusal (`site-budget`, `state-unavailable`)."""
        ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one request and what carrying it out needs: the address to dial, the
    pacing outcome of a held request, and the user-agent verdict (explain shows it)."""

    info: RequestInfo
    pinned: str | None
    plan: Plan
    outcome: PacingOutcome | None = None
    ua: UAVerdict | None = None
    turn: SiteTurn | None = None  # the request's place in its site's shared budget

    @property
    def decision(self) -> Decision:
        return self.plan.decision


async def decide(
    facts: Facts,
    tenant: TenantRuntime,
    ctx: Context,
    slots: MutableMapping[str, object] | None = None,
) -> Verdict:
    """Evaluate `facts` for `tenant` against the running config behind `ctx`. `slots`: where a
    forwarded request keeps its tenant concurrency slot (the flow's metadata) until the
    proxy releases it."""
    mode = tenant.cfg.mode
    tunnel = facts.pinned is not None  # its authority was made canonical at its CONNECT
    user_agents = facts.user_agents
    ua = ", ".join(user_agents) if user_agents else None
    problem = head_problem(facts.fields)
    if problem is not None:
        raw = RequestInfo(facts.method, None, ua, facts.spelling)
        return Verdict(raw, None, plan(mode, invalid(problem)))
    try:
        target = request_identity(
            facts.scheme, facts.host, facts.port, facts.path, host_is_canonical=tunnel
        )
    except IdentityError as exc:
        raw = RequestInfo(facts.method, None, ua, facts.spelling)
        return Verdict(raw, None, plan(mode, invalid(str(exc))))
    info = RequestInfo(facts.method, target, ua)
    pinned = await _destination(info, tenant, ctx, facts.pinned)
    if isinstance(pinned, Decision):  # refused in every mode, `off` included
        return Verdict(info, None, plan(mode, pinned))
    if mode == "off":
        return Verdict(info, pinned, plan(mode, Decision(Kind.ALLOWED)))

    verdict = AMBIGUOUS if len(user_agents) > 1 else tenant.ua.evaluate(ua)
    if not verdict.allowed:
        refused = Decision(verdict.kind, rule=verdict.rule, reason=verdict.reason)
        return Verdict(info, pinned, plan(mode, refused), ua=verdict)
    metadata: MutableMapping[str, object] = {} if slots is None else slots
    limited = ctx.limits.check(tenant.cfg, metadata)
    if not limited.allowed:
        step = plan(mode, limited)
        if not step.refuse:  # monitor: forwarded over the limit, so in flight all the same
            ctx.limits.hold_for(tenant.id, metadata)
        return Verdict(info, pinned, step, ua=verdict)

    entry = await ctx.robots_txt(info, tenant)
    decision = robots_decision(info, verdict, entry, time.monotonic())
    if not decision.allowed:
        return Verdict(info, pinned, plan(mode, decision), ua=verdict)

    decision, outcome = await ctx.pace(tenant, info, decision, pinned)
    held, turn = outcome.held, None
    if outcome.forward and not info.is_robots_txt:  # /robots.txt: its own lane, no budget
        site = await ctx.site_turn(tenant, info, decision, outcome, entry.rules)
        if isinstance(site, Decision):
            return Verdict(info, pinned, plan(mode, site), ua=verdict)
        turn = site
        if not held and not turn.granted:  # a `delay` tenant waits for its fair slot
            held = True
            decision = Decision(
                Kind.SITE_BUDGET,
                rule="platform site budget",
                reason="held for the tenant's fair slot of the site's shared budget",
                crawl_delay=turn.ask.interval,
                robots_sha256=decision.robots_sha256,
                delay_seconds=round(turn.wait, 3),
            )
    if held and (busy := ctx.take_hold(tenant)) is not None:
        await ctx.cancel(outcome)  # no room to hold it: its slot goes back
        return Verdict(info, pinned, plan(mode, pool_refusal(busy, outcome, decision)), ua=verdict)
    return Verdict(info, pinned, plan(mode, decision, held=held), outcome, verdict, turn)


async def connect(facts: Facts, tenant: TenantRuntime, ctx: Context) -> Verdict:
    """A CONNECT: the steps of `decide` that apply to its authority (identity, the tenant's
    host globs, the destination). Every request inside the tunnel is then decided by `decide`,
    with the address admitted here as `Facts.pinned`."""
    ua = ", ".join(facts.user_agents) or None
    raw = f"{facts.host}:{facts.port}"
    try:
        target = Target("https", canonical_host(facts.host), facts.port or 443, "")
    except IdentityError as exc:
        return Verdict(
            RequestInfo("CONNECT", None, ua, raw), None, plan(tenant.cfg.mode, invalid(str(exc)))
        )
    info = RequestInfo("CONNECT", target, ua, raw)
    pinned = await _destination(info, tenant, ctx, None)
    if isinstance(pinned, Decision):
        return Verdict(info, None, plan(tenant.cfg.mode, pinned))
    return Verdict(info, pinned, plan(tenant.cfg.mode, Decision(Kind.ALLOWED)))


async def _destination(
    info: RequestInfo, tenant: TenantRuntime, ctx: Context, pinned: str | None
) -> str | Decision:
    """The tenant's host globs (before any DNS), then the address to dial: resolved and
    classified, or an address admitted earlier re-classified against the running policy."""
    assert info.target is not None
    denied = host_decision(tenant.cfg, info.target.host)
    if denied is not None:
        return denied
    if pinned is not None:
        return ctx.dial_refusal(pinned, info.target.port) or pinned
    return await ctx.admit(info.target)


def robots_decision(
    req: RequestInfo, verdict: UAVerdict, entry: RobotsAnswer, now: float
) -> Decision:
    """robots.txt for a request whose user agent passed: the tenant's group matched with its
    registered token. /robots.txt itself (GET/HEAD) is allowed, its Crawl-delay kept for the
    pacing of its lane; an unavailable file is a complete disallow (RFC 9309 §2.3.1.4)."""
    assert req.target is not None
    token = verdict.token or ""  # the registered token this UA carries
    if req.is_robots_txt:
        if not entry.available:
            return Decision(Kind.ALLOWED)
        rv = entry.rules.decide(token, req.target.path, canonical=True)
        return Decision(
            Kind.ALLOWED,
            crawl_delay=rv.crawl_delay,
            request_rate=rv.request_rate,
            robots_sha256=entry.sha256,
        )
    if not entry.available:
        cause = getattr(entry, "cause", None)  # one the operator can fix (RobotsEntry.cause)
        return Decision(
            Kind.ROBOTS_UNREACHABLE,
            rule=f"robots.txt unavailable ({entry.result})",
            reason=f"{req.origin}/robots.txt could not be fetched ({cause or entry.result}).",
            retry_after=entry.retry_after(now),
        )
    rv = entry.rules.decide(
        token, req.target.path, fetch=req.method in ROBOTS_METHODS, canonical=True
    )
    if not rv.allowed:
        return Decision(
            Kind.ROBOTS_DISALLOW,
            rule=rv.rule,
            reason=f"robots.txt disallows this URL for {token}.",
            crawl_delay=rv.crawl_delay,
            request_rate=rv.request_rate,
            robots_sha256=entry.sha256,
        )
    return Decision(
        Kind.ALLOWED,
        crawl_delay=rv.crawl_delay,
        request_rate=rv.request_rate,
        robots_sha256=entry.sha256,
    )


def pool_refusal(kind: Kind, outcome: PacingOutcome, paced: Decision) -> Decision:
    """A request delay pacing would hold, refused for want of room in the held pool: 503
    `proxy-busy` when others' holds fill it, 429 `crawl-delay` when this tenant already
    holds its share (`HeldPool.take`)."""
    busy = kind is Kind.PROXY_BUSY
    return Decision(
        kind,
        rule="pacing.max_held" if busy else f"{paced.rule}; pacing.max_held: fair share held",
        reason="the requests other tenants hold for their crawl delays fill the proxy's held "
        "pool right now; this request would have been held for its slot."
        if busy
        else f"{paced.reason} Your tenant already holds its fair share of the proxy's held "
        "requests.",
        retry_after=outcome.retry_after or retry_after_seconds(paced.delay_seconds or 1.0),
        crawl_delay=outcome.interval or paced.crawl_delay,
        robots_sha256=paced.robots_sha256,
    )


__all__ = [
    "AMBIGUOUS",
    "Context",
    "Facts",
    "RequestInfo",
    "Verdict",
    "connect",
    "decide",
    "invalid",
    "pool_refusal",
    "robots_decision",
]
