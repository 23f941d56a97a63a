"""The milliseconds the tests no longer assert: per-request costs on the hot path, on the exact
inputs the unit tests bound by counted work (tests/costs.py) instead of by the clock.

    .venv/bin/python benchmarks/decide_worst_case.py [--repeat 5] [--check]

* `RobotsRules.decide` on tests/unit/test_robots_rules.py's hostile files (HOSTILE: the slowest
  of its ten token x URL decisions) and on the files at the caps with the 200 KB URLs
  (HUGE_URLS): the claim is under 50 ms for any decision (it runs on the proxy's event loop);
* `UserAgentPolicy.evaluate` on tests/unit/test_ua_policy.py's 1,000 distinct, uncached user
  agents: the claim is an average under 0.3 ms.

Each figure is the best of `--repeat` runs (the least disturbed by other work on the machine)
and is printed beside the counted work the tests assert. `--check` exits 1 when a figure is
over its claim: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "unit")]  # the tests' helpers and their inputs

import test_robots_rules as robots_tests  # noqa: E402
from costs import measure  # noqa: E402

from crawlguard.policy.robots import RobotsRules  # noqa: E402
from crawlguard.policy.ua import UserAgentPolicy  # noqa: E402

DECIDE_MS = 50.0
EVALUATE_MS = 0.3


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def robots_cases() -> list[tuple[str, RobotsRules, list[tuple[str, str]]]]:
    t = robots_tests
    urls = ("/", "/a" * 500, t.LONG_URL, "/" + "ab" * 2000, "/zzz?q=1")
    hostile = [(tok, u) for tok in ("AcmeBot", "Unnamed") for u in urls]
    at_caps = b"User-agent: *\nAllow: /abcdefgh/ok/longer-than-any-wildcard\n" + b"".join(
        b"Disallow: /*abcdefgh*1%d0\n" % i for i in range(1000)
    )
    escaped = b"User-agent: *\n" + b"".join(b"Disallow: /*%%61bc*x%d\n" % i for i in range(1000))
    huge = [("AcmeBot", u) for u in t.HUGE_URLS]
    huge_more = [*huge, ("AcmeBot", "/q" + "y" * 200_000), ("AcmeBot", "/abc" + "y" * 16_000)]
    cases = [(name, RobotsRules.parse(body), hostile) for name, body in t.HOSTILE.items()]
    cases += [
        ("issue 9 file (too complex)", RobotsRules.parse(t._issue9_file(18_000)), huge),
        ("1000 wildcards at the cap, 200 KB URLs", RobotsRules.parse(at_caps), huge),
        ("1000 escaped wildcards, 200 KB URLs", RobotsRules.parse(escaped), huge_more),
    ]
    return cases


def user_agents() -> list[str]:
    templates = [
        "AcmeBot/{i}.0 (+https://acme.example/bot/{i})",
        "Mozilla/5.0 (compatible; OtherBot{i}/2.{i}; +https://other.example/{i})",
        "python-requests/2.{i}.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{i}.0.0.0 Safari/537.36",
        "Mozilla/5.0 (compatible; Googlebot/2.{i}; +http://www.google.com/bot.html)",
        "Crawler{i} (+mailto:x{i}@example.org)",
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, "
        "like Gecko) Chrome/{i}.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
        "+http://www.google.com/bot.html)",
        "garbage-{i} " * 20,
    ]  # as in tests/unit/test_ua_policy.py::test_evaluate_is_fast
    return [templates[i % len(templates)].format(i=i) for i in range(1000)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best is kept)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a figure is over")
    args = parser.parse_args()
    over = []
    print(f"RobotsRules.decide, slowest decision per file (claim < {DECIDE_MS:g} ms)")
    for name, rules, cases in robots_cases():
        worst_ms, worst_lines = 0.0, 0
        for token, url in cases:
            ms = best_ms(lambda: rules.decide(token, url), args.repeat)  # noqa: B023
            _, work = measure(lambda: rules.decide(token, url))  # noqa: B023
            worst_ms, worst_lines = max(worst_ms, ms), max(worst_lines, work.lines)
        flag = "  OVER" if worst_ms >= DECIDE_MS else ""
        print(f"  {name:42s} {worst_ms:8.3f} ms  ({worst_lines} lines){flag}")
        if flag:
            over.append(name)
    uas = user_agents()
    best = float("inf")
    for _ in range(args.repeat):
        policy = UserAgentPolicy(["AcmeBot"])  # a fresh one: every evaluation uncached
        start = time.perf_counter()
        for ua in uas:
            policy.evaluate(ua)
        best = min(best, (time.perf_counter() - start) / len(uas) * 1000)
    policy = UserAgentPolicy(["AcmeBot"])
    lines = sum(measure(lambda: policy.evaluate(ua))[1].lines for ua in uas) / len(uas)  # noqa: B023
    flag = "  OVER" if best >= EVALUATE_MS else ""
    print(f"UserAgentPolicy.evaluate, 1,000 distinct UAs (claim < {EVALUATE_MS:g} ms average)")
    print(f"  {'average':42s} {best:8.4f} ms  ({lines:.0f} lines){flag}")
    if flag:
        over.append("UserAgentPolicy.evaluate")
    if args.check and over:
        print(f"over the claim: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
