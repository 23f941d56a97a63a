"""crawlguard as a mitmproxy script:

    mitmdump -s addons/crawlguard_addon.py --set crawlguard_config=config/crawlguard.yaml

The same addons `crawlguard run` uses. Listen address and confdir come from mitmdump's own
flags here (-p/--listen-host, --set confdir=...), not from the config's proxy section; the
proxy section's client limits (max_connections, header_timeout, request head caps) apply.

Loading this script installs `crawlguard.proxy.compat.install()`: mitmproxy's HTTP/1 server
changes for every connection of this mitmdump, whichever addon handles it (the README's
"Running under mitmdump" lists what changes). Nothing else of crawlguard's lean master is
installed here (its hook dispatch, the skipped debug type checks).
"""

from crawlguard.proxy import compat
from crawlguard.proxy.addon import CrawlGuardAddon
from crawlguard.proxy.client_limits import ClientLimitsAddon

compat.install()  # idempotent: mitmdump re-runs this file when it changes

_guard = CrawlGuardAddon()
addons = [
    ClientLimitsAddon(
        lambda: _guard.guard.cfg.proxy if _guard.guard is not None else None,
        lambda: _guard.guard.metrics if _guard.guard is not None else None,
    ),
    _guard,
]
