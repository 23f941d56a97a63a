"""The canonical identity of a proxied request: the one target crawlguard judges and forwards.

Every check (destination policy, robots.txt, pacing, records) must see the same host and
path that the proxy then connects to and sends, or a second spelling of a forbidden URL walks
through: `0x7f000001` is 127.0.0.1, `/%70rivate/` and `/a/../private/` are `/private/`.
So the proxy canonicalises once, decides on the result and forwards exactly that.

Pure: no I/O, no mitmproxy. Hosts follow the WHATWG URL host parser where browsers and
resolvers accept odd spellings (numeric IPv4 forms, IDNA), and refuse what is ambiguous;
paths follow RFC 3986 §6.2.2 (the equivalences every server honours) plus slash collapsing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

try:  # IDNA 2008 + UTS #46, what browsers use; a dependency of requests/yarl, so normally here
    import idna as _idna
except ImportError:  # pragma: no cover - exercised only without the package
    _idna = None

__all__ = [
    "DEFAULT_PORTS",
    "IdentityError",
    "Target",
    "canonical_host",
    "canonical_path",
    "normalize_escapes",
    "request_identity",
]

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}

MAX_HOST = 253
MAX_LABEL = 63


class IdentityError(ValueError):
    """A request target or host crawlguard will not guess at; the message is shown to the
    client (400/403 body), so it says what was wrong in plain words."""


# --- percent-encoding (RFC 3986 §2, §6.2.2) -----------------------------------------------

# Characters a path or query may carry verbatim (RFC 3986 pchar, plus "/" and "?"):
# unreserved, sub-delims, ":" and "@". Everything else ("[", "]", "#", space, quotes,
# "\\", "^", "`", "{|}", non-ASCII, a stray "%") is percent-encoded.
_KEEP = r"A-Za-z0-9\-._~!$&'()*+,;=:@/?"
_TO_FIX = re.compile(f"%([0-9A-Fa-f]{{2}})|[^{_KEEP}]".encode())
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _fixer(decode_unreserved: bool, encode_non_ascii: bool) -> Callable[[re.Match[bytes]], bytes]:
    def fix(m: re.Match[bytes]) -> bytes:
        hexpair = m.group(1)
        if hexpair is not None:
            octet = int(hexpair, 16)
            if decode_unreserved and octet in _UNRESERVED:
                return bytes((octet,))
            return b"%" + hexpair.upper()
        octet = m.group()[0]
        if octet >= 0x80 and not encode_non_ascii:
            return m.group()
        return b"%%%02X" % octet

    return fix


_FIXERS = {(d, e): _fixer(d, e) for d in (True, False) for e in (True, False)}


def _normal_form(decode_unreserved: bool, encode_non_ascii: bool) -> re.Pattern[str]:
    """What `normalize_escapes` leaves unchanged, as one regex: kept characters (raw non-ASCII
    too when it is not encoded; never lone surrogates, which stand for raw octets) and
    upper-case escapes, none of an unreserved character when those are decoded. Recognising
    a value already normal costs one scan (~30 ns an escape, against ~1 us an escape for the
    rewrite): the proxy's canonical targets are re-normalised by robots.txt matching."""
    chars = _KEEP if encode_non_ascii else _KEEP + "\x80-\ud7ff\ue000-\U0010ffff"
    hexdigits = "0123456789ABCDEF"
    escapes = [
        hi + "[" + "".join(
            lo
            for lo in hexdigits
            if not (decode_unreserved and int(hi + lo, 16) in _UNRESERVED)
        ) + "]"
        for hi in hexdigits
    ]  # fmt: skip
    return re.compile(rf"[{chars}]*+(?:%(?:{'|'.join(escapes)})[{chars}]*+)*+")


_NORMAL = {(d, e): _normal_form(d, e).fullmatch for d in (True, False) for e in (True, False)}


def _octets(value: str) -> bytes:
    """UTF-8 of `value`; lone surrogates from surrogateescape decoding are their raw octets."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def normalize_escapes(
    value: str, *, decode_unreserved: bool = True, encode_non_ascii: bool = True
) -> str:
    """One spelling per resource for a path or query (RFC 3986 §6.2.2.1, §6.2.2.2).

    Escapes of unreserved characters are decoded (`%70` is `p`: RFC 3986 calls them
    equivalent and RFC 9309 §2.2.2 says so for robots.txt), all other escapes upper-cased
    (`%2f` → `%2F`; `%2F` stays distinct from `/`), and every character RFC 3986 does not
    allow there is encoded as UTF-8 octets, a stray `%` as `%25`. `encode_non_ascii=False`
    leaves raw non-ASCII text alone (robots.txt's as-written reading of a URL). Idempotent.
    """
    if _NORMAL[decode_unreserved, encode_non_ascii](value):
        return value
    fixed = _TO_FIX.sub(_FIXERS[decode_unreserved, encode_non_ascii], _octets(value))
    return fixed.decode("utf-8", "surrogateescape")


# --- paths ---------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SLASHES = re.compile(r"//+")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path without empty segments (slashes collapsed)."""
    segments = path.split("/")[1:]
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == ".." and out:
            out.pop()
        if segment in (".", ".."):
            if i == last:
                out.append("")  # "/a/." and "/a/b/.." name a directory: keep the slash
            continue
        out.append(segment)
    return "/" + "/".join(out)


def canonical_path(target: str) -> str:
    """The origin-form request target (`/path?query`) the proxy judges and forwards.

    Escapes normalised (`normalize_escapes`) in path and query; in the path only, runs of
    "/" collapsed and then "." / ".." segments removed, so `//private/`, `/./private/`,
    `/a/../private/` and `/%2e/private/` are all `/private/` (servers resolve them so; a
    rule for `/private` must see them so). A fragment is dropped: it is never sent to a
    server. `*` and `$` stay literal: robots.txt matching spells them its own way.
    Raises IdentityError for `*`, targets not starting with "/", and raw control characters
    (`%00` and friends stay encoded). Idempotent.
    """
    if target == "*":
        raise IdentityError("request target '*' (OPTIONS *) cannot be proxied")
    if _CONTROL.search(target):
        raise IdentityError("request target contains a raw control character")
    target = target.partition("#")[0]
    if not target.startswith("/"):
        raise IdentityError(f"request target must start with '/': {target[:200]!r}")
    path, question, query = target.partition("?")
    path = _SLASHES.sub("/", normalize_escapes(path))
    if "." in path:
        path = _remove_dot_segments(path)
    if question:
        return f"{path}?{normalize_escapes(query)}"
    return path


# --- hosts ---------------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def _ipv4_number(part: str) -> int:
    """WHATWG "parse an IPv4 number": decimal, 0x-hex or leading-0 octal; "0x" alone is 0."""
    digits, radix = part, 10
    if len(part) >= 2 and part[:2] in ("0x", "0X"):
        digits, radix = part[2:], 16
    elif len(part) >= 2 and part[0] == "0":
        digits, radix = part[1:], 8
    if not digits:
        return 0
    try:
        if not digits.isascii() or not digits.isalnum():  # int() also takes "+1", " 1", "1_0"
            raise ValueError(digits)
        return int(digits, radix)
    except ValueError:
        raise IdentityError(f"not a number in an IPv4 address: {part[:20]!r}") from None


def _ipv4(labels: list[str]) -> str:
    """WHATWG IPv4 parser: 1-4 parts, the last filling the remaining bytes; dotted quad."""
    if len(labels) > 4:
        raise IdentityError("an IPv4 address has at most 4 parts")
    numbers = [_ipv4_number(p) for p in labels]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise IdentityError("IPv4 address out of range")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n * 256 ** (3 - i)
    return str(ipaddress.IPv4Address(value))


def _ends_in_number(last: str) -> bool:
    """WHATWG "ends in a number", widened to any label starting "0x": `0x1g` is refused
    rather than read as a name, since resolvers and browsers disagree on such labels."""
    return bool(_DIGITS.fullmatch(last)) or last[:2] in ("0x", "0X")


def _to_ascii(host: str) -> str:
    """IDNA: UTS #46 mapping (case, width, ideographic dots) then A-labels for non-ASCII."""
    try:
        if _idna is not None:
            mapped = _idna.uts46_remap(host, std3_rules=False, transitional=False)
            return ".".join(
                label if label.isascii() else _idna.alabel(label).decode("ascii")
                for label in mapped.split(".")
            )
        import encodings.idna as codec  # IDNA 2003 (nameprep lower-cases)

        labels = codec.dots.split(host)
        return ".".join(
            label.lower() if label.isascii() else codec.ToASCII(label).decode("ascii")
            for label in labels
        )
    except (UnicodeError, ValueError) as exc:  # idna.IDNAError is a UnicodeError
        raise IdentityError(f"host is not a valid internationalised name: {exc}") from None


def _ipv6(literal: str) -> str:
    if "%" in literal:
        raise IdentityError("IPv6 zone identifiers are not allowed in a host")
    try:
        return ipaddress.IPv6Address(literal).compressed
    except ValueError:
        raise IdentityError(f"not a valid IPv6 address: {literal[:100]!r}") from None


def canonical_host(host: str) -> str:
    """The one spelling of a host the proxy resolves, connects to and judges.

    Lower case, one trailing dot dropped, non-ASCII names as IDNA A-labels, IPv6 literals
    compressed without brackets, and every IPv4 spelling a resolver or browser would accept
    (`0x7f000001`, `2130706433`, `127.1`, `0177.0.0.1`) as a dotted quad, so that address
    rules and robots caches see one host. Refuses empty labels, zone ids, characters outside
    [a-z0-9_.-] and names too long for DNS.
    """
    if not host:
        raise IdentityError("empty host")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise IdentityError(f"unbalanced brackets in host {host[:100]!r}")
        return _ipv6(host[1:-1])
    if ":" in host:
        return _ipv6(host)
    name = host.lower() if host.isascii() else _to_ascii(host).lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise IdentityError("empty host")
    if len(name) > MAX_HOST:
        raise IdentityError(f"host longer than {MAX_HOST} characters")
    labels = name.split(".")
    if _ends_in_number(labels[-1]):
        if "" in labels:
            raise IdentityError(f"empty label in host {host[:100]!r}")
        return _ipv4(labels)
    for label in labels:
        if not _LABEL.fullmatch(label):
            if not label:
                raise IdentityError(f"empty label in host {host[:100]!r}")
            if len(label) > MAX_LABEL:
                raise IdentityError(f"host label longer than {MAX_LABEL} characters")
            raise IdentityError(f"character not allowed in host {host[:100]!r}")
    return name


# --- the request -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What the proxy connects to (scheme, host, port) and forwards (path), all canonical."""

    scheme: str
    host: str  # canonical_host: IPv6 without brackets
    port: int
    path: str  # canonical_path: path and query

    @property
    def _host_literal(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def origin(self) -> str:
        """`scheme://host:port`, port always spelled: the key robots.txt is fetched under."""
        return f"{self.scheme}://{self._host_literal}:{self.port}"

    @property
    def authority(self) -> str:
        """Host, plus `:port` unless the scheme's default: what the Host header is set to."""
        if DEFAULT_PORTS.get(self.scheme) == self.port:
            return self._host_literal
        return f"{self._host_literal}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"

    @property
    def is_robots_txt(self) -> bool:
        """The target is /robots.txt itself (with or without a query), always allowed."""
        return self.path.partition("?")[0] == "/robots.txt"


def _port(scheme: str, port: int | None) -> int:
    if port is None:
        return DEFAULT_PORTS[scheme]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise IdentityError(f"port out of range: {port!r}")
    return port


def request_identity(
    scheme: str, host: str, port: int | None, target: str, *, host_is_canonical: bool = False
) -> Target:
    """The canonical Target of a request, or IdentityError saying why there is none.

    `scheme` http or https (any case), `port` None for the scheme's default, `target` the
    origin-form request target as sent. `host_is_canonical`: the host is `canonical_host`'s
    output already (a tunnel's, made canonical at its CONNECT): not redone per request.
    """
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise IdentityError(f"scheme must be http or https, not {scheme[:20]!r}")
    if not host_is_canonical:
        host = canonical_host(host)
    return Target(scheme, host, _port(scheme, port), canonical_path(target))
