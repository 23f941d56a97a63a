"""Worst-case cost of robots.txt parsing and `RobotsRules.decide` on hostile input (issue 9).

    .venv/bin/python benchmarks/robots_hostile.py

Prints, per hostile file: parse time, `too_complex`, and the slowest of several decisions
(best of 5 repeats each) over URLs from 100 octets to 200 KB. `decide` runs on the proxy's
event loop, so its worst case must stay at a few milliseconds whatever the file and URL.
"""

from __future__ import annotations

import random
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
