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

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

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


# --- side by side with the Protego-based parser (deleted with Protego) -----------------------

import os  # noqa: E402

import robots_protego_reference as reference  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SIDE_BY_SIDE_EXAMPLES = int(os.environ.get("ROBOTS_SIDE_BY_SIDE_EXAMPLES", "300"))


def _agree(body: bytes, tokens: list[str], urls: list[str]) -> None:
    old, new = reference.RobotsRules.parse(body), RobotsRules.parse(body)
    assert (new.too_complex, new.parse_error) == (old.too_complex, old.parse_error)
    assert (new.body, new.sha256, new.footprint) == (old.body, old.sha256, old.footprint)
    tokens = [*tokens, *golden.named_tokens(body), "UnnamedBot"]
    urls = [*urls, *golden.rule_urls(body), "/", "/robots.txt"]
    for token in tokens:
        for url in urls:
            for fetch in (True, False):
                assert golden.verdict_of(new, token, url, fetch) == golden.verdict_of(
                    old, token, url, fetch
                ), (token, url, fetch)


@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_same_verdicts_as_the_protego_parser(record: dict[str, Any]) -> None:
    old = reference.RobotsRules.parse(golden.decode_bytes(record["body"]))
    new = RobotsRules.parse(golden.decode_bytes(record["body"]))
    assert (new.too_complex, new.parse_error, new.footprint) == (
        old.too_complex,
        old.parse_error,
        old.footprint,
    )
    for token, url, fetch, _ in golden.checks(record, LONG_URLS):
        assert golden.verdict_of(new, token, url, fetch) == golden.verdict_of(
            old, token, url, fetch
        ), (token, url[:80], fetch)


@settings(max_examples=SIDE_BY_SIDE_EXAMPLES, deadline=None)
@given(golden.robots_cases())
def test_same_verdicts_on_generated_files(case: tuple[bytes, list[str], list[str]]) -> None:
    _agree(*case)


@settings(max_examples=SIDE_BY_SIDE_EXAMPLES, deadline=None)
@given(
    st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)),
    st.lists(st.text(max_size=12), max_size=3),
    st.lists(st.text(max_size=20), max_size=4),
)
def test_same_verdicts_on_arbitrary_bytes(body: bytes, tokens: list[str], urls: list[str]) -> None:
    _agree(body, tokens, urls)
