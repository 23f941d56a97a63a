"""`crawlguard explain`: why the proxy would allow or refuse one URL, in plain words.

For crawler developers who got a 403/429 (or fear one): it walks the proxy's own checks in
the proxy's order, with the proxy's own code, and says which one decides and how to comply:

1. the canonical URL (`identity.request_identity`): what the proxy judges and forwards;
2. the destination: the tenant's `allow_hosts`/`deny_hosts` and `destinations.allowed_ports`
   always; the resolved addresses only when robots.txt is fetched live (offline, no DNS);
3. the user agent (`policy.ua`): tenant-less like `crawlguard lint-ua`, or exactly as the
   proxy does for `--config C --tenant T` (that tenant's tokens, the others' as foreign);
4. robots.txt: `--robots-file F`, or the live file fetched with the proxy's `RobotsCache`
   and `EgressPolicy` built from the config (defaults: `allow_private: false`), so the
   answer includes what the proxy's fetcher would see (status, SHA-256, cache lifetime);
5. pacing: the Crawl-delay / Request-rate that applies and the interval that makes;
6. the site budget (crawlguard.cli.explain_sites): the platform's pace on the site, shared by
   all tenants, this tenant's share of it, and with a shared state.url its live view.

Exit codes as `crawlguard check`: 0 allowed, 1 the proxy would refuse it in `enforce` mode
(for a `monitor` tenant: forwarded, but recorded as a would-be block), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crawlguard.cli import explain_sites
from crawlguard.cli.check import (
    EXIT_ALLOWED,
    EXIT_BAD_INPUT,
    EXIT_DISALLOWED,
    BadInput,
    _read_robots,
    _seconds,
    _url_object,
)
from crawlguard.config import Config, ConfigError, Tenant, load_config
from crawlguard.policy.budget import SiteTurn
from crawlguard.policy.decisions import ADVICE, STATUS, Decision, Kind
from crawlguard.policy.identity import IdentityError, Target, request_identity
from crawlguard.policy.limits import TenantLimits
from crawlguard.policy.pacing import PacingOutcome, interval, interval_source
from crawlguard.policy.pipeline import Facts, RequestInfo, decide
from crawlguard.policy.robots import RobotsRules, RobotsVerdict
from crawlguard.policy.tenants import TenantRuntime
from crawlguard.policy.ua import TokenIndex, UAVerdict, UserAgentPolicy, lint, product_token_of
from crawlguard.state.sites import SiteAsk


def register(sub: Any) -> None:  # argparse._SubParsersAction
    p = sub.add_parser(
        "explain",
        help="explain the proxy's verdict on one URL: UA policy, robots.txt group and rule, delay",
        description="Explain, step by step, what the proxy would decide for URL: the canonical "
        "URL, the user-agent verdict, the robots.txt group and deciding rule, and the pacing "
        "interval. Without --robots-file the live robots.txt is fetched the way the proxy "
        "fetches it. Exit 0: allowed, 1: would be refused, 2: bad input.",
    )
    p.add_argument("url", metavar="URL", help="absolute http(s) URL")
    p.add_argument("--user-agent", required=True, metavar="UA", help="the crawler's User-Agent")
    p.add_argument(
        "--robots-file", metavar="F", help="robots.txt to apply ('-' = stdin); default: fetch it"
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="proxy config: its robots, destinations and pacing settings (default: built-in "
        "defaults, allow_private false)",
    )
    p.add_argument(
        "--tenant", metavar="T", help="judge as this tenant of --config (its product tokens)"
    )
    p.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="also trust this CA (PEM) for the live robots.txt fetch, as proxy.upstream_ca_file "
        "does for the proxy (a local HTTPS site with its own CA); overrides the config's",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_explain)


_BODY = frozenset({"ok", "stale"})  # fetch results whose rules come from a body


@dataclass(frozen=True, slots=True)
class Fetch:
    """What the proxy's robots.txt fetcher got for the origin (None fields: not known)."""

    url: str
    result: str  # RobotsEntry.result: ok, 4xx, 429, 5xx, timeout, error, redirects
    available: bool  # False: complete disallow (robots-unreachable)
    status: int | None
    detail: str
    size: int | None
    lifetime: float  # seconds the entry is trusted (ok/4xx) or until the retry (failures)


@dataclass(frozen=True, slots=True)
class Destination:
    allowed: bool
    rule: str | None  # the setting that refused it
    reason: str | None
    checked: str  # what was checked: "port and tenant hosts" or "addresses, ..."
    address: str | None = None  # the address the proxy would dial


@dataclass(frozen=True, slots=True)
class Outcome:
    """The first check that refuses, or allowed: the decision the proxy would make."""

    kind: Kind
    rule: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything one run found, for the text and the JSON renderings."""

    url: str  # as given
    user_agent: str
    robots_file: str | None
    cfg: Config
    tenant: Tenant | None
    target: Target
    destination: Destination
    ua: UAVerdict
    tokens: list[str]  # the tenant's registered product tokens ([] without --tenant)
    token: str  # the product token robots.txt is matched with
    rules: RobotsRules | None  # None: not fetched or unavailable
    verdict: RobotsVerdict | None
    fetch: Fetch | None  # None: --robots-file, or the destination was refused first
    outcome: Outcome
    site: explain_sites.SiteBudget | None = None  # None: a config without platform.*

    @property
    def sha256(self) -> str | None:
        """SHA-256 of the robots.txt body in force (what violation records cite), if any."""
        if self.rules is None or (self.fetch is not None and self.fetch.result not in _BODY):
            return None
        return self.rules.sha256

    @property
    def exempt(self) -> bool:
        """Exactly /robots.txt: never blocked by robots rules, never paced."""
        return self.target.path == "/robots.txt"


def cmd_explain(args: argparse.Namespace) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # URLs from argv may hold undecodable octets
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        target = _target(args.url)
        cfg, tenant = _load(args.config, args.tenant)
        if args.upstream_ca is not None:
            cfg = _trust(cfg, args.upstream_ca)
        rules = None
        if args.robots_file is not None:
            rules = RobotsRules.parse(_read_robots(args.robots_file))
    except BadInput as exc:
        print(f"crawlguard explain: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    ua, tokens = _ua_verdict(args.user_agent, cfg, tenant)
    destination = _static_destination(cfg, tenant, target)
    fetch = None
    if destination.allowed and rules is None:
        destination, rules, fetch = asyncio.run(_fetch(cfg, tenant, target))
    token = ua.token or product_token_of(args.user_agent)
    verdict = rules.decide(token, target.path) if rules is not None else None
    decided = asyncio.run(_decide(args.user_agent, target, cfg, tenant, destination, rules, fetch))
    site = explain_sites.site_budget(cfg, tenant, token, rules, target)
    if site is not None and not site.exempt:
        site = dataclasses.replace(site, live=asyncio.run(explain_sites.read_live(cfg, site.site)))
    e = Explanation(
        url=args.url,
        user_agent=args.user_agent,
        robots_file=args.robots_file,
        cfg=cfg,
        tenant=tenant,
        target=target,
        destination=destination,
        ua=ua,
        tokens=tokens,
        token=token,
        rules=rules,
        verdict=verdict,
        fetch=fetch,
        outcome=_outcome(decided, fetch, target),
        site=site,
    )
    if args.json:
        print(json.dumps(_json(e), ensure_ascii=False))
    else:
        print("\n".join(_text(e)))
    return EXIT_ALLOWED if e.outcome.kind is Kind.ALLOWED else EXIT_DISALLOWED


# -- input -------------------------------------------------------------------------------------


def _target(url: str) -> Target:
    """The canonical target, exactly as the proxy derives it from the request it receives."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInput(f"bad URL {url!r}: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadInput(f"URL must be absolute http(s)://host/...: {url!r}")
    raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return request_identity(parts.scheme, parts.hostname, port, raw)
    except IdentityError as exc:
        raise BadInput(f"the proxy cannot read {url!r} in one canonical form: {exc}") from exc


def _trust(cfg: Config, ca_file: str) -> Config:
    """The config with `--upstream-ca` as proxy.upstream_ca_file, checked now (bad input, exit
    2) rather than when the fetch builds its TLS context."""
    from crawlguard.config import with_overrides
    from crawlguard.runtime import ssl_context

    path = str(Path(ca_file).expanduser().resolve())
    if not Path(path).is_file():
        raise BadInput(f"--upstream-ca {ca_file}: no such file")
    cfg = with_overrides(cfg, **{"proxy.upstream_ca_file": path})
    try:
        ssl_context(cfg)
    except ConfigError as exc:
        raise BadInput(str(exc).replace("proxy.upstream_ca_file", "--upstream-ca", 1)) from exc
    return cfg


def _load(path: str | None, tenant_id: str | None) -> tuple[Config, Tenant | None]:
    if path is None:
        if tenant_id is not None:
            raise BadInput("--tenant needs --config (the tenant's product tokens are there)")
        return Config(), None
    try:
        cfg = load_config(path, secrets=False)  # judging needs no tenant's secret
    except ConfigError as exc:
        raise BadInput(str(exc)) from exc
    if tenant_id is None:
        return cfg, None
    if cfg.tenancy.source == "store":  # the tenants are the registry's (docs/operators/tenancy.md)
        from crawlguard.tenancy import TenancyError, managed_tenants

        try:
            cfg = cfg.model_copy(update={"tenants": managed_tenants(cfg)})
        except TenancyError as exc:
            raise BadInput(f"tenancy.source: store: {exc.message}") from exc
    for tenant in cfg.tenants:
        if tenant.id == tenant_id:
            return cfg, tenant
    known = ", ".join(t.id for t in cfg.tenants) or "none"
    raise BadInput(f"no tenant {tenant_id!r} in {path} (tenants: {known})")


# -- the checks, in the proxy's order ------------------------------------------------------------


def _ua_verdict(user_agent: str, cfg: Config, tenant: Tenant | None) -> tuple[UAVerdict, list[str]]:
    """The proxy's verdict for `tenant` (its tokens, the other tenants' as foreign), or the
    tenant-less one `crawlguard lint-ua` gives when the tenant's tokens are unknown."""
    if tenant is None:
        return lint(user_agent), []
    return _ua_policy(cfg, tenant).evaluate(user_agent), list(tenant.product_tokens)


def _ua_policy(cfg: Config, tenant: Tenant) -> UserAgentPolicy:
    """The tenant's check as the proxy builds it: its tokens, and the index of every tenant's
    (the other tenants' are foreign)."""
    return UserAgentPolicy(tenant.product_tokens, index=TokenIndex.of_tenants(cfg.tenants))


def _static_destination(cfg: Config, tenant: Tenant | None, target: Target) -> Destination:
    """The destination checks that need no DNS: the tenant's host globs, then the port."""
    from crawlguard.policy.limits import host_decision

    checked = "port" + (" and tenant hosts" if tenant is not None else "")
    if tenant is not None:
        denied = host_decision(tenant, target.host)
        if denied is not None:
            return Destination(False, denied.rule, denied.reason, checked)
    if not cfg.destinations.port_allowed(target.port):
        reason = f"port {target.port} is not in destinations.allowed_ports"
        return Destination(False, "destinations.allowed_ports", reason, checked)
    return Destination(True, None, None, checked)


async def _fetch(
    cfg: Config, tenant: Tenant | None, target: Target
) -> tuple[Destination, RobotsRules | None, Fetch | None]:
    """Admit the destination and fetch robots.txt with the proxy's own egress policy and
    robots.txt cache (same resolver, pinning, redirects, size cap, TLS trust, lifetimes)."""
    url = f"{target.origin}/robots.txt"
    progress = sys.stderr.isatty()  # a progress line for people, nothing in pipes and logs
    if progress:
        sys.stderr.write(f"fetching {url} (timeout {cfg.robots.fetch_timeout:g} s) ...")
        sys.stderr.flush()
    try:
        return await _admit_and_fetch(cfg, tenant, target, url)
    finally:
        if progress:
            sys.stderr.write("\r\x1b[K")  # wipe the line before the answer is printed
            sys.stderr.flush()


async def _admit_and_fetch(
    cfg: Config, tenant: Tenant | None, target: Target, url: str
) -> tuple[Destination, RobotsRules | None, Fetch | None]:
    from crawlguard.egress import EgressPolicy
    from crawlguard.robots.cache import RobotsCache
    from crawlguard.runtime import ssl_context

    checked = "port, addresses" + (" and tenant hosts" if tenant is not None else "")
    egress = EgressPolicy.from_config(cfg.destinations)
    resolution = await egress.admit(target.host, target.port)
    if resolution.reason is not None:
        rule = f"destinations (allow_private: {str(cfg.destinations.allow_private).lower()})"
        return Destination(False, rule, resolution.reason, checked), None, None
    destination = Destination(True, None, None, checked, resolution.pinned)

    class OneShotCache(RobotsCache):
        """The proxy's fetcher, parsing in this process: the proxy parses in a worker process
        to keep its event loop free for other tenants; a one-shot command has none to keep
        free, and a worker would cost it a process start (~0.4 s) and a join at exit."""

        @staticmethod
        async def _parse(body: bytes) -> RobotsRules:
            return RobotsRules.parse(body)

    cache = OneShotCache(
        egress=egress,
        user_agent=cfg.robots.user_agent,
        max_age=cfg.robots.max_age,
        fetch_timeout=cfg.robots.fetch_timeout,
        max_origins=1,
        ssl=ssl_context(cfg),
    )
    try:
        entry = await cache.get((target.scheme, target.host, target.port))
        status = cache.fetch_status((target.scheme, target.host, target.port))
    finally:
        await cache.close()
    fetch = Fetch(
        url=url,
        result=entry.result,
        available=entry.available,
        status=status,
        detail=entry.detail,
        size=len(entry.body) if entry.body is not None else None,
        lifetime=max(0.0, entry.expires_at - entry.fetched_at),
    )
    return destination, (entry.rules if entry.available else None), fetch


@dataclass
class _Answers:
    """The decision pipeline's `Context` for explain: it answers from what explain has
    already looked up (the destination, the robots.txt), does no I/O of its own and reserves
    nothing: a first request's limits and pacing."""

    destination: Destination
    entry: _Entry
    limits: TenantLimits = field(default_factory=TenantLimits)

    async def admit(self, target: Target) -> str | Decision:
        d = self.destination
        if d.allowed:
            return d.address or "(not resolved offline)"
        return Decision(Kind.DESTINATION_FORBIDDEN, rule=d.rule, reason=d.reason)

    def dial_refusal(self, address: str, port: int) -> Decision | None:
        return None  # explain opens no tunnel

    async def robots_txt(self, req: RequestInfo, tenant: TenantRuntime) -> _Entry:
        return self.entry

    async def pace(
        self, tenant: TenantRuntime, req: RequestInfo, decision: Decision, pinned: str | None
    ) -> tuple[Decision, PacingOutcome]:
        return decision, PacingOutcome(Kind.ALLOWED, True, 0.0, None, 0.0, "")

    def take_hold(self, tenant: TenantRuntime) -> Kind | None:
        return None

    async def cancel(self, outcome: PacingOutcome) -> None:
        return None

    async def site_turn(
        self,
        tenant: TenantRuntime,
        req: RequestInfo,
        decision: Decision,
        outcome: PacingOutcome,
        rules: RobotsRules | None,
    ) -> SiteTurn | Decision:
        """A first request finds its site's budget free (the live share: GET /api/sites)."""
        assert req.target is not None
        return SiteTurn(SiteAsk(req.target.host, tenant.id), granted=True)


@dataclass(frozen=True, slots=True)
class _Entry:
    """robots.txt as explain read it (a file, or the proxy fetcher's entry)."""

    available: bool
    rules: RobotsRules
    sha256: str | None
    result: str

    def retry_after(self, now: float) -> int:
        return 1


async def _decide(
    user_agent: str,
    target: Target,
    cfg: Config,
    tenant: Tenant | None,
    destination: Destination,
    rules: RobotsRules | None,
    fetch: Fetch | None,
) -> Decision:
    """The proxy's decision, from the proxy's own pipeline: its order of checks, not a copy."""
    if tenant is None:  # judged without a tenant's tokens, as `crawlguard lint-ua` judges
        anyone = Tenant.model_construct(
            id="explain", product_tokens=[], mode="enforce", pacing="reject",
            allow_hosts=[], deny_hosts=[], max_concurrency=None, max_rps=None,
        )  # fmt: skip
        runtime = TenantRuntime(anyone, UserAgentPolicy(()))
    else:
        runtime = TenantRuntime(tenant, _ua_policy(cfg, tenant))
    available = rules is not None and (fetch is None or fetch.available)
    entry = _Entry(
        available,
        rules if rules is not None else RobotsRules.parse(b""),
        rules.sha256 if rules is not None else None,
        fetch.result if fetch is not None else "ok",
    )
    facts = Facts(
        "GET",
        target.scheme,
        target.host,
        target.port,
        target.path,
        ((b"User-Agent", user_agent.encode("utf-8", "surrogateescape")),),
    )
    verdict = await decide(facts, runtime, _Answers(destination, entry))
    return verdict.decision


def _outcome(decision: Decision, fetch: Fetch | None, target: Target) -> Outcome:
    kind = decision.kind
    if kind is Kind.ALLOWED:
        if target.path == "/robots.txt":
            return Outcome(
                kind, None, "/robots.txt itself is never blocked by robots rules (its own "
                "fetches are paced on a lane of their own)."
            )  # fmt: skip
        return Outcome(kind, None, "every check passes.")
    if kind is Kind.ROBOTS_UNREACHABLE and fetch is not None:
        return Outcome(
            kind,
            decision.rule,
            f"{fetch.url} could not be fetched ({_fetch_words(fetch)}); RFC 9309: complete "
            "disallow until a fetch succeeds.",
        )
    return Outcome(kind, decision.rule, decision.reason or "")


# -- pacing ----------------------------------------------------------------------------------------


def _pacing(cfg: Config, verdict: RobotsVerdict | None) -> tuple[float, str]:
    """The interval the proxy keeps between this tenant's requests to the site, and what
    sets it (`policy.pacing`, as the proxy's records say it)."""
    delay = verdict.crawl_delay if verdict else None
    rate = verdict.request_rate if verdict else None
    default = cfg.pacing.default_min_interval
    seconds = interval(delay, rate, default)
    if seconds <= 0:
        return 0.0, "nothing: no Crawl-delay or Request-rate, pacing.default_min_interval 0"
    return seconds, interval_source(delay, rate, default, seconds)


def _pacing_words(cfg: Config, tenant: Tenant | None, seconds: float, origin: str) -> list[str]:
    if seconds <= 0:
        return ["not paced: requests are forwarded as they come (origin 429/503 still back off)"]
    lines = [f"at most one request every {seconds:g} s to {origin}, per tenant"]
    reject = "a sooner request gets 429 crawl-delay with Retry-After (pacing: reject){}"
    delay = (
        f"a sooner request is held until its slot, up to {cfg.pacing.max_hold:g} s, "
        "then 429 (pacing: delay){}"
    )
    if tenant is None:
        lines += [reject.format(""), delay.format("")]
    elif tenant.pacing == "reject":
        lines.append(reject.format(f", tenant {tenant.id}"))
    else:
        lines.append(delay.format(f", tenant {tenant.id}"))
    lines.append(f"so a crawler should wait at least {seconds:g} s between requests to this site")
    return lines


# -- output ----------------------------------------------------------------------------------------


def _fetch_words(fetch: Fetch) -> str:
    words = f"HTTP {fetch.status}" if fetch.status is not None else fetch.result
    if fetch.detail and fetch.detail != words:
        words += f": {fetch.detail}"
    return words


def _fetch_meaning(fetch: Fetch) -> str:
    if fetch.result == "ok":
        return f"rules in force, trusted for {fetch.lifetime:.0f} s"
    if fetch.result in ("4xx", "redirects"):
        return f"no robots.txt: no restrictions (RFC 9309), for {fetch.lifetime:.0f} s"
    if fetch.result == "stale":
        return "fetch failed, the last good copy is used"
    return f"complete disallow (RFC 9309); the proxy retries in {fetch.lifetime:.0f} s"


def _text(e: Explanation) -> list[str]:
    cfg, tenant, target, destination, ua = e.cfg, e.tenant, e.target, e.destination, e.ua
    rules, verdict, fetch, outcome, token = e.rules, e.verdict, e.fetch, e.outcome, e.token
    out: list[str] = []

    def row(label: str, *values: str) -> None:
        for i, value in enumerate(values):
            out.append(f"  {label if i == 0 else '':<14}{value}")

    out.append(f"explain {e.url}")
    note = "" if target.url == e.url else "  (canonical form of the URL given)"
    row("URL", f"{target.url}{note}", "the proxy judges and forwards exactly this URL")
    row("tenant", f"{tenant.id} (mode {tenant.mode}, pacing {tenant.pacing})" if tenant else
        "none given: user agent judged without a tenant's product tokens")  # fmt: skip

    if destination.allowed:
        where = f", dialled at {destination.address}" if destination.address else ""
        row("destination", f"allowed ({destination.checked} checked{where})")
    else:
        row("destination", f"FORBIDDEN: {destination.reason}", f"setting: {destination.rule}")

    status = "PASS" if ua.allowed else "FAIL"
    ua_lines = [f"{status} {ua.kind.value} ({ua.rule})", ua.reason]
    if not ua.allowed:
        ua_lines.append(f"how to fix: {ADVICE.get(ua.kind, '')}")
    if tenant is None:
        ua_lines.append(
            "tenant product tokens unknown: checked like `crawlguard lint-ua` (use --config "
            "and --tenant to check the registered tokens too)"
        )
    else:
        ua_lines.append(f"registered product tokens: {', '.join(e.tokens)}")
    row("user agent", *ua_lines)

    if fetch is not None:
        size = f", {fetch.size} bytes" if fetch.size is not None else ""
        row("robots.txt", f"fetched {fetch.url}: {_fetch_words(fetch)}{size}",
            _fetch_meaning(fetch))  # fmt: skip
    elif rules is not None:
        row("robots.txt", f"from {'stdin' if e.robots_file == '-' else e.robots_file} "
            "(offline: the destination's addresses were not checked)")  # fmt: skip
    else:
        row("robots.txt", "not fetched: the destination is refused first")
    if e.sha256 is not None:
        row("sha256", e.sha256)
    if verdict is not None:
        row("matched as", token or "(no product token: the * group)")
        row("group", f"User-agent: {', '.join(verdict.agents)}" if verdict.agents else
            "none applies (no group for this token and no *): no restrictions")  # fmt: skip
        if e.exempt:
            row("rule", "none: /robots.txt itself is never blocked by robots rules")
        elif verdict.rule is None:
            row("rule", "no rule: allowed")
        else:
            row("rule", f"{verdict.rule}  -> {'allowed' if verdict.allowed else 'disallowed'}")

    seconds, source = _pacing(cfg, verdict)
    if verdict is not None:
        delay = verdict.crawl_delay
        rate = verdict.request_rate
        rate_text = f"{rate[0]}/{_seconds(rate[1])}" if rate else "none"
        row("crawl-delay", f"{_seconds(delay)}; request-rate: {rate_text}")
    if e.exempt:
        row("pacing", "none: /robots.txt itself is not paced")
    elif verdict is None:
        row("pacing", "unknown: no robots.txt rules were read")
    else:
        row("pacing", f"interval {seconds:g} s, set by {source}",
            *_pacing_words(cfg, tenant, seconds, target.origin))  # fmt: skip
    if e.site is not None:
        row("site budget", *explain_sites.text_lines(e.site, tenant))

    if outcome.kind is Kind.ALLOWED:
        out.append(f"verdict: ALLOWED: {outcome.reason}")
    else:
        out.append(f"verdict: BLOCKED {outcome.kind.value} ({STATUS[outcome.kind]}): "
                   f"{outcome.reason}")  # fmt: skip
        if outcome.rule:
            out.append(f"  rule: {outcome.rule}")
        out.append(f"  how to fix: {ADVICE.get(outcome.kind, '')}")
        if fetch is not None and fetch.detail.startswith("TLS certificate verification failed"):
            out.append("  (here: `crawlguard explain --upstream-ca FILE` trusts that CA for this "
                       "fetch)")  # fmt: skip
        if outcome.kind is Kind.DESTINATION_FORBIDDEN and not cfg.destinations.allow_private:
            out.append(
                "  (a site on this machine or a private network: only a proxy whose config says "
                "destinations.allow_private: true reaches it; give that config with --config)"
            )
        if tenant is not None and tenant.mode != "enforce":
            what = "forwarded and recorded (action logged)" if tenant.mode == "monitor" else (
                "forwarded, nothing recorded")  # fmt: skip
            out.append(f"  tenant {tenant.id} is in mode {tenant.mode}: the request is {what}")
    return out


def _json(e: Explanation) -> dict[str, object]:
    cfg, tenant, target, destination, ua = e.cfg, e.tenant, e.target, e.destination, e.ua
    rules, verdict, fetch, outcome, token = e.rules, e.verdict, e.fetch, e.outcome, e.token
    robots: dict[str, object] | None = None
    if rules is not None and verdict is not None:
        robots = _url_object(target.url, token, rules, verdict)  # `crawlguard check --json`
        robots["source"] = "fetched" if fetch is not None else "file"
        robots["exempt"] = e.exempt
        robots["robots_sha256"] = e.sha256
    seconds, source = _pacing(cfg, verdict)
    return {
        "url": e.url,
        "canonical_url": target.url,
        "origin": target.origin,
        "allowed": outcome.kind is Kind.ALLOWED,
        "decision": outcome.kind.value,
        "status": STATUS.get(outcome.kind),
        "rule": outcome.rule,
        "reason": outcome.reason,
        "advice": None if outcome.kind is Kind.ALLOWED else ADVICE.get(outcome.kind),
        "tenant": None
        if tenant is None
        else {"id": tenant.id, "mode": tenant.mode, "pacing": tenant.pacing},
        "destination": {
            "allowed": destination.allowed,
            "checked": destination.checked,
            "rule": destination.rule,
            "reason": destination.reason,
            "address": destination.address,
        },
        "user_agent": {
            "user_agent": e.user_agent,
            "pass": ua.allowed,
            "kind": ua.kind.value,
            "rule": ua.rule,
            "reason": ua.reason,
            "advice": None if ua.allowed else ADVICE.get(ua.kind),
            "product_tokens": e.tokens,
            "robots_token": token,
        },
        "robots": robots,
        "fetch": None
        if fetch is None
        else {
            "url": fetch.url,
            "result": fetch.result,
            "status": fetch.status,
            "detail": fetch.detail or None,
            "available": fetch.available,
            "bytes": fetch.size,
            "sha256": e.sha256,
            "lifetime": round(fetch.lifetime, 3),
        },
        "pacing": {
            "crawl_delay": verdict.crawl_delay if verdict else None,
            "request_rate": list(verdict.request_rate)
            if verdict and verdict.request_rate
            else None,
            "default_min_interval": cfg.pacing.default_min_interval,
            "interval": 0.0 if e.exempt else seconds,
            "set_by": None if seconds <= 0 or e.exempt else source,
        },
        "site_budget": explain_sites.json_object(e.site, tenant),
    }
