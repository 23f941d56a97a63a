"""Everything that touches mitmproxy (and h11): the only package importing them.

`compat.py` holds every change crawlguard makes to mitmproxy beyond its addon API.
"""
