"""`RobotsRules` against the verdict table of the Protego-based parser.

The table: tests/data/robots_golden.jsonl, made by tests/golden/robots_rules.py.

Every body of Google's conformance suite, the hostile and generated files of the robots tests
and benchmark, and hundreds of hypothesis-drawn files, each decided for the product tokens and
URLs it names and a fixed set of tricky ones: allowed, rule text, Crawl-delay, Request-rate and
the merged groups' agents must be exactly what the parser gave when Protego grouped the rules.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from crawlguard.policy.robots import RobotsRules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))

import robots_rules as golden

LONG_URLS, RECORDS = golden.load()


def _id(record: dict[str, Any]) -> str:
    return f"{record['source']}:{record['names'][0][:60]}"


def test_the_table_covers_the_corpus() -> None:
    """The file holds what tests/golden/robots_rules.py says: not a table that shrank unnoticed."""
    sources = Counter(r["source"] for r in RECORDS)
    assert sources["conformance"] >= 60 and sources["generated"] >= 35
    assert sources["hypothesis"] >= 500
    assert sum(1 for r in RECORDS for _ in golden.checks(r, LONG_URLS)) >= 130_000
    assert sum(1 for r in RECORDS if r["too_complex"] is not None) >= 9
    assert len(LONG_URLS) >= 30 and max(map(len, LONG_URLS)) > 200_000
    # Each case of the vendored suite: its body, with its own agent and URL among the checks.
    by_sha = {r["sha256"]: r for r in RECORDS if r["source"] == "conformance"}
    cases = json.loads(golden.CONFORMANCE.read_text(encoding="utf-8"))
    assert len(cases) == 145
    for case in cases:
        record = by_sha[hashlib.sha256(case["robots"].encode()).hexdigest()]
        assert case["name"] in record["names"]
        checked = {(t, u) for t, u, fetch, _ in golden.checks(record, LONG_URLS) if fetch}
        assert (case["agent"], case["url"]) in checked, case["name"]
    # Every verdict kind occurs, and `fetch=False` is checked on /robots.txt itself.
    verdicts = [v for r in RECORDS for *_, v in golden.checks(r, LONG_URLS)]
    assert any(v[2] is not None for v in verdicts) and any(v[3] is not None for v in verdicts)
    assert sum(not v[0] for v in verdicts) > 25_000 and sum(v[0] for v in verdicts) > 60_000
    robots = [
        v for r in RECORDS for _, url, fetch, v in golden.checks(r, LONG_URLS)
        if not fetch and url == "/robots.txt"
    ]  # fmt: skip
    assert any(not v[0] for v in robots)


@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_verdicts_match_the_table(record: dict[str, Any]) -> None:
    body = golden.decode_bytes(record["body"])
    assert hashlib.sha256(body).hexdigest() == record["sha256"]
    rules = RobotsRules.parse(body)
    assert (rules.too_complex, rules.parse_error) == (record["too_complex"], record["parse_error"])
    wrong = []
    total = 0
    for token, url, fetch, expected in golden.checks(record, LONG_URLS):
        total += 1
        got = golden.verdict_of(rules, token, url, fetch)
        if got != expected:
            wrong.append((token, url[:80], fetch, expected, got))
    assert not wrong, f"{len(wrong)} of {total} verdicts differ; first: {wrong[:3]}"


def test_crawlguard_imports_no_robots_txt_library() -> None:
    """The parser is crawlguard's own: no module under crawlguard/ imports Protego (or reppy,
    or urllib.robotparser), so the table above is checked against crawlguard's code alone."""
    import ast

    import crawlguard

    imported = set()
    for path in Path(crawlguard.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {(path.name, a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
    assert len(imported) > 100  # the walk saw the package
    libraries = ("protego", "reppy", "urllib.robotparser", "robotexclusionrulesparser")
    assert not [(f, m) for f, m in imported if m.split(".")[0] in libraries or m in libraries]
