"""robots.txt rules (RFC 9309) behind crawlguard's own interface; the only module importing Protego.

Protego parses the records, but not the file as served: measured against RFC 9309 and
Google's conformance suite, Protego alone lets an unknown line end a group, matches group
names by substring, reads a UTF-8 BOM into the first line and cannot say which line
decided a verdict. So the body is first rewritten into a canonical form:

- lines split on CR, LF and CRLF, comments and unknown records dropped (RFC 9309 §2.2.4:
  other records must not end a group), BOM removed, invalid UTF-8 kept as raw octets;
- each group spelled out explicitly: all its user-agent lines first, then its records,
  under one synthetic agent name per group, so Protego keeps groups apart and we can merge
  the groups naming a product token ourselves (§2.2.1), with exact, case-insensitive names;
- each allow/disallow value replaced by a reference into our rule table, which keeps the
  line as written (for violation records) and the pattern percent-normalised (§2.2.2).

Protego parses that text (grouping, Crawl-delay and Request-rate values); selection and
longest-match are ours, pre-computed per product token because `decide` runs per request.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field

from protego import Protego

log = logging.getLogger("crawlguard")

MAX_BYTES = 500 * 1024
MAX_RULE_TEXT = 1000  # a rule quoted in a violation record is cut here (hostile lines)

_STAR = "*"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WHITESPACE = re.compile(r"\s+")
_IDENTIFIER = re.compile(r"[A-Za-z_-]+")
_PRODUCT = re.compile(r"(?:^|(?<=[\s;(,]))([A-Za-z_-]+)/[A-Za-z0-9]")
_COMPATIBLE = re.compile(r"compatible\s*;\s*([A-Za-z_-]+)(?![A-Za-z0-9_.-])", re.IGNORECASE)
_COMMENT = re.compile(r"\([^()]*\)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Strict numbers: Python's float()/int() also take "1_000", "nan" and non-ASCII digits.
_DELAY = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_RATE = re.compile(r"[0-9]+/[0-9]+[smhd]?(?:\s+[0-9]{3,4}-[0-9]{3,4})?", re.ASCII | re.IGNORECASE)

# Field names (lower case, inner whitespace as one space) as Protego and Google read them,
# misspellings included. Everything else is an "other record" and is dropped.
_FIELDS: dict[str, str] = {
    "user-agent": "agent",
    "useragent": "agent",
    "user agent": "agent",
    "allow": "allow",
    "disallow": "disallow",
    "dissallow": "disallow",
    "dissalow": "disallow",
    "disalow": "disallow",
    "diasllow": "disallow",
    "disallaw": "disallow",
    "crawl-delay": "crawl-delay",
    "crawl delay": "crawl-delay",
    "crawldelay": "crawl-delay",
    "request-rate": "request-rate",
    "request rate": "request-rate",
}

# RFC 3986 characters a normalised path or pattern keeps verbatim: unreserved and reserved,
# minus "*" and "$", which robots.txt patterns use as operators (§2.2.3: a literal one is
# written %2A / %24, so the URL side spells them that way too).
_KEEP = r"A-Za-z0-9\-._~:/?#\[\]@!&'()+,;="
_CLEAN = re.compile(f"[{_KEEP}]*").fullmatch
_TO_FIX = re.compile(f"%([0-9A-Fa-f]{{2}})|[^{_KEEP}]".encode())


def _fixer(encode_non_ascii: bool):  # type: ignore[no-untyped-def]
    def fix(m: re.Match[bytes]) -> bytes:
        hexpair = m.group(1)
        if hexpair is not None:
            return b"%" + hexpair.upper()
        octet = m.group()[0]
        if octet >= 0x80 and not encode_non_ascii:
            return m.group()
        return b"%%%02X" % octet

    return fix


_FIX_ALL = _fixer(True)
_FIX_ASCII = _fixer(False)


def normalize_path(value: str, *, encode_non_ascii: bool = True) -> str:
    """One spelling per octet sequence, so pattern and URL compare as octets (RFC 9309 §2.2.2).

    Escapes are upper-cased and kept as written (Google's reference parser and its test suite
    compare `%62%61%7A` and `baz` as different paths); anything outside RFC 3986 (spaces, a
    stray "%", raw invalid octets) is encoded, and so is non-ASCII text unless
    `encode_non_ascii` is false. Rules always encode it; a URL given to `decide` is taken as
    already encoded by its sender (the proxy encodes raw request targets with
    `request_target` first), so a raw non-ASCII URL matches no encoded rule, as in Google's.
    """
    if _CLEAN(value):
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    fixed = _TO_FIX.sub(_FIX_ALL if encode_non_ascii else _FIX_ASCII, raw)
    return fixed.decode("utf-8", "surrogateescape")


def request_target(path: str) -> str:
    """The RFC 3986 spelling of a request target as it came off the wire: what a conforming
    client sends. The proxy applies it before `decide`, so raw UTF-8 cannot dodge a rule."""
    return normalize_path(path)


def _target(url: str) -> str:
    """Path and query of `url` (absolute URL or path+query), as rules match them."""
    url = url.partition("#")[0]
    if url.startswith("/"):
        return url  # also "//x": the proxy hands us request paths, never network-path refs
    m = _SCHEME.match(url)
    start = m.end() if m else 0
    # Like Google's parser: without a scheme, text before the first "/" or "?" is a host.
    cut = min((i for i in (url.find("/", start), url.find("?", start)) if i >= 0), default=-1)
    if cut < 0:
        return "/"
    path = url[cut:]
    return path if path.startswith("/") else "/" + path


def product_token_of(user_agent: str) -> str:
    """The RFC 9309 product token a crawler with this User-Agent matches robots.txt groups with.

    First that applies: the name right after "compatible;" ("Mozilla/5.0 (compatible;
    AcmeBot/1.2; +https://…)" → AcmeBot); the first name/version product outside comments
    that is not part of a browser's usual string ("AcmeBot/1.2 (+https://…)" → AcmeBot);
    the first name/version product at all; else the leading run of [A-Za-z_-] ("AcmeBot
    (+https://…)" → AcmeBot). A name is [A-Za-z_-]+, the RFC 9309 identifier; "" if none.
    """
    ua = user_agent.strip()
    m = _COMPATIBLE.search(ua)
    if m:
        return m.group(1)
    outside = ua
    for _ in range(8):  # nested comments, bounded
        stripped = _COMMENT.sub(" ", outside)
        if stripped == outside:
            break
        outside = stripped
    names = [p.group(1) for p in _PRODUCT.finditer(outside)]
    for name in names:
        if name.lower() not in _BROWSER_PRODUCTS:
            return name
    if names:
        return names[0]
    m = _IDENTIFIER.match(ua)
    return m.group() if m else ""


_BROWSER_PRODUCTS = frozenset(
    {
        "mozilla", "applewebkit", "chrome", "chromium", "safari", "gecko", "firefox",
        "version", "mobile", "edg", "edge", "edga", "edgios", "opr", "opera", "trident",
        "presto", "crios", "fxios", "samsungbrowser", "yabrowser", "vivaldi", "brave",
        "ucbrowser", "mobile-safari", "headlesschrome",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    allowed: bool
    rule: str | None  # deciding line as written, e.g. "Disallow: /private"; None if none matched
    crawl_delay: float | None  # seconds, for the group that applies to the product token
    request_rate: tuple[int, float] | None  # (requests, seconds) for that group


@dataclass(frozen=True, slots=True)
class _Rule:
    allow: bool
    text: str  # the line as written, comment and surrounding whitespace removed
    priority: int  # octets in the normalised pattern, "*" and "$" included (Google, RFC §2.2.2)
    parts: tuple[str, ...]  # normalised literals around the "*"s
    anchored: bool  # pattern ended in "$"


def _compile_rule(allow: bool, value: str, text: str) -> list[_Rule]:
    anchored = value.endswith("$")
    if anchored:
        value = value[:-1]
    parts = tuple(normalize_path(p) for p in re.sub(r"\*+", _STAR, value).split(_STAR))
    priority = sum(map(len, parts)) + len(parts) - 1 + anchored
    rules = [_Rule(allow, text, priority, parts, anchored)]
    # Google and Protego read "Allow: /dir/index.html" as allowing "/dir/" too.
    if allow and not anchored and len(parts) == 1 and parts[0].endswith("/index.html"):
        directory = parts[0][: -len("index.html")]
        rules.append(_Rule(True, text, len(directory) + 1, (directory,), True))
    return rules


_GRAM = 3
_PLAIN_ENTRY_BYTES = 200
_WILD_ENTRY_BYTES = 400
_RULES_BASE_BYTES = 1024
_Hit = tuple[int, bool, str]  # (priority, allow, rule text): the larger tuple[:2] wins


class _Matcher:
    """Longest match over one merged set of rules, indexed so a request costs few probes.

    Plain prefixes sit in a dict probed once per distinct pattern length; "$"-anchored
    literals in a dict probed once; only patterns with "*" are tried one by one, best first.
    """

    __slots__ = ("_exact", "_lengths", "_prefix", "_wild", "weight")

    def __init__(self, rules: list[_Rule]) -> None:
        prefix: dict[str, tuple[bool, str]] = {}
        exact: dict[str, tuple[bool, str]] = {}
        wild: dict[tuple[tuple[str, ...], bool, bool], _Rule] = {}
        for rule in rules:
            if len(rule.parts) > 1:
                wild.setdefault((rule.parts, rule.anchored, rule.allow), rule)
                continue
            table = exact if rule.anchored else prefix
            seen = table.get(rule.parts[0])
            if seen is None or (rule.allow and not seen[0]):  # first line wins; Allow wins ties
                table[rule.parts[0]] = (rule.allow, rule.text)
        self._prefix = prefix
        self._exact = exact
        self._lengths = tuple(sorted({len(p) for p in prefix}, reverse=True))
        # Flat tuples, best first: this loop is the one hostile files can make long. Each
        # carries a trigram of its longest literal: a path lacking it is skipped unscanned.
        self._wild = [
            (
                r.priority,
                r.allow,
                r.text,
                max(r.parts, key=len)[:_GRAM],
                r.parts[0],
                r.parts[1:-1],
                r.parts[-1],
                r.anchored,
            )
            for r in sorted(wild.values(), key=lambda r: (r.priority, r.allow), reverse=True)
        ]
        # Approximate bytes held (CPython objects, measured with tracemalloc): what a cache
        # bounded in bytes must count, the parsed form being ~10-25x the body.
        self.weight = sum(
            _PLAIN_ENTRY_BYTES + 2 * len(key) + len(text)
            for table in (prefix, exact)
            for key, (_, text) in table.items()
        ) + sum(_WILD_ENTRY_BYTES + 2 * len(w[2]) for w in self._wild)

    def best(self, path: str) -> _Hit | None:
        best: _Hit | None = None
        size = len(path)
        for length in self._lengths:
            if length <= size:
                hit = self._prefix.get(path[:length])
                if hit is not None:
                    best = (length, hit[0], hit[1])
                    break
        hit = self._exact.get(path)
        if hit is not None and (best is None or (size + 1, hit[0]) > best[:2]):
            best = (size + 1, hit[0], hit[1])
        if not self._wild:
            return best
        floor = best[:2] if best is not None else (-1, False)
        grams = {path[i : i + _GRAM] for i in range(size - _GRAM + 1)}
        for priority, allow, text, gram, head, middle, tail, anchored in self._wild:
            if (priority, allow) <= floor:
                break
            if (len(gram) == _GRAM and gram not in grams) or not path.startswith(head):
                continue
            pos = len(head)
            for part in middle:  # leftmost placement of each literal is optimal for "*"
                pos = path.find(part, pos)
                if pos < 0:
                    break
                pos += len(part)
            else:
                if (
                    size - len(tail) >= pos and path.endswith(tail)
                    if anchored
                    else path.find(tail, pos) >= 0
                ):
                    return (priority, allow, text)
        return best


@dataclass(frozen=True, slots=True)
class _Selection:
    matcher: _Matcher
    crawl_delay: float | None
    request_rate: tuple[int, float] | None


@dataclass(slots=True)
class _Group:
    agents: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # canonical records for Protego


def _agent_name(value: str) -> str:
    """A user-agent line's product token, lower case; "" if it names none.

    "*" alone (or followed by whitespace) is the global group; otherwise the name is the
    leading [A-Za-z_-] run, so "FOO BAR" and "FooBot/1.0" name foo and foobot (as Google).
    """
    if value == _STAR or (value[:1] == _STAR and value[1:2].isspace()):
        return _STAR
    m = _IDENTIFIER.match(value)
    return m.group().lower() if m else ""


def _record(line: str) -> tuple[str, str] | None:
    """(kind, value) of a comment-free, stripped line, or None for other records."""
    name, colon, value = line.partition(":")
    if colon:
        kind = _FIELDS.get(" ".join(name.split()).lower())
        if kind is not None:
            return kind, value.strip()
    # "<field> <value>" without a colon, or with one inside the value ("Disallow /a:b").
    words = _WHITESPACE.split(line, maxsplit=2)
    if len(words) >= 2 and (kind := _FIELDS.get(f"{words[0]} {words[1]}".lower())):
        return kind, words[2] if len(words) == 3 else ""
    if kind := _FIELDS.get(words[0].lower()):
        return kind, line[len(words[0]) :].strip()
    return None


def _readable(text: str) -> str:
    """Rule text safe for logs, JSON and SQLite: raw invalid octets become U+FFFD."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text if len(text) <= MAX_RULE_TEXT else text[: MAX_RULE_TEXT - 1] + "…"


def _canonicalize(text: str) -> tuple[list[_Group], list[list[_Rule]]]:
    """Groups (RFC 9309 §2.1) with canonical records, and the rule table they refer to."""
    groups: list[_Group] = []
    table: list[list[_Rule]] = []
    group: _Group | None = None
    in_rules = False  # an allow/disallow line was seen: the next user-agent line starts a group
    for raw in _LINE_BREAK.split(text):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        record = _record(line)
        if record is None:
            continue
        kind, value = record
        if kind == "agent":
            if group is None or in_rules:
                group = _Group()
                groups.append(group)
                in_rules = False
            name = _agent_name(value)
            if name and name not in group.agents:
                group.agents.append(name)
        elif group is None:
            continue  # records before the first user-agent line belong to no group
        elif kind in ("allow", "disallow"):
            in_rules = True
            if value:
                group.lines.append(f"{kind}: /{len(table)}")
                table.append(_compile_rule(kind == "allow", value, _readable(line)))
        elif (kind == "crawl-delay" and _DELAY.fullmatch(value)) or (
            kind == "request-rate" and _RATE.fullmatch(value)
        ):
            group.lines.append(f"{kind}: {value}")
    return groups, table


class RobotsRules:
    """A parsed robots.txt. Never raises on any body; bodies over MAX_BYTES are truncated."""

    def __init__(
        self, body: bytes, sha256: str, selections: dict[str, _Selection] | None = None
    ) -> None:
        """Use `parse`; `selections` maps lower-case product tokens ("*" included) to rules.

        Only the selections are kept: Protego's parse tree is not needed once they are built,
        and a cache holds one of these per origin.
        """
        self.body = body
        self.sha256 = sha256
        self._selections = selections or {}
        self._default = self._selections.get(_STAR, _EMPTY)
        distinct = {id(sel): sel for sel in self._selections.values()}.values()
        self.footprint = _RULES_BASE_BYTES + len(body) + sum(sel.matcher.weight for sel in distinct)
        """Approximate bytes this object keeps alive, for caches bounded in bytes."""

    @classmethod
    def parse(cls, body: bytes) -> RobotsRules:
        body = bytes(body[:MAX_BYTES])
        sha256 = hashlib.sha256(body).hexdigest()
        try:
            text = body.decode("utf-8-sig", errors="surrogateescape")
            groups, table = _canonicalize(text)
            # One synthetic agent per group; the closing empty "disallow:" ends it for Protego.
            canonical = [
                "\n".join([f"user-agent: g{i}", *g.lines, "disallow:\n"])
                for i, g in enumerate(groups)
                if g.agents
            ]
            parser = Protego.parse("".join(canonical))
            return cls(body, sha256, _select_all(groups, table, parser))
        except Exception:  # a bug here must not take the proxy down: no restrictions
            log.exception("robots.txt could not be parsed")
            return cls(body, sha256)

    def decide(self, product_token: str, url: str) -> RobotsVerdict:
        """Verdict for `url` (absolute URL or path+query) for the crawler's product token."""
        sel = self._selections.get(product_token.strip().lower(), self._default)
        path = normalize_path(_target(url), encode_non_ascii=False)
        hit = None
        if path != "/robots.txt" and not path.startswith("/robots.txt?"):
            hit = sel.matcher.best(path)
        return RobotsVerdict(
            allowed=hit is None or hit[1],
            rule=None if hit is None else hit[2],
            crawl_delay=sel.crawl_delay,
            request_rate=sel.request_rate,
        )


def _select_all(
    groups: list[_Group], table: list[list[_Rule]], parser: Protego
) -> dict[str, _Selection]:
    """Per product token named in the file (and "*"): its groups merged, from Protego's parse."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        for name in group.agents:
            members.setdefault(name, []).append(i)
    rule_sets = parser._user_agents  # Protego's parsed groups, keyed by our synthetic names
    built: dict[tuple[int, ...], _Selection] = {}
    selections: dict[str, _Selection] = {}
    for name, ids in members.items():
        key = tuple(ids)
        if key not in built:
            rules: list[_Rule] = []
            delay: float | None = None
            rate: tuple[int, float] | None = None
            for i in ids:  # file order: a later Crawl-delay/Request-rate wins, as in Protego
                rule_set = rule_sets.get(f"g{i}")
                if rule_set is None:
                    continue
                # Protego sorts its rules; file order keeps "the first such line" stable.
                refs = sorted(int(rule.value._pattern[1:]) for rule in rule_set._rules)
                for ref in refs:
                    rules.extend(table[ref])
                if rule_set.crawl_delay is not None:
                    delay = float(rule_set.crawl_delay)
                if rule_set.request_rate is not None:
                    rate = (rule_set.request_rate.requests, float(rule_set.request_rate.seconds))
            built[key] = _Selection(_Matcher(rules), delay, rate)
        selections[name] = built[key]
    return selections


_EMPTY = _Selection(_Matcher([]), None, None)

ALLOW_ALL = RobotsRules.parse(b"")
DISALLOW_ALL = RobotsRules.parse(b"User-agent: *\nDisallow: /\n")
