"""robots.txt rules (RFC 9309): crawlguard's own parser, group selection and matcher.

No third-party parser: crawlguard reads the file itself (`_groups`), as RFC 9309 and
Google's matcher do, which Protego alone did not (an unknown line ending a group, group names
matched by substring, a UTF-8 BOM read into the first line, no way to say which line decided
a verdict). Protego used to re-parse a synthetic copy of our groups and hand back exactly
those groups' lines (0 differences over the conformance suite and the golden corpus of
tests/test_robots_golden.py) for 31-44 % of the parse time, so it was removed. The reading:

- lines split on CR, LF and CRLF, comments and unknown records dropped (RFC 9309 §2.2.4:
  other records must not end a group), BOM removed, invalid UTF-8 kept as raw octets;
- a group is its run of user-agent lines and the records up to the next user-agent line
  that follows an allow/disallow line; names compared exactly, case-insensitively, and the
  groups naming a product token merged (§2.2.1), else the "*" group(s);
- each allow/disallow line kept as written (for violation records) and its pattern
  percent-normalised (§2.2.2);
- Crawl-delay and Request-rate values validated and kept on the group.

Selection, longest-match and the delay that applies (the largest Crawl-delay, the slowest
Request-rate of the merged groups) are pre-computed per product token because `decide` runs
per request.

Percent-encoding, where safety wins: a URL is allowed only if both readings allow it, the
RFC 9309 §2.2.2 one (escapes of unreserved characters decoded on both sides, so
`Disallow: /private` catches `/%70rivate`) and the as-written one of Google's matcher
(`Allow: /%62az` does not allow `/baz`). The second is only evaluated when a pattern or the
URL holds such an escape.

Bounded cost (issue 9): `decide` runs on the proxy's event loop, so no file and no URL may
make it slow. Plain and "$"-anchored literals cost dict probes; patterns with "*" are
indexed by a literal a match needs (issue 12: `_Matcher`), and the candidates the index
finds are tried one by one, each a left-to-right scan of the path: at worst rules x path
length. Three limits bound it, each failing CLOSED for the one site (or URL) that exceeds it:

- at most MAX_WILDCARD_RULES (1,000) distinct "*" patterns in any merged group, and none
  longer than MAX_WILDCARD_PATTERN (1,024 octets, normalised): a file beyond either is
  `RobotsRules.too_complex` (the reason) and every URL but /robots.txt is disallowed with
  the rule text "robots.txt exceeds crawlguard's limits (...)";
- per decision (both readings of the URL together), at most MATCH_BUDGET (1 MiB) octets of
  path are scanned by "*" patterns: each one tried costs the path's length (the index
  skips those that cannot match); a URL whose verdict would need more (e.g.
  over 64 "*" patterns that all need a full look at a 16 KiB URL, or 6 at a 200 KB one) is
  disallowed with the rule text "robots.txt exceeds crawlguard's limits (N-octet URL x M
  wildcard rules)". Short URLs never reach it: 1,000 patterns x 1 KiB is within budget.

Worst case measured (benchmarks/robots_hostile.py, loaded 2-core machine): 2-5 ms per
decision for URLs up to 16 KiB (files at the caps; ~0.4 ms for a too-complex one), 3-9 ms
for 200 KB ones, where checking the URL's escapes is most of it.
A parser error is also fail-closed for that site (`RobotsRules.parse_error`, everything
but /robots.txt disallowed), like a failed fetch, never "no restrictions".
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import sys
from dataclasses import dataclass, field

from crawlguard.policy.identity import normalize_escapes

log = logging.getLogger("crawlguard")

MAX_BYTES = 500 * 1024
MAX_RULE_TEXT = 1000  # a rule quoted in a violation record is cut here (hostile lines)
MAX_WILDCARD_RULES = 1000  # distinct "*" patterns per merged group; beyond: too complex
MAX_WILDCARD_PATTERN = 1024  # octets of a normalised "*" pattern; beyond: too complex
MATCH_BUDGET = 1024 * 1024  # octets of path "*" patterns may scan per decision
LIMITS = "robots.txt exceeds crawlguard's limits"

_STAR = "*"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WHITESPACE = re.compile(r"\s+")
_IDENTIFIER = re.compile(r"[A-Za-z_-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Strict numbers: Python's float()/int() also take "1_000", "nan" and non-ASCII digits.
_DELAY = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
# An escape of an RFC 3986 unreserved character: the two readings of a URL differ only then.
_UNRESERVED_ESCAPE = re.compile(r"%(?:2[DEde]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|7[Ee])")
_RATE = re.compile(r"[0-9]+/[0-9]+[smhd]?(?:\s+[0-9]{3,4}-[0-9]{3,4})?", re.ASCII | re.IGNORECASE)

# Field names (lower case, inner whitespace as one space) as Google's and Protego's parsers
# read them, misspellings included. Everything else is an "other record" and is dropped.
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


def normalize_path(
    value: str, *, encode_non_ascii: bool = True, decode_unreserved: bool = True
) -> str:
    """One spelling per octet sequence, so pattern and URL compare as octets (RFC 9309 §2.2.2).

    The escape handling of `identity.canonical_path` (escapes of unreserved characters
    decoded unless `decode_unreserved` is false, other escapes upper-cased, anything outside
    RFC 3986 encoded, non-ASCII text too unless `encode_non_ascii` is false), plus "*" and
    "$" written %2A / %24: patterns use them as operators (§2.2.3), so a literal one is
    spelled encoded on both sides. Rules always encode non-ASCII; a URL given to `decide` is
    taken as already encoded by its sender (the proxy canonicalises request targets first),
    so a raw non-ASCII URL matches no encoded rule, as in Google's.
    """
    value = normalize_escapes(
        value, decode_unreserved=decode_unreserved, encode_non_ascii=encode_non_ascii
    )
    if "*" in value or "$" in value:
        value = value.replace("*", "%2A").replace("$", "%24")
    return value


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


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    allowed: bool
    rule: str | None  # deciding line as written, e.g. "Disallow: /private"; None if none matched
    crawl_delay: float | None  # seconds: the largest in the groups that apply to the token
    request_rate: tuple[int, float] | None  # (requests, seconds): the slowest in those groups
    # Lower-case user-agent names of every group merged into the selection that applied,
    # file order: ("examplebot", "*"), ("*",) for a token that fell back to "*", () for none.
    agents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Rule:
    allow: bool
    text: str  # the line as written, comment and surrounding whitespace removed
    priority: int  # octets in the normalised pattern, "*" and "$" included (Google, RFC §2.2.2)
    parts: tuple[str, ...]  # normalised literals around the "*"s
    anchored: bool  # pattern ended in "$"


def _compile_rule(allow: bool, value: str, text: str, decode: bool = True) -> list[_Rule]:
    """The rule(s) of one allow/disallow line; `decode`: the RFC 9309 §2.2.2 reading, where
    escapes of unreserved characters are the characters (else the as-written reading)."""
    anchored = value.endswith("$")
    if anchored:
        value = value[:-1]
    parts = tuple(
        normalize_path(p, decode_unreserved=decode)
        for p in re.sub(r"\*+", _STAR, value).split(_STAR)
    )
    priority = sum(map(len, parts)) + len(parts) - 1 + anchored
    rules = [_Rule(allow, text, priority, parts, anchored)]
    # Google and Protego read "Allow: /dir/index.html" as allowing "/dir/" too.
    if allow and not anchored and len(parts) == 1 and parts[0].endswith("/index.html"):
        directory = parts[0][: -len("index.html")]
        rules.append(_Rule(True, text, len(directory) + 1, (directory,), True))
    return rules


_GRAM = 3
_GRAM_PATH_MAX = 2048  # a path's trigram set costs ~0.3 us per octet: short paths only
_GRAMS_PER_PART = 64  # trigrams of a literal considered for the index (bounds parse time)
_OVER_BUDGET = sys.maxsize  # priority of the fail-closed hit when MATCH_BUDGET runs out
_PLAIN_ENTRY_BYTES = 200
_WILD_ENTRY_BYTES = 400
_RULES_BASE_BYTES = 1024
_SELECTION_BYTES = 200  # a _Selection and its agents tuple, beyond the matchers
_VERDICTS_KEPT = 8  # verdicts a selection keeps for reuse (RobotsVerdict is immutable)
_VERDICT_BYTES = 160  # one kept: the verdict, its key and its dict slot
_NAME_ENTRY_BYTES = 120  # a product token's entry in the selections dict, beyond its text
_NO_INDEX: dict[str, list[int]] = {}  # never written to
_Hit = tuple[int, bool, str]  # (priority, allow, rule text): the larger tuple[:2] wins


class _Matcher:
    """Longest match over one merged set of rules, indexed so a request costs few probes.

    Plain prefixes sit in a dict probed once per distinct pattern length; "$"-anchored
    literals in a dict probed once. Patterns with "*" are kept best first and indexed by a
    literal a matching path must hold: its tail when "$"-anchored (a suffix probe), else its
    head when longer than "/" (a prefix probe), else the rarest trigram of its literals (one
    probe per trigram of a path up to 2 KiB; longer paths try them all). Only the candidates
    found, and the few patterns with no such literal, are tried, best first, within
    MATCH_BUDGET. A pattern skipped this way cannot match: the verdict is the one trying
    them all would give.
    `limit` says why the rules exceed crawlguard's limits, else None.
    """

    __slots__ = (
        "_by_gram",
        "_by_head",
        "_by_tail",
        "_exact",
        "_gram_all",
        "_head_lengths",
        "_lengths",
        "_prefix",
        "_scan",
        "_tail_lengths",
        "_wild",
        "limit",
        "weight",
        "wildcards",
    )

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
        # Flat tuples, best first: the order candidates are tried in.
        self._wild = [
            (
                r.priority,
                r.allow,
                r.text,
                r.parts[0],
                r.parts[1:-1],
                r.parts[-1],
                r.anchored,
            )
            for r in sorted(wild.values(), key=lambda r: (r.priority, r.allow), reverse=True)
        ]
        by_tail: dict[str, list[int]] = {}
        by_head: dict[str, list[int]] = {}
        by_gram: dict[str, list[int]] = {}
        scan: list[int] = []
        grams: dict[int, set[str]] = {}  # per pattern left to the trigram index: its trigrams
        for i, (_, _, _, head, middle, tail, anchored) in enumerate(self._wild):
            if anchored and tail:
                by_tail.setdefault(tail, []).append(i)
            elif len(head) > 1:
                by_head.setdefault(head, []).append(i)
            elif own := {
                part[j : j + _GRAM]
                for part in (head, *middle, tail)
                for j in range(min(len(part) - _GRAM + 1, _GRAMS_PER_PART))
            }:
                grams[i] = own
            else:
                scan.append(i)
        # Each pattern under its rarest trigram, so that patterns sharing a literal (such as
        # "/*?session=...") do not all land in one bucket.
        counts: dict[str, int] = {}
        for own in grams.values():
            for gram in own:
                counts[gram] = counts.get(gram, 0) + 1
        for i, own in grams.items():
            by_gram.setdefault(min(own, key=lambda g: (counts[g], g)), []).append(i)
        # Empty indexes share one dict: a cache holds many matchers without "*" patterns.
        self._by_tail = by_tail or _NO_INDEX
        self._tail_lengths = tuple(sorted({len(t) for t in by_tail}))
        self._by_head = by_head or _NO_INDEX
        self._head_lengths = tuple(sorted({len(h) for h in by_head}))
        self._by_gram = by_gram or _NO_INDEX
        self._gram_all = tuple(sorted(grams))
        self._scan = tuple(scan)
        self.wildcards = len(self._wild)
        """Distinct "*" patterns (the merged group's count against MAX_WILDCARD_RULES)."""
        self.limit: str | None = None
        if len(self._wild) > MAX_WILDCARD_RULES:
            self.limit = f"{len(self._wild)} wildcard rules > {MAX_WILDCARD_RULES}"
        elif self._wild and self._wild[0][0] > MAX_WILDCARD_PATTERN:
            longest = self._wild[0][0]
            self.limit = f"a {longest}-octet wildcard pattern > {MAX_WILDCARD_PATTERN}"
        # Approximate bytes held (CPython objects, measured with tracemalloc): what a cache
        # bounded in bytes must count, the parsed form being ~10-25x the body.
        self.weight = sum(
            _PLAIN_ENTRY_BYTES + 2 * len(key) + len(text)
            for table in (prefix, exact)
            for key, (_, text) in table.items()
        ) + sum(_WILD_ENTRY_BYTES + 2 * len(w[2]) for w in self._wild)

    def _candidates(self, path: str) -> list[int]:
        """Positions in `_wild` of the patterns that may match `path`, ascending (best first)."""
        found = list(self._scan)
        size = len(path)
        if self._by_tail:
            for length in self._tail_lengths:
                if length > size:
                    break
                if (hit := self._by_tail.get(path[size - length :])) is not None:
                    found += hit
        if self._by_head:
            for length in self._head_lengths:
                if length > size:
                    break
                if (hit := self._by_head.get(path[:length])) is not None:
                    found += hit
        if by_gram := self._by_gram:
            if size > _GRAM_PATH_MAX:  # all are candidates; MATCH_BUDGET bounds the work
                found += self._gram_all
            elif size < 4 * len(by_gram):  # one probe per distinct trigram of the path
                for gram in {path[i : i + _GRAM] for i in range(size - _GRAM + 1)}:
                    if (hit := by_gram.get(gram)) is not None:
                        found += hit
            else:  # few trigrams: look each up in the path (< size / 4 scans of it)
                for gram, hit in by_gram.items():
                    if gram in path:
                        found += hit
        found.sort()
        return found

    def best(self, path: str, budget: int = MATCH_BUDGET) -> tuple[_Hit | None, int]:
        """The deciding rule for `path` (None if none matches), and what is left of `budget`
        (octets "*" patterns may scan); out of budget, a fail-closed disallow."""
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
            return best, budget
        floor = best[:2] if best is not None else (-1, False)
        wild = self._wild
        for i in self._candidates(path):
            priority, allow, text, head, middle, tail, anchored = wild[i]
            if (priority, allow) <= floor:
                break
            if not path.startswith(head):
                continue
            budget -= size  # a pattern tried may scan the whole path
            if budget < 0:  # the verdict would need more work than a decision may cost
                reason = f"{LIMITS} ({size}-octet URL x {len(wild)} wildcard rules)"
                return (_OVER_BUDGET, False, reason), 0
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
                    return (priority, allow, text), budget
        return best, budget


@dataclass(frozen=True, slots=True)
class _Selection:
    matcher: _Matcher  # RFC 9309 §2.2.2 reading: unreserved escapes decoded
    literal: _Matcher | None  # as-written reading; None when no pattern differs in it
    crawl_delay: float | None
    request_rate: tuple[int, float] | None
    agents: tuple[str, ...]
    # The verdicts given so far, by (allow, rule text) of the deciding rule (None: no rule).
    verdicts: dict[tuple[bool, str] | None, RobotsVerdict] = field(default_factory=dict)

    @property
    def weight(self) -> int:
        literal = self.literal.weight if self.literal is not None else 0
        kept = _VERDICTS_KEPT * _VERDICT_BYTES
        return self.matcher.weight + literal + _SELECTION_BYTES + kept + 8 * len(self.agents)


# One allow/disallow line: its rules in the decoded reading, and in the as-written reading
# when that differs (only a pattern with an escape of an unreserved character).
_Entry = tuple[list[_Rule], list[_Rule] | None]
_RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(slots=True)
class _Group:
    agents: list[str] = field(default_factory=list)  # lower-case names, "*" included
    entries: list[_Entry] = field(default_factory=list)  # its allow/disallow lines, file order
    delays: list[float] = field(default_factory=list)  # valid Crawl-delay values, seconds
    rates: list[tuple[int, float]] = field(default_factory=list)  # valid Request-rates


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


def _request_rate(value: str) -> tuple[int, float] | None:
    """(requests, seconds) of a Request-rate value `_RATE` accepted, as Protego reads it
    (units s/m/h/d); None when either is zero or absurdly large. A visit-time window after
    the rate is ignored: the rate then applies at all hours, the careful reading."""
    requests_text, _, per = value.split()[0].partition("/")
    unit = _RATE_UNITS.get(per[-1].lower())
    if unit is not None:
        per = per[:-1]
    try:
        requests = int(requests_text)
        seconds = float(int(per) * (unit or 1))
    except (ValueError, OverflowError):  # over 4300 digits, or beyond float
        return None
    if requests <= 0 or not 0 < seconds < math.inf:
        return None
    return requests, seconds


def _groups(text: str) -> list[_Group]:
    """The file's groups (RFC 9309 §2.1), in file order, each with its compiled rules."""
    groups: list[_Group] = []
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
                allow, readable = kind == "allow", _readable(line)
                decoded = _compile_rule(allow, value, readable)
                literal = _compile_rule(allow, value, readable, False) if "%" in value else None
                group.entries.append((decoded, None if literal == decoded else literal))
        elif kind == "crawl-delay" and _DELAY.fullmatch(value):
            delay = float(value)
            if math.isfinite(delay):
                group.delays.append(delay)
        elif kind == "request-rate" and _RATE.fullmatch(value):
            rate = _request_rate(value)
            if rate is not None:
                group.rates.append(rate)
    return groups


class RobotsRules:
    """A parsed robots.txt. Never raises on any body; bodies over MAX_BYTES are truncated.

    Fail-closed, for this site only, when `too_complex` (the file exceeds crawlguard's
    matching limits, see the module docstring) or `parse_error` (the parser failed) says why:
    `decide` then disallows every URL but /robots.txt, the rule text giving the reason.
    """

    def __init__(
        self,
        body: bytes,
        sha256: str,
        selections: dict[str, _Selection] | None = None,
        *,
        too_complex: str | None = None,
        parse_error: str | None = None,
    ) -> None:
        """Use `parse`; `selections` maps lower-case product tokens ("*" included) to rules.

        Only the selections are kept: the groups are not needed once they are built, and a
        cache holds one of these per origin.
        """
        self.body = body
        self.sha256 = sha256
        self.too_complex = too_complex
        """Why the file exceeds crawlguard's limits (e.g. "1500 wildcard rules > 1000"), or None."""
        self.parse_error = parse_error
        """The exception the parser raised (its type name), or None."""
        self._closed: str | None = None  # the rule text of the fail-closed verdict
        if too_complex is not None:
            self._closed = f"{LIMITS} ({too_complex})"
        elif parse_error is not None:
            self._closed = f"robots.txt could not be parsed (crawlguard error: {parse_error})"
        self._selections = selections or {}
        self._default = self._selections.get(_STAR, _EMPTY)
        distinct = {id(sel): sel for sel in self._selections.values()}.values()
        names = sum(_NAME_ENTRY_BYTES + len(name) for name in self._selections)
        self.footprint = _RULES_BASE_BYTES + len(body) + names + sum(sel.weight for sel in distinct)
        """Approximate bytes this object keeps alive, for caches bounded in bytes."""

    @classmethod
    def parse(cls, body: bytes) -> RobotsRules:
        body = bytes(body[:MAX_BYTES])
        sha256 = hashlib.sha256(body).hexdigest()
        try:
            text = body.decode("utf-8-sig", errors="surrogateescape")
            selections = _select_all(_groups(text))
        except Exception as exc:  # a bug here must not take the proxy down, nor open the site
            log.exception("robots.txt could not be parsed; disallowing the site")
            return cls(body, sha256, parse_error=type(exc).__name__)
        over = [
            m
            for sel in selections.values()
            for m in (sel.matcher, sel.literal)
            if m is not None and m.limit is not None
        ]
        if over:  # the reason names the group with the most wildcard rules
            reason = max(over, key=lambda m: m.wildcards).limit
            return cls(body, sha256, too_complex=reason)  # selections dropped: never used
        return cls(body, sha256, selections)

    def paces(self) -> dict[str, tuple[float | None, tuple[int, float] | None]]:
        """Crawl-delay and Request-rate (None where absent) of every product token the file
        names (lower case, "*" included): what the platform's shared pace on a site is made
        of."""
        return {name: (sel.crawl_delay, sel.request_rate) for name, sel in self._selections.items()}

    def decide(
        self, product_token: str, url: str, *, fetch: bool = True, canonical: bool = False
    ) -> RobotsVerdict:
        """Verdict for `url` (absolute URL or path+query) for the crawler's product token.
        /robots.txt itself is always allowed to be fetched (RFC 9309 §2.2.2); `fetch=False`
        (another method than GET/HEAD) matches it like any other path. `canonical`: `url` is
        the proxy's canonical request target (`identity.canonical_path`), already in the
        normal form rules compare with: it is not normalised a second time per request."""
        sel = self._selections.get(product_token.strip().lower(), self._default)
        if canonical:
            target = url
            path = url.replace("*", "%2A").replace("$", "%24") if "*" in url or "$" in url else url
        else:
            target = _target(url)
            path = normalize_path(target, encode_non_ascii=False)
        hit = None
        if fetch and (path == "/robots.txt" or path.startswith("/robots.txt?")):
            pass
        elif self._closed is not None:
            hit = (_OVER_BUDGET, False, self._closed)
        else:
            hit, budget = sel.matcher.best(path)
            # Safety wins: what the decoded reading allows, the as-written one may still
            # disallow (e.g. "Allow: /%62az" + "Disallow: /" for "/baz"). Only evaluated
            # when the two readings can differ (a target `normalize_path` returned unchanged
            # holds no escape of an unreserved character: no need to look again).
            if (hit is None or hit[1]) and (
                sel.literal is not None
                or (path is not target and _UNRESERVED_ESCAPE.search(target))
            ):
                literal = normalize_path(target, encode_non_ascii=False, decode_unreserved=False)
                other, _ = (sel.literal or sel.matcher).best(literal, budget)  # one budget
                if other is not None and not other[1]:
                    hit = other
        key = None if hit is None else (hit[1], hit[2])
        verdict = sel.verdicts.get(key)
        if verdict is None:  # one per rule that decides: building one costs ~1 us
            verdict = RobotsVerdict(
                allowed=hit is None or hit[1],
                rule=None if hit is None else hit[2],
                crawl_delay=sel.crawl_delay,
                request_rate=sel.request_rate,
                agents=sel.agents,
            )
            if len(sel.verdicts) < _VERDICTS_KEPT:
                sel.verdicts[key] = verdict
        return verdict


def _select_all(groups: list[_Group]) -> dict[str, _Selection]:
    """Per product token named in the file (and "*"): its groups merged, rules in file order
    (so "the first such line" of equal patterns is stable).

    The merged groups' largest Crawl-delay and slowest Request-rate (most seconds per
    request) apply: a site that names a crawler twice with two delays gets the gentler one.
    """
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        for name in group.agents:
            members.setdefault(name, []).append(i)
    built: dict[tuple[int, ...], _Selection] = {}
    selections: dict[str, _Selection] = {}
    for name, ids in members.items():
        key = tuple(ids)
        if key not in built:
            rules: list[_Rule] = []
            literal: list[_Rule] = []
            differs = False
            delays: list[float] = []
            rates: list[tuple[int, float]] = []
            agents: dict[str, None] = {}
            for i in ids:
                group = groups[i]
                agents.update(dict.fromkeys(group.agents))
                delays.extend(group.delays)
                rates.extend(group.rates)
                for decoded, as_written in group.entries:
                    rules.extend(decoded)
                    literal.extend(decoded if as_written is None else as_written)
                    differs |= as_written is not None
            built[key] = _Selection(
                _Matcher(rules),
                _Matcher(literal) if differs else None,
                max(delays, default=None),
                max(rates, key=lambda r: (r[1] / r[0], -r[0]), default=None),
                tuple(agents),
            )
        selections[name] = built[key]
    return selections


_EMPTY = _Selection(_Matcher([]), None, None, None, ())

ALLOW_ALL = RobotsRules.parse(b"")
DISALLOW_ALL = RobotsRules.parse(b"User-agent: *\nDisallow: /\n")
