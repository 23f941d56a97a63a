"""Egress control: which destinations the proxy and the robots.txt fetcher may reach
(SPEC: `destination-forbidden`).

* `classify`: what an IP address is (loopback, private, link-local, …), by explicit tables.
* `resolver`: `SafeResolver` (resolve, check every address, pin one), `EgressPolicy` (port
  policy + resolver; the proxy's one call per request) and an aiohttp resolver adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawlguard.egress.classify import Verdict, classify, forbidden_reason, parse_ip
from crawlguard.egress.resolver import (
    EgressAiohttpResolver,
    EgressPolicy,
    Resolution,
    SafeResolver,
    is_loopback_name,
    normalize_host,
)

if TYPE_CHECKING:
    from crawlguard.config import DestinationsSection

__all__ = [
    "EgressAiohttpResolver",
    "EgressPolicy",
    "Resolution",
    "SafeResolver",
    "Verdict",
    "check_destination",
    "classify",
    "forbidden_reason",
    "parse_ip",
]


def check_destination(cfg: DestinationsSection, host: str, port: int) -> str | None:
    """Compatibility (pure, no lookup): the reason host:port is forbidden, or None.

    Judges the port, IP literals and loopback names only; a name is NOT resolved here, so
    this is no SSRF defence for names: the request path should use `EgressPolicy.admit`."""
    if not cfg.port_allowed(port):
        return f"port {port} is not in destinations.allowed_ports"
    h = normalize_host(host)
    ip = parse_ip(h)
    if ip is None:
        if is_loopback_name(h) and not cfg.allow_private:
            return f"{host} is a loopback name"
        return None
    verdict = classify(ip)
    if verdict is None or (cfg.allow_private and verdict.private):
        return None
    return verdict.reason
