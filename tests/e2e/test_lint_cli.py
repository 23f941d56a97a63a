"""`crawlguard lint-ua`: exit codes and output, through the real entry point (a subprocess).
In-process cases: tests/unit/test_lint_cli_inprocess.py."""

from __future__ import annotations

import json
import subprocess
import sys


def lint_ua(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "lint-ua", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_passes_exit_0() -> None:
    done = lint_ua("AcmeBot/1.0 (+https://acme.example/bot)", "--product-token", "AcmeBot")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("PASS")
    assert "ok:AcmeBot" in done.stdout


def test_fails_exit_1_with_why_and_how() -> None:
    done = lint_ua("python-requests/2.31.0")
    assert done.returncode == 1, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("FAIL") and "ua-generic" in first and "generic:python-requests" in first
    body = "\n".join(rest)
    assert "python-requests" in body  # why not
    assert "How to comply" in body and "product token" in body  # how to comply


def test_json_output() -> None:
    done = lint_ua("OtherBot/1.0 (+https://other.example)", "--product-token", "AcmeBot", "--json")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["pass"] is False
    assert result["kind"] == "ua-mismatch"
    assert result["rule"] == "mismatch"
    assert "AcmeBot" in result["reason"]
    assert result["advice"]


def test_look_alike_says_which_characters_are_not_ascii() -> None:
    """The issue's reproduction, through the real entry point: the Kelvin sign is no K."""
    done = lint_ua("\u212aiteBot/1.0 (+https://kite.example/bot)", "--product-token", "KiteBot")
    assert done.returncode == 1, done.stderr
    first, reason, *_ = done.stdout.splitlines()
    assert first == "FAIL ua-impersonation (impersonation:lookalike:KiteBot)"
    assert "'\\u212aiteBot'" in reason and "KiteBot" in reason
