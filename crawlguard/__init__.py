"""crawlguard: a crawler-etiquette enforcement proxy built on mitmproxy."""

__version__ = "0.1.0"
