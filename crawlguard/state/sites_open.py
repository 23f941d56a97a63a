"""`open_sites`: the site budget state for ``state.url``, as `open_state` opens pacing's."""

from __future__ import annotations

from collections.abc import Callable

from crawlguard.state import OnError, PacingState
from crawlguard.state.sites import SiteState
from crawlguard.state.sites_memory import MemorySites


def open_sites(
    url: str,
    on_error: OnError = "closed",
    *,
    on_fallback: Callable[[], None] | None = None,
    pacing: PacingState | None = None,
) -> SiteState:
    """``memory://``: a per-process `MemorySites`. ``redis://`` / ``rediss://``: a `RedisSites`
    behind a `FailoverSites` applying `on_error` (see crawlguard.state.sites_failover). With
    `pacing`, the pacing state `open_state` made from the same URL, the site budgets use its
    connection pool (one pool per process; pacing closes it). Raises ValueError for any other
    URL."""
    if url == "memory://":
        return MemorySites()
    if url.startswith(("redis://", "rediss://")):
        from crawlguard.state.failover import FailoverState
        from crawlguard.state.redis import RedisState
        from crawlguard.state.sites_failover import FailoverSites
        from crawlguard.state.sites_redis import RedisSites

        shared = pacing.primary if isinstance(pacing, FailoverState) else pacing
        if isinstance(shared, RedisState):
            primary = RedisSites.sharing(shared)
        else:
            primary = RedisSites.from_url(url)
        return FailoverSites(
            primary,
            on_error=on_error,
            fallback=MemorySites() if on_error == "open" else None,
            on_fallback=on_fallback,
        )
    raise ValueError(f"state.url {url!r}: must be memory:// or redis://host:port/db")


__all__ = ["open_sites"]
