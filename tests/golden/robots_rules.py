"""The robots.txt verdict table that `crawlguard.policy.robots` must keep giving.

`tests/data/robots_golden.jsonl` was generated from the Protego-based parser (the last one
before crawlguard parsed and grouped robots.txt by itself: its frozen copy ran beside the new
parser in commit 558d7a3, tests/robots_protego_reference.py, deleted with Protego) and is what
`tests/unit/test_robots_golden.py` holds the parser to. The first line lists the long URLs; then one
line per robots.txt body:

    {"source": ..., "names": [...], "body": <encoded>, "sha256": ..., "too_complex": ...,
     "parse_error": ..., "verdicts": [[allowed, rule, crawl_delay, request_rate, agents], ...],
     "grids": [{"fetch": bool, "tokens": [...], "urls": [<encoded>...], "table": [[i, ...]]}]}

`table[t][u]` indexes `verdicts`: the verdict of `decide(tokens[t], urls[u], fetch=fetch)`.
Bodies and URLs are stored whole (zlib for large ones), so the file needs nothing else to stay
meaningful. The bodies: every body of Google's conformance suite (tests/data/conformance and
the shared `google_robotstxt_other_checks.json`), the hostile and generated files of
tests/test_robots_rules.py and benchmarks/robots_hostile.py, and files drawn by hypothesis
from `robots_cases()` (derandomized). Each is checked with the product tokens and URLs it
names, variations of its rule values, and a fixed set of tricky URLs.

    .venv/bin/python tests/golden/robots_rules.py [OUT]   # rewrites the file (or writes OUT):
                                          # every verdict change `git diff` shows is accepted so
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import random
import re
import sys
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
GOLDEN = TESTS / "data" / "robots_golden.jsonl"
CONFORMANCE = TESTS / "data" / "conformance" / "google_robotstxt_cases.json"
SHARED_OTHER = Path("/work/shared/conformance/google_robotstxt_other_checks.json")

INLINE_MAX = 4096  # bodies and URLs longer than this are stored zlib-compressed
BODY_MAX = 500 * 1024 + 64  # RobotsRules.parse reads 500 KiB: what lies beyond is not kept
LONG = "long_urls"  # a grid's "urls": the file's shared list of long URLs (its first line)

Verdict = list[Any]  # [allowed, rule, crawl_delay, request_rate | None, agents]

BASE_TOKENS = ["AcmeBot", "UnnamedBot", "FooBot", "foobot", "*", "", " FooBot "]
BASE_URLS = [
    "",
    "/",
    "/robots.txt",
    "/robots.txt?x=1",
    "/robots.txt.bak",
    "/ROBOTS.TXT",
    "/a",
    "/a/",
    "/a/b",
    "/x",
    "/%61",
    "/%2561",
    "/index.html",
    "/a/index.html",
    "https://h.example",
    "https://h.example:8443/a/b?c#frag",
    "h.example/a",
    "//x/y",
    "/caf%E9",
    "/caf\udce9",
    "/%E3%83%84",
    "/ツ",
    "/a%2Fb",
    "/?q=1",
    "/a*b",
    "/a%2Ab",
    "/a$",
    "/a%24",
    "/foo/bar/baz",
    "/foo/bar/%62%61%7A",
]
ROBOTS_URLS = ["/robots.txt", "/robots.txt?x=1", "https://h.example/robots.txt", "/%72obots.txt"]

_LINE = re.compile(rb"\r\n|\r|\n")
_RULE_LINE = re.compile(
    rb"^\s*(?:dis+al+[oa]w|diasllow|allow)\s*:?\s*([^#\s]+)", re.IGNORECASE | re.ASCII
)
_AGENT_LINE = re.compile(rb"^\s*user[- ]?agent\s*:?\s*([^#\r\n]*)", re.IGNORECASE | re.ASCII)


# --- encoding ---------------------------------------------------------------------------


def encode_bytes(body: bytes) -> Any:
    if body == random_bytes(len(body)):
        return {"random": len(body)}
    if len(body) > INLINE_MAX:
        return {"zlib": base64.b64encode(zlib.compress(body, 9)).decode()}
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": body.hex()}


def random_bytes(size: int) -> bytes:
    """The fixed draw of random octets the corpus uses (the tests' os.urandom, pinned)."""
    return random.Random(9).randbytes(size)


def decode_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if "random" in value:
        return random_bytes(value["random"])
    if "hex" in value:
        return bytes.fromhex(value["hex"])
    return zlib.decompress(base64.b64decode(value["zlib"]))


def encode_url(url: str) -> Any:
    if len(url) <= INLINE_MAX:
        return url
    return {"zlib": base64.b64encode(zlib.compress(url.encode("utf-8", "surrogatepass"))).decode()}


def decode_url(value: Any) -> str:
    if isinstance(value, str):
        return value
    return zlib.decompress(base64.b64decode(value["zlib"])).decode("utf-8", "surrogatepass")


def verdict_of(rules: Any, token: str, url: str, fetch: bool) -> Verdict:
    """A verdict as plain JSON values: what the golden file compares."""
    v = rules.decide(token, url, fetch=fetch)
    rate = None if v.request_rate is None else [v.request_rate[0], v.request_rate[1]]
    return [v.allowed, v.rule, v.crawl_delay, rate, list(v.agents)]


def load() -> tuple[list[str], list[dict[str, Any]]]:
    """The long URLs (the first line) and the records of the golden file."""
    with GOLDEN.open(encoding="utf-8") as f:
        head, *records = (json.loads(line) for line in f)
    return [decode_url(u) for u in head["long_urls"]], records


def checks(
    record: dict[str, Any], long_urls: list[str]
) -> Iterable[tuple[str, str, bool, Verdict]]:
    """(token, url, fetch, expected verdict) of every check a golden record holds."""
    verdicts = record["verdicts"]
    for grid in record["grids"]:
        urls = long_urls if grid["urls"] == LONG else [decode_url(u) for u in grid["urls"]]
        for token, row in zip(grid["tokens"], grid["table"], strict=True):
            for url, index in zip(urls, row, strict=True):
                yield token, url, grid["fetch"], verdicts[index]


# --- what each body is checked with -------------------------------------------------------


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def named_tokens(body: bytes, limit: int = 12) -> list[str]:
    """Product tokens the body's user-agent lines name, as written and case-varied."""
    found: dict[str, None] = {}
    for line in _LINE.split(body):
        m = _AGENT_LINE.match(line)
        if m is None:
            continue
        value = _text(m.group(1)).strip()[:64]
        for token in (value, value.split("/")[0], value.split(" ")[0], value.upper()):
            if token and len(found) < limit:
                found[token] = None
    return list(found)


def rule_urls(body: bytes, keep: int = 16, seed: int = 0) -> list[str]:
    """URLs near the body's allow/disallow values (at most `keep` of them: the first and last
    few, a fixed sample of the rest): each value, extended, cut, un-starred."""
    values: list[str] = []
    for line in _LINE.split(body):
        m = _RULE_LINE.match(line)
        if m is not None:
            values.append(_text(m.group(1)))
    if len(values) > keep:
        ends = keep // 3
        middle = values[ends:-ends]
        sample = random.Random(seed).sample(middle, keep - 2 * ends)
        values = values[:ends] + sample + values[-ends:]
    urls: dict[str, None] = {}
    for v in values:
        path = v if v.startswith("/") else "/" + v
        plain = path.replace("*", "zz").rstrip("$").replace("$", "")
        for url in (path, path + "x", path + "/", path[:-1] or "/", plain, plain + "/y"):
            urls[url] = None
    return list(urls)


# --- the corpus ----------------------------------------------------------------------------


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _rules_tests() -> ModuleType:
    """tests/test_robots_rules.py (or tests/unit/, where the test tiers put it)."""
    for path in (TESTS / "unit" / "test_robots_rules.py", TESTS / "test_robots_rules.py"):
        if path.exists():
            return _module(path, "_golden_test_robots_rules")
    raise FileNotFoundError("test_robots_rules.py")


def _long_urls() -> list[str]:
    """The long URLs the hostile-input tests and the benchmark decide on."""
    rules_tests = _rules_tests()
    bench = _module(TESTS.parent / "benchmarks" / "robots_hostile.py", "_golden_robots_hostile")
    urls = [
        "/a" * 500,
        rules_tests.LONG_URL,
        "/" + "ab" * 2000,
        "/zzz?q=1",
        *rules_tests.HUGE_URLS,
        "/q" + "abc" * 60_000,
        "/q" + "y" * 200_000,
        "/abc" + "y" * 16_000,
        "/abcdefgh/x/17/1230",
        "/abcdefgh" + "x" * 200_000 + "140",
    ]
    for size in (2048, 2049, 16 * 1024, 200_000):
        urls += bench._urls(size)
    urls += ["/" + raw for raw in bench.RAW]
    return urls


def generated_bodies() -> list[tuple[str, bytes]]:
    """(name, body) of the hostile and generated files of the robots tests and benchmark."""
    rules_tests = _rules_tests()
    bench = _module(TESTS.parent / "benchmarks" / "robots_hostile.py", "_golden_robots_hostile")
    out: list[tuple[str, bytes]] = []
    for name, body in rules_tests.HOSTILE.items():
        if name == "random bytes":  # os.urandom there: a fixed draw here
            body = random_bytes(len(body))
        out.append((f"test_robots_rules HOSTILE {name}", body))
    for name, body in rules_tests.FOOTPRINT_CASES.items():
        out.append((f"test_robots_rules FOOTPRINT_CASES {name}", body))
    out += [
        ("test_robots_rules _issue9_file(18000)", rules_tests._issue9_file(18_000)),
        ("test_robots_rules _issue9_file(1000, seed=1)", rules_tests._issue9_file(1000, seed=1)),
        ("test_robots_rules NEAR_CAP", _rules_text(rules_tests.NEAR_CAP)),
        ("test_robots_rules FEW", _rules_text(rules_tests.FEW)),
        (
            "test_robots_rules 1001 wildcards",
            b"User-agent: *\n" + b"".join(b"Disallow: /*q%d\n" % i for i in range(1001)),
        ),
        ("test_robots_rules split groups", _split_groups()),
        (
            "test_robots_rules duplicates and plain",
            b"User-agent: *\n"
            + b"Disallow: /*a\n" * 5000
            + b"".join(b"Disallow: /p%d\n" % i for i in range(20_000)),
        ),
        (
            "test_robots_rules pattern at the length cap",
            ("User-agent: *\nDisallow: /a*" + "b" * 1021 + "\n").encode(),
        ),
        (
            "test_robots_rules pattern over the length cap",
            ("User-agent: *\nDisallow: /a*" + "b" * 1021 + "$\n").encode(),
        ),
        (
            "test_robots_rules match budget",
            b"User-agent: *\nAllow: /abcdefgh/ok/longer-than-any-wildcard\n"
            + b"".join(b"Disallow: /*abcdefgh*1%d0\n" % i for i in range(1000)),
        ),
        (
            "test_robots_rules escaped budget",
            b"User-agent: *\n" + b"".join(b"Disallow: /*%%61bc*x%d\n" % i for i in range(1000)),
        ),
        (
            "test_robots_rules wildcard index",
            (
                "User-agent: *\n"
                + "".join(f"Disallow: /*/{i:x}*/item{i}$\n" for i in range(300))
                + "".join(f"Disallow: /cat{i}/*/x\n" for i in range(300))
                + "".join(f"Disallow: /*?session=s{i:03d}\n" for i in range(300))
                + "Disallow: /*?a\n"
            ).encode(),
        ),
    ]
    out += [(f"robots_hostile _files {n}", b) for n, b in bench._files().items()]
    out += [(f"robots_hostile _parse_files {n}", b) for n, b in bench._parse_files().items()]
    return out


def _split_groups() -> bytes:
    return b"".join(
        b"User-agent: %s\n" % agent
        + b"".join(b"Disallow: /*g%d-%d\n" % (group, i) for i in range(600))
        for group, agent in enumerate((b"acmebot", b"*", b"acmebot"))
    )


def _rules_text(lines: list[tuple[bool, str]]) -> bytes:
    return (
        "User-agent: *\n"
        + "".join(f"{'Allow' if allow else 'Disallow'}: {p}\n" for allow, p in lines)
    ).encode()


def conformance_bodies() -> list[tuple[str, bytes, list[str], list[str]]]:
    """(case name, body, agents, urls) of Google's suite: its verdict cases, and the bodies
    of its other checks (the shared folder's file, when it is there)."""
    out = [
        (c["name"], c["robots"].encode("utf-8"), [c["agent"]], [c["url"]])
        for c in json.loads(CONFORMANCE.read_text(encoding="utf-8"))
    ]
    if SHARED_OTHER.exists():
        other = json.loads(SHARED_OTHER.read_text(encoding="utf-8"))

        def walk(node: Any, where: str) -> None:
            if isinstance(node, dict):
                name = f"{where}/{node.get('name', '')}"
                if isinstance(node.get("robots"), str):
                    out.append((name, node["robots"].encode("utf-8"), [], []))
                if isinstance(node.get("robots_hex"), str):
                    out.append((name, bytes.fromhex(node["robots_hex"]), [], []))
                for key, value in node.items():
                    walk(value, f"{where}/{key}" if where else key)
            elif isinstance(node, list):
                for item in node:
                    walk(item, where)

        walk(other, "")
    return out


# --- hypothesis: generated robots.txt files, tokens, URLs -------------------------------------

_AGENT_NAMES = [
    "FooBot",
    "foobot",
    "FOOBOT",
    "BarBot",
    "barbot",
    "*",
    "* ",
    "*bot",
    "Foo",
    "Foo Bar",
    "FooBot/1.0",
    "Foo_Bar-Baz",
    "ツbot",
    "123",
    "",
    "examplebot",
]
TOKENS = ["FooBot", "foobot", "BarBot", "Foo", "Foo_Bar-Baz", "examplebot", "OtherBot", "*", ""]
_PIECES = [
    "/",
    "a",
    "b",
    "ab",
    ".",
    "?",
    "=",
    "&",
    "-",
    "~",
    "*",
    "$",
    "%2A",
    "%24",
    "%61",
    "%62",
    "%2F",
    "%2f",
    "%7E",
    "%E3%83%84",
    "ツ",
    "é",
    " ",
    "%",
    "index.html",
    "robots.txt",
    "x",
]
_FIELD_SPELLINGS = {
    "agent": ["User-agent", "user-agent", "USER-AGENT", "useragent", "User agent", "User-Agent "],
    "allow": ["Allow", "allow", "ALLOW", " Allow"],
    "disallow": ["Disallow", "disallow", "dissallow", "disalow", "DISALLOW ", "Disallaw"],
    "delay": ["Crawl-delay", "crawl delay", "crawldelay", "Crawl-Delay"],
    "rate": ["Request-rate", "request rate"],
    "other": ["Sitemap", "Host", "Noindex", "Visit-time", "Unknown-field", "Clean-param"],
}
_DELAYS = ["1", "0.5", ".25", "0", "-1", "nan", "inf", "1e3", "1_000", "10 ", "", "abc", "5", "3."]
_RATES = ["1/5", "3/1m", "1/10s 0900-1700", "0/5", "1/0", "fast", "2/4", "1/1h", "1/5 x"]
_SEPARATORS = [": ", ":", " ", " : ", "\t", ":\t"]


def _path(pieces: list[str]) -> str:
    return "".join(pieces)


paths = st.lists(st.sampled_from(_PIECES), max_size=8).map(_path)


_MEMBER_KINDS = ["allow", "disallow", "disallow", "disallow", "delay", "rate", "other", "raw"]


@st.composite
def _line(draw: st.DrawFn, kinds: list[str]) -> bytes:
    kind = draw(st.sampled_from(kinds))
    if kind == "raw":  # comments, blanks, junk and invalid UTF-8
        return draw(
            st.sampled_from(
                [b"", b"# comment", b"   ", b"junk line", b"\xef\xbb\xbf", b"Disallow /a:b", b":"]
            )
        ) + draw(st.sampled_from([b"", b"\xff", b"\xe9"]))
    name = draw(st.sampled_from(_FIELD_SPELLINGS[kind]))
    if kind == "agent":
        value = draw(st.sampled_from(_AGENT_NAMES))
    elif kind in ("allow", "disallow"):
        value = draw(st.one_of(paths, paths.map(lambda p: "/" + p), st.just("")))
    elif kind == "delay":
        value = draw(st.sampled_from(_DELAYS))
    elif kind == "rate":
        value = draw(st.sampled_from(_RATES))
    else:
        value = draw(paths)
    sep = draw(st.sampled_from(_SEPARATORS))
    comment = draw(st.sampled_from(["", " # c", "#", "  "]))
    raw = draw(st.sampled_from([b"", b"", b"", b"\xe9", b"\xff\xfe"]))
    return f"{name}{sep}{value}".encode() + raw + comment.encode()


@st.composite
def robots_cases(draw: st.DrawFn) -> tuple[bytes, list[str], list[str]]:
    """(robots.txt body, product tokens, URLs): a file of user-agent, allow/disallow,
    Crawl-delay, Request-rate, other and junk lines in varied spellings and line endings:
    groups of user-agent lines then members (where a stray user-agent line may fall), after
    a preamble of lines that belong to no group."""
    lines = draw(st.lists(_line(_MEMBER_KINDS), max_size=2))
    for _ in range(draw(st.integers(0, 5))):
        lines += draw(st.lists(_line(["agent"]), min_size=1, max_size=3))
        lines += draw(st.lists(_line([*_MEMBER_KINDS, "agent"]), max_size=7))
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"]))
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    body = bom + eol.join(lines) + draw(st.sampled_from([b"", eol]))
    tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4, unique=True))
    prefix = st.sampled_from(["", "", "/", "https://h.example", "h.example/", "//"])
    urls = draw(st.lists(st.builds(lambda p, q: p + q, prefix, paths), min_size=1, max_size=6))
    return body, tokens, urls


def hypothesis_cases(count: int) -> list[tuple[bytes, list[str], list[str]]]:
    """`count` draws of `robots_cases()`, derandomized (the same on every run of one
    hypothesis version; the golden file stores them, so later versions do not matter)."""
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: list[tuple[bytes, list[str], list[str]]] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(robots_cases())
    def collect(case: tuple[bytes, list[str], list[str]]) -> None:
        drawn.append(case)

    collect()
    seen: set[bytes] = set()
    unique = []
    for case in drawn:
        if case[0] not in seen:
            seen.add(case[0])
            unique.append(case)
    return unique


# --- writing -----------------------------------------------------------------------------


def record(
    parse: Callable[[bytes], Any],
    source: str,
    names: list[str],
    body: bytes,
    tokens: list[str],
    urls: list[str],
    long_urls: list[str] | None = None,
) -> dict[str, Any]:
    rules = parse(body)
    verdicts: list[Verdict] = []
    index: dict[str, int] = {}

    def grid(fetch: bool, grid_tokens: list[str], grid_urls: list[str]) -> dict[str, Any]:
        table = []
        for token in grid_tokens:
            row = []
            for url in grid_urls:
                verdict = verdict_of(rules, token, url, fetch)
                key = json.dumps(verdict)
                if key not in index:
                    index[key] = len(verdicts)
                    verdicts.append(verdict)
                row.append(index[key])
            table.append(row)
        return {
            "fetch": fetch,
            "tokens": grid_tokens,
            "urls": LONG if grid_urls is long_urls else [encode_url(u) for u in grid_urls],
            "table": table,
        }

    grids = [grid(True, tokens, urls), grid(False, tokens, ROBOTS_URLS)]
    if long_urls:
        grids.append(grid(True, ["AcmeBot", "UnnamedBot"], long_urls))
    return {
        "source": source,
        "names": names,
        "body": encode_bytes(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "too_complex": rules.too_complex,
        "parse_error": rules.parse_error,
        "verdicts": verdicts,
        "grids": grids,
    }


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def build(
    parse: Callable[[bytes], Any], hypothesis_count: int = 800
) -> tuple[list[str], list[dict[str, Any]]]:
    """The long URLs and every golden record, verdicts given by `parse` (a
    `RobotsRules.parse`)."""
    out: list[dict[str, Any]] = []
    by_body: dict[bytes, tuple[list[str], list[str], list[str]]] = {}
    for name, body, agents, urls in conformance_bodies():
        names, seen_agents, seen_urls = by_body.setdefault(body, ([], [], []))
        names.append(name)
        seen_agents += agents
        seen_urls += urls
    for body, (names, agents, urls) in by_body.items():
        tokens = _unique([*agents, *named_tokens(body), *BASE_TOKENS])
        all_urls = _unique([*urls, *rule_urls(body), *BASE_URLS])
        out.append(record(parse, "conformance", names, body, tokens, all_urls))
    long_urls = _long_urls()
    generated: dict[bytes, list[str]] = {}
    for name, body in generated_bodies():
        generated.setdefault(body[:BODY_MAX], []).append(name)
    for body, names in generated.items():
        tokens = _unique([*named_tokens(body, limit=6), *BASE_TOKENS])
        urls = _unique([*rule_urls(body), *BASE_URLS])
        out.append(record(parse, "generated", names, body, tokens, urls, long_urls))
    for i, (body, tokens, urls) in enumerate(hypothesis_cases(hypothesis_count)):
        tokens = _unique([*tokens, *named_tokens(body, limit=4), "UnnamedBot"])
        urls = _unique([*urls, *rule_urls(body, keep=8), "/", "/robots.txt", "/a"])
        out.append(record(parse, "hypothesis", [f"robots_cases #{i}"], body, tokens, urls))
    return long_urls, out


def main() -> None:
    from crawlguard.policy.robots import RobotsRules

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    long_urls, records = build(RobotsRules.parse)
    with out.open("w", encoding="utf-8") as f:
        f.write(json.dumps({LONG: [encode_url(u) for u in long_urls]}) + "\n")
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    total = sum(len(row) for rec in records for g in rec["grids"] for row in g["table"])
    print(f"{out}: {len(records)} bodies, {total} verdicts")


if __name__ == "__main__":
    main()
