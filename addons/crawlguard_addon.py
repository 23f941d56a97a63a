"""crawlguard as a mitmproxy script:

    mitmdump -s addons/crawlguard_addon.py --set crawlguard_config=config/crawlguard.yaml

The same addons `crawlguard run` uses. Listen address and confdir come from mitmdump's own
flags here (-p/--listen-host, --set confdir=...), not from the config's proxy section; the
proxy section's client limits (max_connections, header_timeout, request head caps) apply.
"""

from crawlguard.proxy.addon import CrawlGuardAddon
from crawlguard.proxy.client_limits import ClientLimitsAddon

_guard = CrawlGuardAddon()
addons = [
    ClientLimitsAddon(
        lambda: _guard.guard.cfg.proxy if _guard.guard is not None else None,
        lambda: _guard.guard.metrics if _guard.guard is not None else None,
    ),
    _guard,
]
