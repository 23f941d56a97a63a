"""Worst-case cost of robots.txt parsing and `RobotsRules.decide` on hostile input (issue 9).

    .venv/bin/python benchmarks/robots_hostile.py
    .venv/bin/python benchmarks/robots_hostile.py --parse   # parse times of 500 KiB files only

Prints, per hostile file: parse time, `too_complex`, and the slowest of several decisions
(best of 5 repeats each) over URLs from 100 octets to 200 KB. `decide` runs on the proxy's
event loop, so its worst case must stay at a few milliseconds whatever the file and URL.
`--parse` times `RobotsRules.parse` (best of 7) on files of MAX_BYTES (500 KiB): parsing
runs in worker processes, but its cost bounds how fast a new site's first request is served.
"""

from __future__ import annotations

import random
import sys
import time

from crawlguard.policy.robots import (
    MAX_BYTES,
    MAX_WILDCARD_PATTERN,
    MAX_WILDCARD_RULES,
    RobotsRules,
)

SIZES = (100, 1024, 2048, 2049, 4096, 16 * 1024, 60_000, 200_000)


def _files() -> dict[str, bytes]:
    rnd = random.Random(9)
    under = MAX_WILDCARD_RULES
    return {
        # The file: 18k rules, truncated at MAX_BYTES (~17k kept).
        "issue 9 (18k /*abcdefgh*1N0)": b"User-agent: *\n"
        + b"".join(b"Disallow: /*abcdefgh*1%d0\n" % rnd.randrange(10**6) for _ in range(18_000)),
        "1000 /*abcdefgh*1N0 (at the cap)": b"User-agent: *\n"
        + b"".join(b"Disallow: /*abcdefgh*1%d0\n" % rnd.randrange(10**6) for _ in range(under)),
        "1000 /*aaaa..aN (costly find, at the cap)": b"User-agent: *\n"
        + b"".join(b"Disallow: /*%sb%d\n" % (b"a" * 60, i) for i in range(under)),
        "1000 anchored Allow /*a*N$ + Disallow: /": b"User-agent: *\nDisallow: /\n"
        + b"".join(b"Allow: /*a*%d$\n" % i for i in range(under)),
        "1000 escaped /*%61bc*N (two readings)": b"User-agent: *\n"
        + b"".join(b"Disallow: /*%%61bc*x%d\n" % i for i in range(under)),
        "one 1024-octet pattern of 511 stars": b"User-agent: *\nDisallow: /"
        + b"*a" * ((MAX_WILDCARD_PATTERN - 2) // 2)
        + b"\n",
        "1000 prefix lengths": b"User-agent: *\n"
        + b"".join(b"Disallow: /%s\n" % (b"a" * n) for n in range(1, 1000)),
        "100k plain lines": b"User-agent: *\n"
        + b"".join(b"Disallow: /p%d\n" % i for i in range(100_000)),
    }


def _parse_files() -> dict[str, bytes]:
    """Files of MAX_BYTES (500 KiB) as large sites serve them, and two hostile shapes."""
    rnd = random.Random(500)
    plain = [b"User-agent: *\n"]
    while sum(map(len, plain)) < MAX_BYTES:
        plain.append(b"Disallow: /section-%d/page-%d\n" % (rnd.randrange(999), len(plain)))
    agents = [b"*", *(b"%sBot" % bytes([97 + i // 26, 97 + i % 26]) for i in range(60))]
    mixed: list[bytes] = []
    while sum(map(len, mixed)) < MAX_BYTES:
        mixed += [b"User-agent: %s\n" % a for a in rnd.sample(agents, rnd.randrange(1, 4))]
        mixed.append(b"# group %d\nCrawl-delay: %d\n" % (len(mixed), rnd.randrange(1, 10)))
        for _ in range(rnd.randrange(20, 200)):
            kind = b"Allow" if rnd.random() < 0.2 else b"Disallow"
            shape = rnd.random()
            if shape < 0.05:
                value = b"/*.%s$" % rnd.choice([b"pdf", b"zip", b"php", b"json"])
            elif shape < 0.1:
                value = b"/*?session=%d" % rnd.randrange(10**4)
            elif shape < 0.15:
                value = b"/caf%%C3%%A9/%%61rticle-%d" % rnd.randrange(10**5)
            else:
                value = b"/%s/%d/" % (rnd.choice([b"search", b"user", b"tag", b"cart"]), len(mixed))
            mixed.append(b"%s: %s\n" % (kind, value))
    return {
        "15k plain Disallow lines": b"".join(plain),
        "mixed: groups of 1-3 agents, 5% each *, $, escapes": b"".join(mixed),
        "100k plain lines (cut at 500 KiB)": b"User-agent: *\n"
        + b"".join(b"Disallow: /p%d\n" % i for i in range(100_000)),
        "many groups (30k, cut at 500 KiB)": b"".join(
            b"User-agent: *\nUser-agent: AcmeBot\nDisallow: /*%d\n" % i for i in range(30_000)
        ),
    }


def parse_times() -> None:
    for name, body in _parse_files().items():
        spent = _time(lambda body=body: RobotsRules.parse(body), repeat=7)
        parsed = RobotsRules.parse(body)
        lines = body[:MAX_BYTES].count(b"\n")
        print(
            f"parse {name:52} {min(len(body), MAX_BYTES) / 1024:4.0f} KiB {lines:6} lines  "
            f"{spent * 1000:6.1f} ms  too_complex={parsed.too_complex}"
        )


def _urls(size: int) -> list[str]:
    return [
        "/abcdefgh" + "x" * size,
        "/" + "a" * size,
        "/abc" + "a" * size,
        "/abc" + "%2F" * (size // 3),  # canonical escapes
        "/" + "ab" * (size // 2),
    ]


# Not canonical (escapes of unreserved characters, spaces): the proxy only passes canonical
# targets (identity.canonical_path), but `crawlguard check` may; normalising costs ~1 us per
# octet that needs fixing, whatever robots.txt says.
RAW = {
    "%61" * 5461: "16 KiB of %61",
    " " * 16384: "16 KiB of spaces",
    "%61" * 66_667: "200 KB of %61",
}


def _time(fn: object, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    if "--parse" in sys.argv[1:]:
        parse_times()
        return
    print(f"caps: {MAX_WILDCARD_RULES} wildcard rules, {MAX_WILDCARD_PATTERN}-octet patterns")
    overall = 0.0
    for name, body in _files().items():
        start = time.perf_counter()
        parsed = RobotsRules.parse(body)
        parse = time.perf_counter() - start
        worst, where, small = 0.0, "", 0.0  # small: the worst over URLs <= 16 KiB
        for size in SIZES:
            for url in _urls(size):
                spent = _time(lambda url=url, rules=parsed: rules.decide("AcmeBot", url))
                if size <= 16 * 1024:
                    small = max(small, spent)
                if spent > worst:
                    worst, where = spent, f"{len(url)} octets, {url[:12]!r}"
        overall = max(overall, worst)
        body_kib = min(len(body), MAX_BYTES) / 1024
        print(
            f"{name:42} {body_kib:6.0f} KiB  parse {parse * 1000:7.1f} ms  "
            f"worst decide {small * 1000:5.2f} ms <= 16 KiB, {worst * 1000:5.2f} ms ({where})"
            f"  too_complex={parsed.too_complex}"
        )
    normal = RobotsRules.parse(
        b"User-agent: *\n"
        + b"".join(b"Disallow: /private%d/\n" % i for i in range(15))
        + b"Disallow: /*.pdf$\nDisallow: /*?sessionid=\nAllow: /public/\nCrawl-delay: 2\n"
    )
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        normal.decide("AcmeBot", "/docs/guide/page-12.html?lang=en")
    typical = (time.perf_counter() - start) / n
    print(f"20-rule file, typical URL: {typical * 1e6:.1f} us per decide")
    print(f"worst decide overall (canonical URLs): {overall * 1000:.2f} ms")
    for raw, label in RAW.items():
        spent = _time(lambda raw=raw: normal.decide("AcmeBot", "/" + raw))
        print(f"non-canonical URL, {label}: {spent * 1000:.1f} ms (normalisation)")


if __name__ == "__main__":
    main()
