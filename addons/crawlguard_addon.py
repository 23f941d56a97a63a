"""crawlguard as a mitmproxy script:

    mitmdump -s addons/crawlguard_addon.py --set crawlguard_config=config/crawlguard.yaml

The same addon `crawlguard run` uses. Listen address and confdir come from mitmdump's own
flags here (-p/--listen-host, --set confdir=...), not from the config's proxy section.
"""

from crawlguard.addon import CrawlGuardAddon

addons = [CrawlGuardAddon()]
