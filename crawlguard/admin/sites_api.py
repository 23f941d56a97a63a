"""`GET /api/sites`: the platform's per-site budgets (issue 22) as operators see them.

Per site: the platform's actual rate (slots granted in the last ACTIVITY_WINDOW seconds) against
the pace in force, the back-off, the requests in flight, and the tenants sharing the site with
their shares of its slots. Top N sites only, and never a host in a metric label: the sites a
platform crawls are unbounded, so they belong in an answer like this one, not in a time series.

The views come from the Runtime (`site_views`, `site_view`, `site_of`), which reads the site
state on the proxy's own loop; the parent of `crawlguard run --workers N` reads the shared
(Redis) state its workers use (`ParentAdminSource`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from crawlguard.admin.api import BadRequest, Params, error
from crawlguard.policy.identity import IdentityError, canonical_host
from crawlguard.state.sites import ACTIVITY_WINDOW, SiteView

SORTS = ("busy", "backoff")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# `sort=backoff` ranks the sites the state can list, the busiest ones: a site nobody asks for
# has nothing to back off from, and the state keeps no index by rate.
BACKOFF_POOL = MAX_LIMIT
MAX_TENANTS = 50  # tenants listed per site, most grants first; `tenants_total` counts them all


def _round(value: float | None, places: int = 3) -> float | None:
    return None if value is None else round(value, places)


def site_json(view: SiteView, window: float = ACTIVITY_WINDOW) -> dict[str, Any]:
    """One site of the answer. `share` is of the slots granted in the window (all tenants)."""
    total = view.grants or sum(t.grants for t in view.tenants)
    tenants = sorted(view.tenants, key=lambda t: (-t.grants, not t.waiting, t.tenant))
    return {
        "site": view.site,
        "rate_rps": round(view.grants / window, 3),
        "budget_rps": round(1.0 / view.interval, 3) if view.interval > 0 else None,
        "interval": _round(view.interval),
        "base_interval": _round(view.base_interval),
        "backoff": {
            "rate": _round(view.rate),
            "paused_for": _round(max(0.0, view.paused_for)),
            "capped_rps": _round(view.capped_rps),
        },
        "in_flight": view.in_flight,
        "max_concurrency": view.max_concurrency,
        "tenants": [
            {
                "tenant": t.tenant,
                "weight": t.weight,
                "grants": t.grants,
                "share": round(t.grants / total, 3) if total else 0.0,
                "waiting": t.waiting,
            }
            for t in tenants[:MAX_TENANTS]
        ],
        "tenants_total": len(tenants),
    }


def backoff_order(views: list[SiteView]) -> list[SiteView]:
    """The most backed-off first: the lowest rate, then the longest pause, then the busiest."""
    return sorted(views, key=lambda v: (v.rate, -v.paused_for, -v.grants, v.site))


class SitesAPI:
    """`/api/sites` over the running Runtime (read through `guard()` per request, as AdminAPI)."""

    def __init__(self, guard: Callable[[], Any]) -> None:
        self._guard = guard

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/sites", self.sites)

    async def sites(self, request: web.Request) -> web.Response:
        try:
            p = Params(request.query, ("sort", "limit", "site"))
            sort = p.choice("sort", SORTS) or "busy"
            limit = p.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            host = _host(p.get("site"))
        except BadRequest as exc:
            extra = {} if exc.valid is None else {"valid": exc.valid}
            return error(400, exc.message, **extra)
        guard = self._guard()
        if host is not None:
            view = await guard.site_view(guard.site_of(host))
            views = [] if view is None else [view]  # an idle site: nothing to show, not a 404
        elif sort == "backoff":
            views = backoff_order(await guard.site_views(max(limit, BACKOFF_POOL)))[:limit]
        else:
            views = list(await guard.site_views(limit))[:limit]
        return web.json_response(
            {
                "window": int(ACTIVITY_WINDOW),
                "sort": sort,
                "sites": [site_json(v) for v in views],
            }
        )


def _host(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return canonical_host(value)
    except IdentityError as exc:
        raise BadRequest(f"invalid site {value[:100]!r}: {exc} (give a host, no port)") from None


__all__ = ["SitesAPI", "backoff_order", "site_json"]
