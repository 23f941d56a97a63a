"""Which IP addresses the proxy may dial (SPEC: `destination-forbidden`).

An explicit table of special-purpose networks (RFC 6890 and the IANA special-purpose
registries), not the stdlib `is_private`/`is_global` flags alone: their meaning changed
between Python versions, and they say nothing about addresses that *embed* an IPv4 address.
IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, SIIT, NAT64, 6to4,
Teredo) are judged by the IPv4 address they lead to, so `::ffff:127.0.0.1` or
`64:ff9b::a9fe:a9fe` is as forbidden as the address it embeds.

Each forbidden network has a category; a category is either *private* (reachable only inside
a site: loopback, RFC 1918, link-local, CGNAT, ULA, …), which `destinations.allow_private`
admits for local development, or *never* (unspecified, "this network", multicast, broadcast,
reserved, documentation, benchmarking, discard, IETF protocol assignments), which nothing
admits: dialling them is meaningless or, like 0.0.0.0 reaching the local host on Linux, a
bypass.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Category:
    name: str  # "loopback", "private", … as it appears in reasons ("a <name> address")
    private: bool  # True: admitted when allow_private is set; False: never dialled


LOOPBACK: Final = Category("loopback", True)
PRIVATE: Final = Category("private", True)
LINK_LOCAL: Final = Category("link-local", True)
SHARED: Final = Category("shared (CGNAT)", True)
UNIQUE_LOCAL: Final = Category("unique-local", True)
SITE_LOCAL: Final = Category("site-local", True)
LOCAL_NAT64: Final = Category("local-use NAT64", True)
UNSPECIFIED: Final = Category("unspecified", False)
THIS_NETWORK: Final = Category('"this network"', False)
MULTICAST: Final = Category("multicast", False)
BROADCAST: Final = Category("broadcast", False)
RESERVED: Final = Category("reserved", False)
PROTOCOL: Final = Category("IETF protocol assignment", False)
DOCUMENTATION: Final = Category("documentation", False)
BENCHMARKING: Final = Category("benchmarking", False)
DISCARD: Final = Category("discard-only", False)


def _nets(category: Category, *cidrs: str) -> list[tuple[IPNetwork, Category]]:
    return [(ipaddress.ip_network(c), category) for c in cidrs]


# First match wins; more specific networks come before the ones containing them.
_V4_TABLE: Final = [
    *_nets(UNSPECIFIED, "0.0.0.0/32"),
    *_nets(BROADCAST, "255.255.255.255/32"),
    *_nets(THIS_NETWORK, "0.0.0.0/8"),
    *_nets(LOOPBACK, "127.0.0.0/8"),
    *_nets(PRIVATE, "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
    *_nets(LINK_LOCAL, "169.254.0.0/16"),
    *_nets(SHARED, "100.64.0.0/10"),
    *_nets(PROTOCOL, "192.0.0.0/24"),
    *_nets(DOCUMENTATION, "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"),
    *_nets(BENCHMARKING, "198.18.0.0/15"),
    *_nets(RESERVED, "192.88.99.0/24"),  # deprecated 6to4 relay anycast (RFC 7526)
    *_nets(MULTICAST, "224.0.0.0/4"),
    *_nets(RESERVED, "240.0.0.0/4"),
]

_V6_TABLE: Final = [
    *_nets(UNSPECIFIED, "::/128"),
    *_nets(LOOPBACK, "::1/128"),
    *_nets(DISCARD, "100::/64"),
    *_nets(UNIQUE_LOCAL, "fc00::/7"),
    *_nets(LINK_LOCAL, "fe80::/10"),
    *_nets(SITE_LOCAL, "fec0::/10"),
    *_nets(MULTICAST, "ff00::/8"),
    *_nets(DOCUMENTATION, "2001:db8::/32", "3fff::/20"),
    *_nets(BENCHMARKING, "2001:2::/48"),
    *_nets(RESERVED, "2001:10::/28", "2001:20::/28"),  # ORCHID, ORCHIDv2
    *_nets(LOCAL_NAT64, "64:ff9b:1::/48"),  # RFC 8215: not globally reachable
]
_GLOBAL_UNICAST: Final = ipaddress.ip_network("2000::/3")

# IPv6 forms whose last 32 bits are an IPv4 address the packet ends up at.
_EMBEDS_LAST_32: Final = [
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.ip_network("::ffff:0:0:0/96"), "IPv4-translated"),  # SIIT (RFC 2765)
    (ipaddress.ip_network("64:ff9b::/96"), "NAT64"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64"),
    (ipaddress.ip_network("::/96"), "IPv4-compatible"),  # deprecated; after :: and ::1
]
_SIXTOFOUR: Final = ipaddress.ip_network("2002::/16")
_TEREDO: Final = ipaddress.ip_network("2001::/32")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why an address is forbidden: its category and a short human reason."""

    category: Category
    address: str  # the address judged, compressed
    what: str  # "a link-local address", "an IPv4-mapped form of 127.0.0.1, a loopback address"

    @property
    def reason(self) -> str:
        return f"{self.address} is {self.what}"

    @property
    def private(self) -> bool:
        return self.category.private


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def _lookup(ip: IPAddress) -> Category | None:
    table = _V4_TABLE if ip.version == 4 else _V6_TABLE
    for net, category in table:
        if ip in net:
            return category
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    if ip in _TEREDO:
        teredo = ip.teredo
        assert teredo is not None
        return teredo[1], "Teredo client"  # the client is the inverted last 32 bits
    if ip in _SIXTOFOUR:
        v4 = ip.sixtofour
        assert v4 is not None
        return v4, "6to4"
    for net, form in _EMBEDS_LAST_32:
        if ip in net:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), form
    return None


def classify(ip: IPAddress) -> Verdict | None:
    """The verdict for a forbidden address, or None when it may be dialled (global unicast)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
    category = _lookup(ip)
    if category is not None and category is not LOCAL_NAT64:
        return Verdict(category, str(ip), f"{_article(category.name)} {category.name} address")
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            v4, form = embedded
            inner = classify(v4)
            if inner is not None:
                name = inner.category.name
                return Verdict(
                    inner.category,
                    str(ip),
                    f"{_article(form)} {form} form of {v4}, {_article(name)} {name} address",
                )
            if category is not None:  # local-use NAT64 embedding a global address
                return Verdict(category, str(ip), f"a {category.name} address")
            return None  # leads to a global IPv4 address
        if ip not in _GLOBAL_UNICAST:  # not global unicast: reserved by IANA
            return Verdict(RESERVED, str(ip), "a reserved address")
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why `ip` may not be dialled ("169.254.169.254 is a link-local address"), or None."""
    verdict = classify(ip)
    return None if verdict is None else verdict.reason


def parse_ip(host: str) -> IPAddress | None:
    """The address for an IP literal (brackets and an IPv6 zone allowed), else None.

    Only canonical dotted-quad IPv4 is a literal: `127.1` or `2130706433` are names to this
    function (a resolver then maps them, and the result is classified like any other)."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return None
