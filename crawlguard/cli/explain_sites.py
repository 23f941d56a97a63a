"""The "site budget" step of `crawlguard explain` (issue 22): the platform's pace on the URL's
site, shared by every tenant, and what share of it this tenant gets when the site is busy.

Worked out from the config and the robots.txt explain already read, as the proxy would:

* the site: `platform.site_key` (`policy.sites.site_key`: the host, or its registrable domain);
* the pace: with `platform.crawl_delay: shared` the largest Crawl-delay / Request-rate interval
  of the robots.txt groups that apply (or `pacing.default_min_interval`) and 1 / `max_rps` of
  the site's budget (`policy.sites.site_limits`, overrides included), the larger: the groups
  that apply to any configured tenant's product token, computed as the proxy does
  (`policy.budget.shared_pace`). With `per-tenant` each tenant keeps its own pace and only the
  budget's caps are the platform's;
* the tenant's share: SFQ gives each waiting tenant slots in proportion to its weight, so while
  every configured tenant wants the site a tenant gets weight / (sum of the weights), and at most
  that while the others keep asking (more when some are idle: their slots go to the others);
* the live view, when `state.url` is shared (redis://): the budget in force now, its back-off
  and the tenants' actual shares, read with `crawlguard.state.sites_redis.RedisSites`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crawlguard.policy.limits import host_matches
from crawlguard.policy.sites import site_key, site_limits
from crawlguard.state.sites import ACTIVITY_WINDOW

if TYPE_CHECKING:
    from crawlguard.config import Config, Tenant
    from crawlguard.policy.identity import Target
    from crawlguard.policy.robots import RobotsRules

LIVE_TIMEOUT = 5.0  # s: a shared state that does not answer by then is reported, not waited for
SHARED_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class Live:
    """What the shared state holds for the site now (`view`: /api/sites' object for it), or
    why it was not read (`note`)."""

    view: dict[str, Any] | None
    note: str | None


@dataclass(frozen=True, slots=True)
class SiteBudget:
    site: str
    site_key: str  # platform.site_key: host | domain
    crawl_delay: str  # platform.crawl_delay: shared | per-tenant
    interval: float  # the platform's pace on the site before back-off, seconds (0: none)
    set_by: str | None  # what sets it
    robots_interval: float | None  # shared: the largest robots.txt interval read (None: none)
    robots_groups: tuple[str, ...]  # the product tokens whose groups were read ("*" last)
    max_rps: float | None
    max_concurrency: int | None
    limits_from: str  # platform.site_budget, or "platform.site_overrides (site <glob>)"
    weight: float | None  # the tenant's (None: no --tenant)
    weights_total: float  # of every configured tenant
    exempt: bool = False  # /robots.txt itself: not paced
    live: Live | None = None

    @property
    def budget_rps(self) -> float | None:
        return 1.0 / self.interval if self.interval > 0 else None

    @property
    def share(self) -> float | None:
        """The tenant's share of the site's slots while every configured tenant wants them."""
        if self.weight is None or self.weights_total <= 0:
            return None
        return self.weight / self.weights_total


def site_budget(
    cfg: Config,
    tenant: Tenant | None,
    token: str,
    rules: RobotsRules | None,
    target: Target,
) -> SiteBudget | None:
    """The site budget that applies to `target` for `tenant` (None: the config has none)."""
    platform = cfg.platform

    site = site_key(target.host, platform.site_key)
    limits = site_limits(site, platform)
    glob = host_matches(site, (o.site for o in platform.site_overrides))
    limits_from = (
        "platform.site_budget" if glob is None else f"platform.site_overrides (site {glob})"
    )
    tokens = list(tenant.product_tokens) if tenant is not None else ([token] if token else [])
    groups: tuple[str, ...] = ()
    robots_iv: float | None = None
    robots_by: str | None = None
    if platform.crawl_delay == "shared" and rules is not None:
        robots_iv, robots_by, groups = _robots_interval(cfg, rules, tokens)
    rps_iv = 1.0 / limits.max_rps if limits.max_rps else 0.0
    pace, set_by = 0.0, None
    if robots_iv is not None and robots_iv > 0 and robots_iv >= rps_iv:
        pace, set_by = robots_iv, robots_by
    elif rps_iv > 0:
        pace, set_by = rps_iv, f"{limits_from}: max_rps {limits.max_rps:g}"
    weights = [float(getattr(t, "weight", 1.0)) for t in cfg.tenants]
    return SiteBudget(
        site=site,
        site_key=platform.site_key,
        crawl_delay=platform.crawl_delay,
        interval=pace,
        set_by=set_by,
        robots_interval=robots_iv,
        robots_groups=groups if platform.crawl_delay == "shared" else (),
        max_rps=limits.max_rps,
        max_concurrency=limits.max_concurrency,
        limits_from=limits_from,
        weight=float(getattr(tenant, "weight", 1.0)) if tenant is not None else None,
        weights_total=math.fsum(weights),
        exempt=target.path == "/robots.txt",
    )


def _robots_interval(
    cfg: Config, rules: RobotsRules, tokens: list[str]
) -> tuple[float | None, str | None, tuple[str, ...]]:
    """The proxy's own shared pace (`policy.budget.shared_pace`) over the configured tenants'
    product tokens (and the explained ones): the largest interval of the groups that apply to
    any of them; None when none asks for a pace."""
    from crawlguard.policy.budget import shared_pace
    from crawlguard.policy.ua import TokenIndex

    pairs = [(t.id, list(t.product_tokens)) for t in cfg.tenants]
    pairs.append(("(explained)", [t for t in tokens if t != "*"]))
    seconds, source, groups = shared_pace(rules, TokenIndex(pairs), 0.0)
    if seconds <= 0:
        default = cfg.pacing.default_min_interval
        if default > 0:
            return default, f"pacing.default_min_interval: {default:g}", groups
        return None, None, groups
    return max(seconds, cfg.pacing.default_min_interval), source, groups


async def read_live(cfg: Config, site: str) -> Live:
    """The site's budget in the shared state right now, or why it is not shown."""
    url = cfg.state.url
    if not url.startswith(SHARED_SCHEMES):
        return Live(
            None,
            f"not read: state.url {url.split(':', 1)[0]}:// keeps the budget in the running "
            "proxy's memory (see GET /api/sites?site=HOST on its admin server)",
        )
    try:
        from crawlguard.state.sites_redis import RedisSites
    except ImportError:
        return Live(None, "not read: this crawlguard has no shared site state to read")
    from crawlguard.admin.sites_api import site_json

    sites: Any = None
    try:
        opener = getattr(RedisSites, "from_url", None)
        sites = opener(url) if opener is not None else RedisSites(url)
        view = await asyncio.wait_for(sites.view(site, time.monotonic()), LIVE_TIMEOUT)
    except Exception as exc:  # unreachable, refused, timed out: the offline part still stands
        reason = str(exc) or type(exc).__name__
        return Live(None, f"not read: the shared state did not answer ({reason[:200]})")
    finally:
        if sites is not None:
            with contextlib.suppress(Exception):  # closing a client that failed: no news
                await asyncio.wait_for(sites.close(), LIVE_TIMEOUT)
    if view is None:
        return Live(None, "idle: no tenant was granted a slot on this site lately")
    return Live(site_json(view), None)


# -- renderings -------------------------------------------------------------------------------


def _every(seconds: float) -> str:
    return f"one request every {seconds:g} s" if seconds > 0 else "no pace"


def _cap(max_rps: float | None, max_concurrency: int | None, source: str) -> str:
    rps = f"max_rps {max_rps:g}" if max_rps else "no max_rps"
    conc = f"max_concurrency {max_concurrency}" if max_concurrency else "no max_concurrency"
    return f"{source}: {rps}, {conc}"


def text_lines(b: SiteBudget, tenant: Tenant | None) -> list[str]:
    """The "site budget" row of explain's text."""
    head = f"site {b.site} (platform.site_key: {b.site_key}, crawl_delay: {b.crawl_delay})"
    if b.exempt:
        return [head, "none: /robots.txt itself is not paced"]
    lines = [head]
    if b.crawl_delay == "shared":
        if b.interval > 0:
            lines.append(
                f"all tenants together: {_every(b.interval)} to this site, set by {b.set_by}"
            )
        else:
            lines.append("all tenants together: no pace (no Crawl-delay, Request-rate or max_rps)")
        read = ", ".join(b.robots_groups) or "none with a pace"
        lines.append(
            f"robots.txt groups that apply to the platform's tenants: {read} (the slowest "
            "paces them all)"
        )
    else:
        lines.append(
            "per-tenant: each tenant keeps its own Crawl-delay pace (above); only the site "
            "budget's caps are shared"
        )
        if b.interval > 0:
            lines.append(f"all tenants together: at most {_every(b.interval)}, set by {b.set_by}")
    lines.append(_cap(b.max_rps, b.max_concurrency, b.limits_from))
    share = b.share
    if tenant is not None and share is not None:
        every = f", {_every(b.interval / share)}" if b.interval > 0 else ""
        lines.append(
            f"tenant {tenant.id}: weight {b.weight:g} of {b.weights_total:g}: while every "
            f"configured tenant wants this site, at most {share:.0%} of its slots{every}; more "
            "while others are idle"
        )
    if b.live is not None:
        lines += _live_lines(b.live, tenant)
    return lines


def _live_lines(live: Live, tenant: Tenant | None) -> list[str]:
    if live.view is None:
        return [f"live: {live.note}"]
    v = live.view
    budget = f"{v['budget_rps']:g}/s" if v["budget_rps"] is not None else "no pace"
    back = v["backoff"]
    words = f"live: {v['rate_rps']:g}/s granted over the last {ACTIVITY_WINDOW:g} s"
    words += f" (budget now {budget}, back-off rate {back['rate']:g}"
    if back["paused_for"]:
        words += f", paused {back['paused_for']:g} s more"
    if back["capped_rps"] is not None:
        words += f", the site's RateLimit {back['capped_rps']:g}/s"
    cap = v["max_concurrency"] if v["max_concurrency"] is not None else "no cap"
    words += f"), {v['in_flight']} in flight of {cap}"
    lines = [words]
    if tenant is not None:
        mine = next((t for t in v["tenants"] if t["tenant"] == tenant.id), None)
        if mine is None:
            lines.append(f"live: tenant {tenant.id} got no slot here lately")
        else:
            waiting = ", waiting for its turn" if mine["waiting"] else ""
            lines.append(
                f"live: tenant {tenant.id} got {mine['grants']} slots, {mine['share']:.0%} of "
                f"them{waiting}"
            )
    return lines


def json_object(b: SiteBudget | None, tenant: Tenant | None) -> dict[str, Any] | None:
    """`site_budget` in explain's `--json`."""
    if b is None:
        return None
    share = b.share
    return {
        "site": b.site,
        "site_key": b.site_key,
        "crawl_delay": b.crawl_delay,
        "interval": 0.0 if b.exempt else round(b.interval, 6),
        "budget_rps": None if b.exempt or b.budget_rps is None else round(b.budget_rps, 6),
        "set_by": None if b.exempt else b.set_by,
        "robots_interval": b.robots_interval,
        "robots_groups": list(b.robots_groups),
        "max_rps": b.max_rps,
        "max_concurrency": b.max_concurrency,
        "limits_from": b.limits_from,
        "tenant": None
        if tenant is None or share is None
        else {
            "id": tenant.id,
            "weight": b.weight,
            "weights_total": b.weights_total,
            "share_at_most": round(share, 3),
            "rps_at_most": round(share / b.interval, 6) if b.interval > 0 else None,
        },
        "live": None if b.live is None else b.live.view,
        "live_note": None if b.live is None else b.live.note,
    }


__all__ = [
    "Live",
    "SiteBudget",
    "json_object",
    "read_live",
    "site_budget",
    "text_lines",
]
