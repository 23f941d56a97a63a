"""Egress control: which destinations the proxy and the robots.txt fetcher may reach
(SPEC: `destination-forbidden`).

* `classify`: what an IP address is (loopback, private, link-local, …), by explicit tables.
* `resolver`: `SafeResolver` (resolve, check every address, pin one), `EgressPolicy` (port
  policy + resolver; the proxy's one call per request) and an aiohttp resolver adapter.
"""

from __future__ import annotations

from crawlguard.egress.classify import Verdict, classify, forbidden_reason, parse_ip
from crawlguard.egress.resolver import (
    EgressAiohttpResolver,
    EgressPolicy,
    Resolution,
    SafeResolver,
)

__all__ = [
    "EgressAiohttpResolver",
    "EgressPolicy",
    "Resolution",
    "SafeResolver",
    "Verdict",
    "classify",
    "forbidden_reason",
    "parse_ip",
]
