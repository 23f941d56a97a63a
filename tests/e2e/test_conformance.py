"""Google's robotstxt verdict suite, run through the real `crawlguard check --cases` CLI.

All 72 RFC cases pass. ID_Encoding/03 and /05 follow Google's matcher: a URL handed to the
checker is taken as already encoded, so a raw UTF-8 URL matches no encoded rule. The proxy
canonicalises request targets (`identity.canonical_path`) before matching, so on the wire a
raw UTF-8 path cannot dodge a rule. ID_Encoding/06 passes because a URL is allowed only if
both the RFC 9309 §2.2.2 reading (escapes of unreserved characters decoded) and the
as-written one allow it; see tests/unit/test_robots_rules.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parents[1] / "data/conformance/google_robotstxt_cases.json"

RFC_DIFFERENCES: dict[str, str] = {}
GOOGLE_DIFFERENCES = {
    "GoogleOnly_AcceptUserAgentUpToFirstSpace/02": "the CLI reads 'Foo Bar' as a UA whose "
    "product token is Foo, so the 'Foo Bar' group applies",
    "GoogleOnly_LineTooLong/02": "no 16,664-byte line cut-off: the long pattern stays whole",
    "GoogleOnly_LineTooLong/05": "no 16,664-byte line cut-off: the long pattern stays whole",
}


@pytest.fixture(scope="module")
def results() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    cases = json.loads(CASES.read_text(encoding="utf-8"))
    stdin = "".join(
        json.dumps({"robots": c["robots"], "user_agent": c["agent"], "url": c["url"]}) + "\n"
        for c in cases
    )
    proc = subprocess.run(
        [sys.executable, "-m", "crawlguard", "check", "--cases", "-"],
        input=stdin.encode(),
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(cases) == 145
    outputs = [json.loads(line) for line in lines]
    for out in outputs:
        assert set(out) == {"allowed", "crawl_delay", "rule"}
    return list(zip(cases, outputs, strict=True))


def _failures(results: list[tuple[dict[str, Any], dict[str, Any]]], google: bool) -> set[str]:
    return {
        case["name"]
        for case, out in results
        if case["google_specific"] is google and out["allowed"] is not case["allowed"]
    }


def test_rfc_cases(results: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    total = sum(1 for case, _ in results if not case["google_specific"])
    failing = _failures(results, google=False)
    assert total == 72
    assert failing == set(RFC_DIFFERENCES)
    assert total - len(failing) == 72


def test_google_specific_cases(results: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    total = sum(1 for case, _ in results if case["google_specific"])
    failing = _failures(results, google=True)
    assert total == 73
    assert failing == set(GOOGLE_DIFFERENCES)
    assert total - len(failing) == 70


def test_disallowed_verdicts_name_a_rule(
    results: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    for case, out in results:
        if not out["allowed"]:
            assert out["rule"] and out["rule"] in case["robots"], case["name"]
