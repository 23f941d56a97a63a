"""Which destinations the proxy may reach (SPEC: `destination-forbidden`). Pure: decides on the
literal host and port; resolving names and pinning the resolved address belong to the egress
layer (a later issue)."""

from __future__ import annotations

import ipaddress

from crawlguard.config import DestinationsSection

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def forbidden_address(host: str) -> str | None:
    """Why a literal address may not be crawled (loopback, private, …), or None."""
    h = host.strip("[]").rstrip(".").lower()
    if h in _LOCAL_NAMES or h.endswith(".localhost"):
        return f"{host} is a loopback name"
    try:
        ip = ipaddress.ip_address(h.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for attr in (
        "is_loopback",
        "is_private",
        "is_link_local",
        "is_multicast",
        "is_reserved",
        "is_unspecified",
    ):
        if getattr(ip, attr):
            return f"{ip} is a {attr.removeprefix('is_').replace('_', '-')} address"
    return None


def check_destination(cfg: DestinationsSection, host: str, port: int) -> str | None:
    """The reason a destination is forbidden, or None when it may be reached."""
    if not cfg.port_allowed(port):
        return f"port {port} is not in destinations.allowed_ports"
    if not cfg.allow_private:
        return forbidden_address(host)
    return None
