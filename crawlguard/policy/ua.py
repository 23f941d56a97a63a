"""User-agent policy (SPEC: "Decisions and responses", order of user-agent checks).

Pure functions over the User-Agent string: no I/O, so the proxy, `crawlguard lint-ua`,
`crawlguard check` and config validation give the same answer. Known crawlers, HTTP libraries
and automation tools come from the `crawler-user-agents` dataset rather than a hand-kept list;
the few additions and exclusions below are dataset quirks, each with its reason.

Vocabulary: a *word* is a run of characters between separators (space ; , ( ) + …), read as
``name[/version]``. A *contact* is an http(s) URL or an e-mail address. Contacts are removed
before the product words are read (tenant tokens, libraries, descriptiveness), but not for
step 2: a site matching user agents by regex sees ``+https://acme.example/Googlebot/2.1`` or
``googlebot@acme.example`` as Googlebot, so what it would see as a crawler is a claim.

Case: product tokens are ASCII (RFC 9110 ``token``), so every case-insensitive comparison
folds ASCII only (`ascii_lower`, ``re.ASCII``). Unicode folding would let ``\\u212aiteBot``
(Kelvin sign) pass as KiteBot while the origin receives bytes that are not the token.

Order of checks (the first that fits decides):

1. ``ua-missing``: no or blank User-Agent.
2. ``ua-impersonation``, on the whole UA, contacts included:
   a. a well-known crawler is claimed that is not this tenant's own token (those are masked).
      The dataset's patterns are tried as sites apply them (case-sensitive, as written), and
      every well-known crawler's token is also looked for as a whole word (a run of ASCII
      letters, digits, ``-``, ``_``; or its part before ``-``/``_``) in any ASCII case, so
      ``googlebot/2.1``, ``GOOGLEBOT``, ``BingBot`` and ``googlebot@acme.example`` are claims;
   b. rule ``impersonation:lookalike:<Token>``: a word sent with non-ASCII characters whose
      confusable skeleton (Unicode TR39, by ICU, with NFKC for compatibility forms) equals, in
      any ASCII case, one of this tenant's tokens, another tenant's, or a well-known
      crawler's (``\\u212aiteBot``, ``G\\u043e\\u043eglebot`` with Cyrillic o, fullwidth
      ``\\uff21\\uff43\\uff4d\\uff45Bot``).
      Non-ASCII that imitates none of them (an IDN contact, ``B\\u00fccherbot``) is no claim.
3. ``ua-mismatch`` (rule ``mismatch:another-tenant:<Token>``): the UA carries a product token
   registered by *another* tenant (``foreign_tokens``), whole product name, any ASCII case.
   This step is not in the SPEC's list; it sits here, before the tenant's own token can make the
   UA pass, so that a UA carrying both its own and another tenant's token never passes, and a
   tenant cannot be matched against robots.txt groups written for another tenant's crawler.
   The message names the token, never the other tenant.
4. ``ua-undescriptive`` (``too-long``): longer than ``MAX_LENGTH``.
5. The UA carries one of the tenant's tokens: ``ua-undescriptive`` if that token has no
   version or the UA has no contact, else it passes (a library name beside it is fine).
6. ``ua-generic``, 7. ``ua-undescriptive``, 8. ``ua-mismatch`` (rule ``mismatch``) as in the
   SPEC; without tenant tokens (lint, check) a descriptive UA passes instead of step 8.

Product token for robots.txt: `UAVerdict.token` and `product_token_of` derive it from the same
parse as the verdict. A passing tenant UA is matched with the registered token as registered;
without tenant tokens, the token is the crawler's identity word (the first versioned word that
is not a library's or browser's), so ``Scrapy/2.11 (+https://scrapy.org) AcmeBot/1.0 (…)`` is
AcmeBot for `crawlguard check` exactly as for the proxy with AcmeBot registered.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from typing import Any, Protocol

import icu  # PyICU (pyicu-wheels): the Unicode TR39 skeleton, as ICU's spoof checker computes it
from crawleruseragents import CRAWLER_USER_AGENTS_DATA

from crawlguard.policy.decisions import Kind

__all__ = [
    "MAX_LENGTH",
    "SharedIndex",
    "TokenIndex",
    "UAVerdict",
    "UserAgentPolicy",
    "ascii_lower",
    "lint",
    "product_token_of",
    "product_token_problem",
    "token_map",
    "well_known_crawler",
]

MAX_LENGTH = 1024
"""Longer UAs are not analysed past this point (bounds the cost) and are undescriptive."""

CACHE_SIZE = 4096

# RFC 9309 product token.
_TOKEN_RE = re.compile(r"[A-Za-z_-]+")
_VERSION_RE = re.compile(r"[vV]?\d")
_SEPARATORS = r"""\s;,()\[\]{}<>"'+|"""
_WORD_RE = re.compile(rf"[^{_SEPARATORS}]+")
_CONTACT_RE = re.compile(
    r"(?ai:https?)://[^\s;,()<>\[\]{}\"'|]+"  # URL
    r"|(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail (starts a run: linear time)
)
_LETTER_RE = re.compile(r"[^\W\d_]")

_TO_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_TO_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only: `str.lower` also folds non-ASCII letters, some into ASCII (the
    Kelvin sign K becomes k), which would let a look-alike pass as a product token."""
    return text.lower() if text.isascii() else text.translate(_TO_LOWER)


def _ascii_upper(text: str) -> str:
    return text.upper() if text.isascii() else text.translate(_TO_UPPER)


def _lower_set(names: str) -> frozenset[str]:
    return frozenset(ascii_lower(name) for name in names.split())


# --- browser engines: a handful of product names, not a list of browser UAs ------------------

_ENGINE_WORDS = _lower_set(
    "AppleWebKit Gecko Trident Presto Chrome Chromium CriOS Firefox FxiOS Safari Edg Edge "
    "EdgA EdgiOS OPR OPiOS MSIE SamsungBrowser YaBrowser Vivaldi UCBrowser"
)
# Names that appear in browser UAs around the engines; never a crawler's identity.
_BROWSER_WORDS = _ENGINE_WORDS | _lower_set(
    "Mozilla Opera KHTML like compatible Version Mobile HeadlessChrome Electron"
)
# Platform words inside browser comments; only used to name a better candidate in messages.
_PLATFORM_WORDS = _lower_set(
    "Windows NT Win64 WOW64 Macintosh Intel Mac OS X X11 Linux Ubuntu Android iPhone iPad "
    "CPU U en-US Build"
)

# --- dataset: well-known crawlers (impersonation) ---------------------------------------------

# Dataset quirks on the search-engine side:
# - Apache Nutch is a crawler framework that tenants build on (`AcmeBot/1.0 … Nutch-1.20`),
#   not a crawler one can impersonate: treated as a library instead.
# - Google App Engine appends `AppEngine-Google; (+http://code.google.com/appengine…)` to every
#   outgoing UA of apps hosted there: infrastructure, not a claim; treated as a library.
_NOT_A_CLAIM = frozenset({"Nutch", "AppEngine-Google"})
_LIBRARY_LIKE_NAMES = frozenset(ascii_lower(n) for n in _NOT_A_CLAIM)

# HTTP clients the dataset lacks (or only knows by a URL); matched as whole product names.
_EXTRA_LIBRARY_NAMES = _lower_set(
    "curl Wget python-urllib3 Java Java-http-client Dalvik undici got node Deno Python PHP Ruby "
    "GuzzleHttp reqwest Faraday"
)

# Yandex is known to the dataset only through its contact URL `yandex.com/bots`; its bots all
# name themselves Yandex<Something>, which that pattern does not see outside the contact.
_YANDEX = "YandexBot", r"Yandex[A-Za-z]*"


def _strip_contacts(text: str) -> str:
    return _CONTACT_RE.sub(" ", text)


def _pattern_name(pattern: str) -> str:
    """Readable name of a dataset pattern (`Googlebot\\/` -> `Googlebot`)."""
    name = pattern.lstrip("^").rstrip("$").replace("\\", "")
    return name.rstrip("/").strip()


@dataclass(frozen=True, slots=True)
class _Claim:
    name: str
    regex: re.Pattern[str]
    as_said: bool  # report the name as the UA spells it (pattern is not a plain name)


def _claims() -> tuple[tuple[_Claim, ...], tuple[_Claim, ...]]:
    """Well-known crawlers: (matched anywhere, matched at the start of a name).

    Every pattern is tried anywhere in the whole UA, case-sensitive as written: that is how
    sites apply the dataset, so what it matches there is what they see. Some patterns are
    lower-case spellings (`speedy`, `exabot`, `wotbox`) that match some of the crawler's own
    UAs only through its contact URL (`Exabot/3.0; +http://www.exabot.com/…`), so they miss the
    name where the crawler itself writes it; for such entries the pattern is also tried
    ASCII-case-insensitively, but only at the start of a name (`Speedy Spider`, `Exabot/3.0`),
    never inside another word.
    """
    anywhere: list[_Claim] = []
    at_name: list[_Claim] = []
    for entry in CRAWLER_USER_AGENTS_DATA:
        pattern = str(entry["pattern"])
        if "search-engine" not in entry.get("tags", ()) or pattern in _NOT_A_CLAIM:
            continue
        name = _pattern_name(pattern)
        compiled = re.compile(pattern)
        anywhere.append(_Claim(name, compiled, not _TOKEN_RE.fullmatch(name)))
        instances = [str(i) for i in entry.get("instances") or () if i]
        if not all(compiled.search(_strip_contacts(i)) for i in instances):
            at_name.append(_Claim(name, re.compile(rf"(?ai:{pattern})"), True))
    at_name.append(_Claim(_YANDEX[0], re.compile(_YANDEX[1]), True))
    return tuple(anywhere), tuple(at_name)


_CLAIMS_ANYWHERE, _CLAIMS_AT_NAME = _claims()


def _by_first_character(patterns: Iterable[str]) -> str:
    """One alternation, its alternatives grouped by their first character (or escape).

    The regex engine tries a group's alternatives only when its first one can start at the
    position, so the no-claim case costs one comparison per group at each position instead of
    one per pattern: about 4x faster over a whole UA. Only the match's start is used, and the
    leftmost start does not depend on the order of alternatives.
    """
    groups: dict[str, list[str]] = {}
    for pattern in patterns:
        groups.setdefault(pattern[:2] if pattern[0] == "\\" else pattern[:1], []).append(pattern)
    return "|".join(g[0] if len(g) == 1 else f"(?:{'|'.join(g)})" for g in groups.values())


_ANY_CLAIM_ANYWHERE = re.compile(_by_first_character(c.regex.pattern for c in _CLAIMS_ANYWHERE))
_ANY_CLAIM_AT_NAME = re.compile(
    rf"(?<![A-Za-z0-9])(?:{'|'.join(c.regex.pattern for c in _CLAIMS_AT_NAME)})"
)
# For bare product tokens: any well-known name inside the token, case-insensitively, because
# many robots.txt parsers match group names as substrings of the user agent.
_CLAIM_TOKEN_NAMES: tuple[tuple[str, str], ...] = (
    *(
        (ascii_lower(c.name), c.name)
        for c in _CLAIMS_ANYWHERE + _CLAIMS_AT_NAME
        if _TOKEN_RE.fullmatch(c.name)
    ),
    ("yandex", _YANDEX[0]),
)
_ANY_CLAIM_TOKEN_NAME = re.compile(
    _by_first_character(re.escape(needle) for needle, _ in _CLAIM_TOKEN_NAMES)
)

# For words of a user agent: each well-known crawler's token in any ASCII case spelling (the
# dataset's patterns are case-sensitive, so `googlebot/2.1` or `BingBot` would slip through
# them). A word here is a run of ASCII letters, digits, `-` and `_`, so URL segments and e-mail
# local parts are words too. A word claims a crawler when it, or its part before its first
# `-`/`_`, is such a token: `GOOGLEBOT/2.1`, `googlebot-clone/1.0`, `googlebot@acme.example`;
# never a token inside another name (`MyGooglebotX`).
_CLAIM_WORDS: dict[str, str] = {}
for _needle, _name in _CLAIM_TOKEN_NAMES:
    if _needle != "yandex":  # Yandex: any word starting with it, see _claim_word
        _CLAIM_WORDS.setdefault(_needle.strip("-_"), _name)
del _needle, _name
_CLAIM_RUN_RE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z][A-Za-z0-9_-]*")
_WORD_HEAD_RE = re.compile(r"[^-_]*")
_LEADING_TOKEN_RE = re.compile(r"[A-Za-z_-]+")

# --- look-alikes: non-ASCII words that imitate a product token ------------------------------

_SPOOF_CHECKER = icu.SpoofChecker()
# Where a look-alike word may sit: ASCII name characters and any non-ASCII character (a
# fullwidth slash or a no-break space is split off after NFKC, see _non_ascii_words).
_LOOKALIKE_RUN_RE = re.compile(r"[A-Za-z0-9_\-\x80-\U0010FFFF]+")
_ASCII_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_")


def _skeleton_keys(text: str) -> tuple[str, str]:
    """Look-alike keys of `text`: equal keys mean "looks the same, in some ASCII case".

    The TR39 skeleton (Cyrillic, Greek and other look-alikes; ignorables such as U+200B
    dropped), then NFKC for the compatibility forms the confusables data leaves alone
    (fullwidth U+FF4D -> m), then the skeleton of that. Skeleton first, because NFKC can turn a
    look-alike into something else (U+03F2 lunate sigma looks like c; its NFKC form is a
    final sigma). Skeletons are case-sensitive and not closed under case (I -> l but i -> i;
    Cyrillic U+0412 -> B but U+0432 -> U+0299), so two keys: from the ASCII-lower and from the
    ASCII-upper spelling, each ASCII-lower-cased. A word imitates a token when either key
    equals the token's.
    """
    return _skeleton_key(text, ascii_lower), _skeleton_key(text, _ascii_upper)


def _skeleton_key(text: str, case: Callable[[str], str]) -> str:
    skeleton = _SPOOF_CHECKER.getSkeleton
    compatible = unicodedata.normalize("NFKC", skeleton(0, case(text)))
    return ascii_lower(skeleton(0, case(compatible)))


def _ascii_skeletons() -> dict[int, str]:
    """ICU's skeleton of each character a product token can hold, where it is ASCII.

    A skeleton maps code points one by one (TR39: NFD, map, NFD), and these characters have no
    decomposition, so a token's skeleton is the concatenation of its characters' skeletons
    (`m` -> `rn`): the keys of 100,000 registered tokens without 400,000 ICU calls. The
    unit tests compare it with ICU over every token shape.
    """
    table: dict[int, str] = {}
    for character in string.ascii_letters + string.digits + "-_":
        skeleton = _SPOOF_CHECKER.getSkeleton(0, character)
        if skeleton.isascii() and set(skeleton) <= _ASCII_NAME_CHARS:
            table[ord(character)] = skeleton
    return table


_ASCII_SKELETON = _ascii_skeletons()
_ASCII_SKELETON_CHARS = frozenset(map(chr, _ASCII_SKELETON))


def _token_keys(token: str) -> tuple[str, str]:
    """`_skeleton_keys` of a registered token: by the table when it is made of name
    characters (NFKC leaves ASCII alone), by ICU otherwise."""
    if not set(token) <= _ASCII_SKELETON_CHARS:
        return _skeleton_keys(token)
    table = _ASCII_SKELETON
    lower = token.lower().translate(table).lower().translate(table).lower()
    upper = token.upper().translate(table).upper().translate(table).lower()
    return lower, upper


@dataclass(frozen=True, slots=True)
class _Lookalikes:
    """Names a word sent with non-ASCII characters must not imitate, by `_skeleton_keys`."""

    what: str  # how the reason names them: "the well-known crawler", …
    by_lower: dict[str, str]
    by_upper: dict[str, str]

    @classmethod
    def of(cls, what: str, names: Iterable[str]) -> _Lookalikes:
        by_lower: dict[str, str] = {}
        by_upper: dict[str, str] = {}
        for name in names:
            lower, upper = _token_keys(name)
            by_lower.setdefault(lower, name)
            by_upper.setdefault(upper, name)
        return cls(what, by_lower, by_upper)

    def find(self, keys: tuple[str, str]) -> str | None:
        return self.by_lower.get(keys[0]) or self.by_upper.get(keys[1])


class _Table(Protocol):
    """A look-alike table: what the reason calls its names, and the name a word's keys hit."""

    @property
    def what(self) -> str: ...
    def find(self, keys: tuple[str, str]) -> str | None: ...


_WELL_KNOWN = _Lookalikes.of(
    "the well-known crawler", (name.strip("-_") for name in _CLAIM_WORDS.values())
)
_YANDEX_KEYS = _skeleton_keys("yandex")


def _non_ascii_words(text: str) -> Iterator[str]:
    """The words of `text` sent with non-ASCII characters, as sent.

    Words are runs of ASCII letters, digits, `-`, `_` and non-ASCII characters that are no
    space or punctuation after NFKC, so a fullwidth slash splits like `/` and an ASCII word
    next to a non-ASCII one (`AcmeBot\\uff0f\\uff11`) is not taken for a look-alike.
    """
    for run in _LOOKALIKE_RUN_RE.finditer(text):
        chunk = run.group()
        if chunk.isascii():
            continue
        for in_word, characters in groupby(chunk, key=_in_word):
            if in_word and not (word := "".join(characters)).isascii():
                yield word


@lru_cache(maxsize=4096)
def _in_word(character: str) -> bool:
    if character.isascii():
        return character in _ASCII_NAME_CHARS
    return all(
        c in _ASCII_NAME_CHARS or not (c.isascii() or c.isspace())
        for c in unicodedata.normalize("NFKC", character)
    )


def _lookalike(text: str, tables: Sequence[_Table]) -> tuple[str, str, str] | None:
    """(word as sent, name, what) of the first non-ASCII word imitating a name in `tables`
    (whole word) or a well-known crawler's token (whole word, its part before `-`/`_`, or any
    word starting with Yandex), as the ASCII claim checks read words."""
    if text.isascii():  # the common case: nothing to imitate with
        return None
    for sent in _non_ascii_words(text):
        keys = _skeleton_keys(sent)
        for table in tables:
            if name := table.find(keys):
                return sent, name, table.what
        heads = (_head(keys[0]), _head(keys[1]))
        if name := _WELL_KNOWN.find(heads):
            return sent, name, _WELL_KNOWN.what
        if keys[0].startswith(_YANDEX_KEYS[0]) or keys[1].startswith(_YANDEX_KEYS[1]):
            return sent, _YANDEX[0], _WELL_KNOWN.what
    return None


def _head(key: str) -> str:
    head = _WORD_HEAD_RE.match(key)
    return head.group() if head else key


# --- dataset: HTTP libraries and automation tools (generic) -----------------------------------


def _library_pattern() -> str:
    """Dataset `http-library` / `browser-automation` patterns, anchored to name boundaries.

    The dataset matches substrings (`Code\\/1\\.`, `Scrapy`, `colly`), which would also catch
    crawlers that merely contain such a name (`QRCode/1.0`, `ScrapyBot/1.0`). Requiring a
    boundary on both sides keeps `python-httpx`, `WWW-Mechanize`, `PHP/7.2 curl/7.61` matching.
    Leading `^` anchors are dropped: a library is generic wherever it appears.
    """
    patterns = [
        str(entry["pattern"]).lstrip("^")
        for entry in CRAWLER_USER_AGENTS_DATA
        if {"http-library", "browser-automation"} & set(entry.get("tags", ()))
    ]
    return rf"(?<![A-Za-z0-9])(?:{'|'.join(patterns)})(?![A-Za-z])"


_LIBRARY_RE = re.compile(_library_pattern())
_LIBRARY_RE_I = re.compile(_LIBRARY_RE.pattern, re.IGNORECASE | re.ASCII)


# --- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UAVerdict:
    """The user-agent part of a request's decision; `rule` and `reason` go into the record."""

    kind: Kind  # Kind.ALLOWED when it passes
    rule: str  # short id of the deciding rule, e.g. "generic:python-requests"
    reason: str  # one sentence: what is wrong (or why it passes)
    # The product token robots.txt groups are matched with. With tenant tokens: the registered
    # token (as registered) when the UA passes, else None. Without (lint, check): what
    # `product_token_of` derives (None only for a missing UA or one without any name).
    token: str | None = None

    @property
    def allowed(self) -> bool:
        return self.kind is Kind.ALLOWED


@dataclass(frozen=True, slots=True)
class _Word:
    name: str
    version: str | None  # None unless it starts like a version (1.0, v2)
    start: int
    end: int

    @property
    def text(self) -> str:
        return f"{self.name}/{self.version}" if self.version else self.name


@dataclass(frozen=True, slots=True)
class _Parsed:
    """What every rule needs to know about one UA, computed once."""

    text: str  # contacts removed
    has_contact: bool
    words: tuple[_Word, ...]
    libraries: tuple[re.Match[str], ...]  # dataset library/automation matches in `text`


def _parse(user_agent: str) -> _Parsed:
    text, contacts = _CONTACT_RE.subn(" ", user_agent)
    words = []
    for m in _WORD_RE.finditer(text):
        name, slash, version = m.group().partition("/")
        versioned = version if slash and _VERSION_RE.match(version) else None
        words.append(_Word(name, versioned, m.start(), m.end()))
    return _Parsed(text, contacts > 0, tuple(words), tuple(_LIBRARY_RE.finditer(text)))


def _said(m: re.Match[str]) -> str:
    """The name as the UA spells it (`Googlebot/` -> `Googlebot`)."""
    said = re.match(r"[\w.!:-]+", m.group().strip())
    return said.group().rstrip("/") if said else m.group().strip()


def _claim_word(text: str) -> tuple[int, str] | None:
    """Position and name of the first word that is a well-known crawler's token, any ASCII
    case."""
    for m in _CLAIM_RUN_RE.finditer(text):
        lowered = m.group().lower()  # the run is ASCII
        name = _CLAIM_WORDS.get(lowered)
        if name is None:
            head = _WORD_HEAD_RE.match(lowered)
            name = _CLAIM_WORDS.get(head.group()) if head else None
        if name is None and lowered.startswith("yandex"):
            said = _LEADING_TOKEN_RE.match(m.group())
            name = said.group().rstrip("-_") if said else _YANDEX[0]
        if name is not None:
            return m.start(), name
    return None


def _claim(text: str) -> tuple[int, str] | None:
    """Position and name of the first well-known crawler the text (contacts included) claims
    to be."""
    found: tuple[int, tuple[_Claim, ...]] | None = None
    if m := _ANY_CLAIM_ANYWHERE.search(text):
        found = m.start(), _CLAIMS_ANYWHERE
    if (n := _ANY_CLAIM_AT_NAME.search(text)) and (found is None or n.start() < found[0]):
        found = n.start(), _CLAIMS_AT_NAME
    word = _claim_word(text)
    if word is not None and (found is None or word[0] < found[0]):
        return word  # a spelling the dataset's patterns miss: report the canonical name
    if found is None:
        return None
    pos, claims = found
    for claim in claims:  # which one: the first that matches where the alternation did
        if hit := claim.regex.match(text, pos):
            return pos, _said(hit) if claim.as_said else claim.name
    return None  # unreachable: the alternation matched one of them


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group())


def _generic(parsed: _Parsed, identity: _Word | None) -> str | None:
    """Rule id suffix if this is a library/tool/browser default without a crawler identity."""
    if identity is not None:
        return None
    if parsed.libraries:
        return _said(parsed.libraries[0])
    for word in parsed.words:
        lowered = ascii_lower(word.name)
        if lowered in _EXTRA_LIBRARY_NAMES or lowered in _LIBRARY_LIKE_NAMES:
            return word.name
        if lowered.partition("-")[0] in _LIBRARY_LIKE_NAMES:  # Nutch-1.20-SNAPSHOT
            return word.name.partition("-")[0]
    if _is_browser(parsed.words):
        return "browser"
    return None


def _is_browser(words: Sequence[_Word]) -> bool:
    """A browser UA (or bare `Mozilla/5.0`): starts like one and names an engine."""
    if not words or words[0].name not in ("Mozilla", "Opera"):
        return False
    names = {ascii_lower(w.name) for w in words if _LETTER_RE.search(w.name)}
    return bool(names & _ENGINE_WORDS) or names <= _BROWSER_WORDS


def _is_library_word(word: _Word, libraries: Iterable[re.Match[str]]) -> bool:
    lowered = ascii_lower(word.name)
    if lowered in _BROWSER_WORDS or lowered in _EXTRA_LIBRARY_NAMES:
        return True
    if lowered in _LIBRARY_LIKE_NAMES or lowered.partition("-")[0] in _LIBRARY_LIKE_NAMES:
        return True
    return any(m.start() < word.end and word.start < m.end() for m in libraries)


def _candidates(parsed: _Parsed) -> list[_Word]:
    """Words that could be the client's own product: not a library's or a browser's."""
    return [
        w
        for w in parsed.words
        if _LETTER_RE.match(w.name) and not _is_library_word(w, parsed.libraries)
    ]


class _Tenant:
    """A tenant's registered tokens, prepared once; the mask regex and the look-alike table of
    its own tokens only when first needed (compiling one regex per tenant at start-up would
    cost seconds for 100,000 tenants, most of which send few distinct user agents)."""

    __slots__ = ("_lookalikes", "_mask", "names")

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names  # ASCII-lower-case token -> token as registered
        self._mask: re.Pattern[str] | None = None
        self._lookalikes: _Lookalikes | None = None

    @classmethod
    def of(cls, product_tokens: Sequence[str]) -> _Tenant | None:
        if not product_tokens:
            return None
        return cls({ascii_lower(t): t for t in product_tokens})

    @property
    def mask(self) -> re.Pattern[str]:
        """The tokens as whole product names, exactly as words are split; ASCII case only."""
        if self._mask is None:
            tokens = sorted(self.names.values(), key=len, reverse=True)
            alternatives = "|".join(re.escape(t) for t in tokens)
            self._mask = re.compile(
                rf"(?<![^{_SEPARATORS}])(?ai:{alternatives})(?![^/{_SEPARATORS}])"
            )
        return self._mask

    @property
    def lookalikes(self) -> _Lookalikes:
        if self._lookalikes is None:
            self._lookalikes = _Lookalikes.of("this tenant's product token", self.names.values())
        return self._lookalikes

    def describe(self) -> str:
        return ", ".join(self.names.values())


class TokenIndex:
    """Every product token registered in a tenant set, built once and shared by all the
    tenants' checks: memory and start-up linear in the number of tokens, where a map of the
    *other* tenants' tokens per tenant grew with the square of the tenant count.

    `tokens`: ASCII-lower-case token -> (token as registered, tenant id); the first
    registration of a spelling wins. A tenant's check ignores hits on its own tokens, so one
    index serves every tenant. `by_lower`/`by_upper`: the look-alike keys (`_skeleton_keys`) of
    every token -> the tokens having them, in registration order.
    """

    __slots__ = ("by_lower", "by_upper", "tokens")

    def __init__(self, tenants: Iterable[tuple[str, Iterable[str]]] = ()) -> None:
        self.tokens: dict[str, tuple[str, str]] = {}
        self.by_lower: dict[str, tuple[str, ...]] = {}
        self.by_upper: dict[str, tuple[str, ...]] = {}
        for tenant_id, tokens in tenants:
            for token in tokens:
                key = ascii_lower(token)
                if not token or key in self.tokens:
                    continue
                self.tokens[key] = (token, tenant_id)
                lower, upper = _token_keys(token)
                self.by_lower[lower] = (*self.by_lower.get(lower, ()), token)
                self.by_upper[upper] = (*self.by_upper.get(upper, ()), token)

    def updated(self, tokens: Mapping[str, tuple[str, str]]) -> TokenIndex:
        """The index whose `tokens` are `tokens` (as `token_map` builds them), made from this
        one: look-alike keys are computed only for tokens added. Tokens added go after the
        others in a key's registration order."""
        new = TokenIndex()
        new.tokens = dict(tokens)
        new.by_lower, new.by_upper = self.by_lower.copy(), self.by_upper.copy()
        old = self.tokens
        for key, entry in old.items():
            if tokens.get(key) != entry:
                lower, upper = _token_keys(entry[0])
                _without(new.by_lower, lower, entry[0])
                _without(new.by_upper, upper, entry[0])
        for key, entry in tokens.items():
            if old.get(key) != entry:
                lower, upper = _token_keys(entry[0])
                new.by_lower[lower] = (*new.by_lower.get(lower, ()), entry[0])
                new.by_upper[upper] = (*new.by_upper.get(upper, ()), entry[0])
        return new

    @classmethod
    def of_tenants(cls, tenants: Iterable[_HasTokens]) -> TokenIndex:
        """The index of configured tenants (anything with `id` and `product_tokens`)."""
        return cls((t.id, t.product_tokens) for t in tenants)

    def __len__(self) -> int:
        return len(self.tokens)

    def owner(self, token: str) -> str | None:
        """The id of the tenant that registered `token` (any ASCII case), or None."""
        hit = self.tokens.get(ascii_lower(token))
        return hit[1] if hit is not None else None

    def foreign(self, words: Iterable[_Word], own: Mapping[str, str]) -> str | None:
        """The first word that is another tenant's token, as registered."""
        tokens = self.tokens
        for word in words:
            key = ascii_lower(word.name)
            if key not in own and (hit := tokens.get(key)) is not None:
                return hit[0]
        return None


def _without(table: dict[str, tuple[str, ...]], key: str, token: str) -> None:
    rest = tuple(t for t in table.get(key, ()) if t != token)
    if rest:
        table[key] = rest
    else:
        table.pop(key, None)


def token_map(tenants: Iterable[_HasTokens]) -> dict[str, tuple[str, str]]:
    """What `TokenIndex.of_tenants(tenants).tokens` is, without the look-alike keys (cheap:
    tells whether a tenant set changed any product token)."""
    tokens: dict[str, tuple[str, str]] = {}
    for tenant in tenants:
        for token in tenant.product_tokens:
            if token:
                tokens.setdefault(ascii_lower(token), (token, tenant.id))
    return tokens


class _HasTokens(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def product_tokens(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class _ForeignLookalikes:
    """The index's tokens except the tenant's own, as a look-alike table."""

    index: TokenIndex
    own: Mapping[str, str]
    what: str = "a product token registered by another tenant"

    def find(self, keys: tuple[str, str]) -> str | None:
        for table, key in ((self.index.by_lower, keys[0]), (self.index.by_upper, keys[1])):
            for token in table.get(key, ()):
                if ascii_lower(token) not in self.own:
                    return token
        return None


def _lookalike_tables(tenant: _Tenant | None, index: TokenIndex | None) -> tuple[_Table, ...]:
    """What a non-ASCII word must not imitate besides well-known crawlers, in that order."""
    tables: list[_Table] = []
    if tenant is not None:
        tables.append(tenant.lookalikes)
    if index is not None and index.tokens:
        tables.append(_ForeignLookalikes(index, tenant.names if tenant is not None else {}))
    return (*tables, _WELL_KNOWN)


def _identity(candidates: Sequence[_Word]) -> _Word | None:
    """The crawler's own product: the first versioned candidate, RFC 9309-shaped first."""
    versioned = [w for w in candidates if w.version is not None]
    return next(
        (w for w in versioned if _TOKEN_RE.fullmatch(w.name)),
        versioned[0] if versioned else None,
    )


def _robots_token(parsed: _Parsed, candidates: Sequence[_Word], identity: _Word | None) -> str:
    """The product token to match robots.txt groups with, from the policy's own parse.

    First that applies: the identity word (what a passing UA is matched with, and exactly the
    registered token when that token is registered); unless the UA is a library's or browser's
    default, the first bare name that is not a platform word (`FooBot`, `Foo Bar` -> Foo); the
    first word at all (`python-requests/2.31`, `Mozilla/5.0 (X11…)` -> Mozilla). Of the chosen
    word, the leading `[A-Za-z_-]` run, as RFC 9309 reads product tokens; "" if there is none.
    """
    order: list[_Word] = [identity] if identity is not None else []
    if identity is None and _generic(parsed, None) is None:
        order += [
            w
            for w in candidates
            if _TOKEN_RE.fullmatch(w.name) and ascii_lower(w.name) not in _PLATFORM_WORDS
        ]
    order += parsed.words
    for word in order:
        if m := _LEADING_TOKEN_RE.match(word.name):
            return m.group()
    return ""


def _evaluate(
    user_agent: str | None,
    tenant: _Tenant | None,
    index: TokenIndex | None,
) -> UAVerdict:
    if user_agent is None or not user_agent.strip():
        return UAVerdict(Kind.UA_MISSING, "missing", "No User-Agent header was sent.")
    too_long = len(user_agent) > MAX_LENGTH
    text = user_agent[:MAX_LENGTH].strip()
    parsed = _parse(text)
    candidates = _candidates(parsed)
    identity = _identity(candidates)
    # Without tenant tokens every verdict says what robots.txt would be matched with.
    token = None if tenant is not None else _robots_token(parsed, candidates, identity) or None

    # Own tokens are blanked out in place, so positions still point into `text`.
    claimed = _claim(tenant.mask.sub(_blank, text) if tenant else text)
    if claimed is not None:
        pos, name = claimed
        whose = "this tenant's" if tenant else "yours"
        contact = next((c for c in _CONTACT_RE.finditer(text) if c.start() <= pos < c.end()), None)
        if contact is not None:
            said = (
                f"The user agent's contact {contact.group()} names {name}, a well-known crawler "
                f"that is not {whose}: sites that match user agents by pattern read it as {name}."
            )
        else:
            said = f"The user agent claims to be {name}, a well-known crawler that is not {whose}."
        return UAVerdict(Kind.UA_IMPERSONATION, f"impersonation:{name}", said, token)
    if not text.isascii() and (
        (lookalike := _lookalike(text, _lookalike_tables(tenant, index))) is not None
    ):
        sent, name, what = lookalike
        return UAVerdict(
            Kind.UA_IMPERSONATION,
            f"impersonation:lookalike:{name}",
            f"The user agent contains {sent!a}, a look-alike of {what} {name} made with "
            "non-ASCII characters; product tokens are ASCII.",
            token,
        )
    if index is not None:
        other = index.foreign(parsed.words, tenant.names if tenant is not None else {})
        if other is not None:
            own = f"; send only this tenant's own ({tenant.describe()})" if tenant else ""
            return UAVerdict(
                Kind.UA_MISMATCH,
                f"mismatch:another-tenant:{other}",
                f"The user agent carries a product token registered by another tenant: "
                f"{other}{own}.",
                token,
            )
    if too_long:
        return UAVerdict(
            Kind.UA_UNDESCRIPTIVE,
            "undescriptive:too-long",
            f"The user agent is {len(user_agent)} characters long; a description of a client "
            f"fits in {MAX_LENGTH}.",
            token,
        )

    if tenant is not None:
        carried = [w for w in parsed.words if ascii_lower(w.name) in tenant.names]
        if carried:
            return _tenant_verdict(tenant, carried, parsed.has_contact)

    library = _generic(parsed, identity if parsed.has_contact else None)
    if library is not None:
        what = (
            "This is a web browser's user agent"
            if library == "browser"
            else f"This is the user agent of {library}, an HTTP library or automation tool"
        )
        return UAVerdict(
            Kind.UA_GENERIC,
            f"generic:{library}",
            f"{what}; it does not name your crawler (own product token with a version, "
            "and a contact).",
            token,
        )

    problem = _undescriptive(candidates, identity, parsed.has_contact)
    if problem is not None:
        return UAVerdict(problem.kind, problem.rule, problem.reason, token)
    assert identity is not None  # _undescriptive returns a verdict otherwise
    if tenant is not None:
        return UAVerdict(
            Kind.UA_MISMATCH,
            "mismatch",
            f"The user agent identifies as {identity.text}, not as a product token registered "
            f"for this tenant ({tenant.describe()}).",
        )
    return UAVerdict(
        Kind.ALLOWED,
        f"ok:{identity.name}",
        f"Descriptive: product token {identity.text} and a contact.",
        identity.name,
    )


def _tenant_verdict(tenant: _Tenant, carried: Sequence[_Word], has_contact: bool) -> UAVerdict:
    best = next((w for w in carried if w.version is not None), None)
    if best is None:
        name = tenant.names[ascii_lower(carried[0].name)]
        return UAVerdict(
            Kind.UA_UNDESCRIPTIVE,
            "undescriptive:no-version",
            f"Product token {name} carries no version; send it as {name}/1.0."
            + ("" if has_contact else " The user agent also has no contact URL or e-mail."),
        )
    if not has_contact:
        return UAVerdict(
            Kind.UA_UNDESCRIPTIVE,
            "undescriptive:no-contact",
            f"The user agent carries {best.text} but no contact: add an http(s) URL or an "
            "e-mail address.",
        )
    registered = tenant.names[ascii_lower(best.name)]
    return UAVerdict(
        Kind.ALLOWED, f"ok:{registered}", f"Carries {best.text} and a contact.", registered
    )


def _undescriptive(
    candidates: Sequence[_Word], identity: _Word | None, has_contact: bool
) -> UAVerdict | None:
    contact = "" if has_contact else " and no contact (http(s) URL or e-mail)"
    if identity is None:
        named = [
            w
            for w in candidates
            if _TOKEN_RE.fullmatch(w.name) and ascii_lower(w.name) not in _PLATFORM_WORDS
        ]
        if named:
            return UAVerdict(
                Kind.UA_UNDESCRIPTIVE,
                "undescriptive:no-version",
                f"Product token {named[0].name} carries no version (send "
                f"{named[0].name}/1.0){contact}.",
            )
        return UAVerdict(
            Kind.UA_UNDESCRIPTIVE,
            "undescriptive:no-token",
            f"The user agent names no product token with a version (Token/1.0){contact}.",
        )
    if not _TOKEN_RE.fullmatch(identity.name):
        return UAVerdict(
            Kind.UA_UNDESCRIPTIVE,
            "undescriptive:invalid-token",
            f"{identity.name!r} is not an RFC 9309 product token (letters, '_' and '-' "
            f"only){contact}.",
        )
    if not has_contact:
        return UAVerdict(
            Kind.UA_UNDESCRIPTIVE,
            "undescriptive:no-contact",
            f"The user agent carries {identity.text} but no contact: add an http(s) URL or "
            "an e-mail address.",
        )
    return None


class SharedIndex:
    """The token index every tenant's check of one Runtime reads, replaced in one assignment.

    Checks read the index through this holder, so a change of product tokens swaps one
    reference instead of building 100,000 new checks; a check's memo belongs to the index it
    was filled with and starts afresh under another.
    """

    __slots__ = ("index",)

    def __init__(self, index: TokenIndex) -> None:
        self.index = index


class UserAgentPolicy:
    """One tenant's user-agent check; memoised because crawlers repeat their UA.

    `index`: every product token of the tenant set (a `SharedIndex`, or a `TokenIndex`, shared
    by all its tenants' checks); a UA carrying another tenant's is `ua-mismatch` even if it
    also carries this tenant's own. Without it, `foreign_tokens` (the other tenants' tokens)
    builds a small one. Per-tenant state is O(1) in the number of tenants; the memo costs
    nothing until used.
    """

    __slots__ = ("_memo", "_memo_index", "_shared", "_tenant", "product_tokens")

    def __init__(
        self,
        product_tokens: Sequence[str],
        foreign_tokens: Collection[str] = (),
        *,
        index: SharedIndex | TokenIndex | None = None,
    ) -> None:
        self.product_tokens: tuple[str, ...] = tuple(product_tokens)
        self._tenant = _Tenant.of(self.product_tokens)
        if index is None:
            index = _index_of(self.product_tokens, foreign_tokens)
        self._shared = index if isinstance(index, SharedIndex) else SharedIndex(index)
        self._memo: Callable[[str | None], UAVerdict] | None = None
        self._memo_index: TokenIndex | None = None

    @property
    def index(self) -> TokenIndex:
        return self._shared.index

    @property
    def foreign_tokens(self) -> frozenset[str]:
        """The other tenants' tokens as registered (walks the whole index: not per request)."""
        own = self._tenant.names if self._tenant is not None else {}
        return frozenset(token for key, (token, _) in self.index.tokens.items() if key not in own)

    @property
    def _cached(self) -> Any:
        """The memo of verdicts under the running index (made on first use)."""
        index = self._shared.index
        if self._memo is None or self._memo_index is not index:
            tenant = self._tenant
            self._memo = lru_cache(maxsize=CACHE_SIZE)(lambda ua: _evaluate(ua, tenant, index))
            self._memo_index = index
        return self._memo

    def _uncached(self, user_agent: str | None) -> UAVerdict:
        return _evaluate(user_agent, self._tenant, self._shared.index)

    def evaluate(self, user_agent: str | None) -> UAVerdict:
        if user_agent is not None and len(user_agent) > MAX_LENGTH:
            return self._uncached(user_agent)  # don't let huge keys fill the cache
        return self._cached(user_agent)

    def __repr__(self) -> str:
        return f"UserAgentPolicy({list(self.product_tokens)!r}, index of {len(self.index)} tokens)"


_OWN = "\x00own"  # owner of a tenant's own tokens in an index built for one check
_OTHER = "\x00other"  # owner of `foreign_tokens` given without their tenants


def _index_of(own: Sequence[str], foreign_tokens: Collection[str]) -> TokenIndex:
    """A one-check index: own tokens first, so a foreign spelling of one is never foreign."""
    return TokenIndex(((_OWN, own), (_OTHER, foreign_tokens)))


def lint(
    user_agent: str | None,
    product_tokens: Sequence[str] = (),
    foreign_tokens: Collection[str] = (),
) -> UAVerdict:
    """Tenant-less check (`crawlguard lint-ua`); with tokens it is exactly the proxy's check."""
    tokens = tuple(product_tokens)
    index = _index_of(tokens, foreign_tokens) if foreign_tokens else None
    return _evaluate(user_agent, _Tenant.of(tokens), index)


def product_token_of(user_agent: str) -> str:
    """The product token robots.txt groups are matched with for this User-Agent ("" if none).

    The one derivation shared by the proxy and `crawlguard check`: the policy's own parse,
    picking the crawler's identity word, as `lint(user_agent).token` does. For a UA that
    passes for a tenant with this token registered, it is that token (up to case):
    "Scrapy/2.11 (+https://scrapy.org) AcmeBot/1.0 (+https://acme.example)" -> AcmeBot,
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://…)" -> bingbot. Bare product tokens (as
    in robots.txt test suites) are themselves: "FooBot" -> FooBot, "Foo Bar" -> Foo.
    """
    parsed = _parse(user_agent[:MAX_LENGTH].strip())
    candidates = _candidates(parsed)
    return _robots_token(parsed, candidates, _identity(candidates))


def well_known_crawler(user_agent_or_token: str) -> str | None:
    """Name of the well-known crawler claimed or imitated (contacts included, as the proxy
    reads them). A bare token is compared ASCII-case-insensitively, as a substring."""
    value = user_agent_or_token.strip()
    if _TOKEN_RE.fullmatch(value):
        lowered = ascii_lower(value)
        if not _ANY_CLAIM_TOKEN_NAME.search(lowered):  # one pass instead of ~180 (config load)
            return None
        for needle, name in _CLAIM_TOKEN_NAMES:
            if needle in lowered:
                return name
        return None
    if (claimed := _claim(value)) is not None:
        return claimed[1]
    lookalike = _lookalike(value, (_WELL_KNOWN,))
    return lookalike[1] if lookalike is not None else None


def product_token_problem(token: str) -> str | None:
    """Why `token` cannot be registered as a tenant's product token, or None if it can."""
    if not _TOKEN_RE.fullmatch(token):
        return "must consist of letters, '_' and '-' only (RFC 9309 product token)"
    if len(token) < 3:
        return "must be at least 3 characters long"
    claimed = well_known_crawler(token)
    if claimed is not None:
        return (
            f"is or contains the token of the well-known crawler {claimed}; robots.txt rules "
            "and impersonation checks would confuse the two"
        )
    lowered = ascii_lower(token)
    m = _LIBRARY_RE_I.match(f"{token}/1.0")
    if (
        lowered in _BROWSER_WORDS
        or lowered in _EXTRA_LIBRARY_NAMES
        or lowered in _LIBRARY_LIKE_NAMES
        or (m is not None and m.end() >= len(token))
    ):
        return (
            "is the name of an HTTP library, tool or browser; it would make that software's "
            "default user agent pass as this crawler"
        )
    return None
