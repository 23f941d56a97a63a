"""Which site a request belongs to, and that site's platform budget (`platform.*`).

Pure: no I/O. The Public Suffix List is the snapshot the installed `tldextract` wheel bundles,
read once from the package on first use: never fetched, never cached to disk, so a proxy
behaves the same offline and two replicas of one release group sites the same way.

- `site_key(host, "host")`: the canonical host itself.
- `site_key(host, "domain")`: its registrable domain (eTLD+1), a browser's "site" (HTML's
  "same site", the scope of SameSite cookies): the PSL's private suffixes count, so
  `alice.github.io` and `bob.github.io` are two sites, each its own owner's, while
  `www.example.co.uk` and `shop.example.co.uk` are one. A host under a TLD the list does not
  know follows the PSL's default rule (`*`: the last label is the suffix), as browsers do.
  IP literals, `localhost`, single-label names and hosts that are themselves a public suffix
  stay as they are: they have no registrable domain, and each is its own site.

Hosts arrive canonical (crawlguard.policy.identity.canonical_host: lower case, IDNA A-labels,
no trailing dot, IPv6 without brackets), so a host and its U-label spelling are one site.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from crawlguard.policy.limits import host_matches

if TYPE_CHECKING:
    from crawlguard.config import PlatformSection

MEMO = 65_536  # hosts (and site keys) remembered: a few MB at most, a hot crawl's working set

_extractor: Any = None
_extractor_lock = threading.Lock()


def _psl() -> Any:
    """The one `TLDExtract`, made on first use (reading the bundled snapshot takes ~50 ms):
    no suffix-list URLs and no cache directory, so it neither fetches nor writes anything."""
    global _extractor
    if _extractor is None:
        with _extractor_lock:
            if _extractor is None:
                import tldextract

                _extractor = tldextract.TLDExtract(
                    cache_dir=None,
                    suffix_list_urls=(),
                    fallback_to_snapshot=True,
                    include_psl_private_domains=True,
                )
    return _extractor


def site_key(host: str, mode: str) -> str:
    """The site `host` belongs to under `platform.site_key` = `mode` (`host` | `domain`)."""
    if mode == "host":
        return host
    if mode != "domain":
        raise ValueError(f"site key mode {mode!r}: host or domain")
    return registrable_domain(host)


@lru_cache(maxsize=MEMO)
def registrable_domain(host: str) -> str:
    """`host`'s eTLD+1 (private suffixes included), or `host` itself when it has none."""
    if not host or "." not in host or _is_ip(host):
        return host
    parts = _psl().extract_str(host)
    if parts.suffix:
        return f"{parts.domain}.{parts.suffix}" if parts.domain else host  # a suffix itself
    # No listed suffix: the PSL's default rule `*` makes the last label the suffix.
    labels = host.split(".")
    return ".".join(labels[-2:])


def _is_ip(host: str) -> bool:
    if ":" in host:
        return True  # canonical hosts have no port: a colon is an IPv6 literal
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """The platform's cap on one site; None: no cap."""

    max_rps: float | None
    max_concurrency: int | None


def site_limits(site: str, cfg: PlatformSection) -> SiteLimits:
    """The budget of `site` (a site key): the first `site_overrides` glob matching it, else
    `site_budget`. An override's keys left out were filled from `site_budget` at load.

    Remembered per site for the `cfg` last asked about (a reload's new section starts afresh),
    at most `MEMO` sites: a glob list is walked once per site, not once per request."""
    global _memo_cfg
    budget = cfg.site_budget
    if not cfg.site_overrides:
        return SiteLimits(budget.max_rps, budget.max_concurrency)
    if _memo_cfg is not cfg or len(_memo) >= MEMO:
        _memo.clear()
        _memo_cfg = cfg
    found = _memo.get(site)
    if found is None:
        found = SiteLimits(budget.max_rps, budget.max_concurrency)
        for override in cfg.site_overrides:
            if host_matches(site, (override.site,)) is not None:
                found = SiteLimits(override.max_rps, override.max_concurrency)
                break
        _memo[site] = found
    return found


_memo: dict[str, SiteLimits] = {}
_memo_cfg: object = None
