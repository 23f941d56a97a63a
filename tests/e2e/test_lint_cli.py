"""`crawlguard lint-ua`: exit codes and output, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crawlguard.cli import main


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


@pytest.mark.parametrize(
    ("argv", "code", "kind"),
    [
        (["Googlebot/2.1 (+http://www.google.com/bot.html)"], 1, "ua-impersonation"),
        ([""], 1, "ua-missing"),
        (["AcmeBot/1.0"], 1, "ua-undescriptive"),
        (["Mozilla/5.0 (compatible; AcmeBot/2.1; +https://acme.example/bot)"], 0, "allowed"),
        (
            [
                "AcmeBot/1.0 (+https://a.example)",
                "--product-token",
                "OtherBot",
                "--product-token",
                "AcmeBot",
            ],
            0,
            "allowed",
        ),
        # a crawler named in the contact, a look-alike of the own token: both claims
        (
            ["AcmeBot/1.0 (+https://acme.example/Googlebot/2.1)", "--product-token", "AcmeBot"],
            1,
            "ua-impersonation",
        ),
        (["AcmeBot/1.0 (googlebot@acme.example)"], 1, "ua-impersonation"),
        (
            ["\u212aiteBot/1.0 (+https://kite.example)", "--product-token", "KiteBot"],
            1,
            "ua-impersonation",
        ),
        (
            ["AcmeBot/1.0 (+https://b\u00fccher.example)", "--product-token", "AcmeBot"],
            0,
            "allowed",
        ),
    ],
)
def test_in_process(
    argv: list[str], code: int, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lint-ua", *argv, "--json"]) == code
    assert json.loads(capsys.readouterr().out)["kind"] == kind


def test_bad_product_token_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint-ua", "Googlebot/2.1", "--product-token", "Googlebot"]) == 2
    assert "Googlebot" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "token"),
    [
        (["Scrapy/2.11 (+https://scrapy.org) AcmeBot/1.0 (+https://acme.example/bot)"], "AcmeBot"),
        (["acmebot/1.0 (+https://acme.example/bot)", "--product-token", "AcmeBot"], "AcmeBot"),
        (["AcmeBot/1.0", "--product-token", "AcmeBot"], None),  # refused: no robots.txt match
    ],
)
def test_json_names_the_robots_token(
    argv: list[str], token: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["lint-ua", *argv, "--json"])
    assert json.loads(capsys.readouterr().out)["robots_token"] == token


def test_lowercase_googlebot_is_impersonation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint-ua", "googlebot/2.1 (+http://www.google.com/bot.html)", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["kind"], result["rule"]) == ("ua-impersonation", "impersonation:Googlebot")


def test_look_alike_says_which_characters_are_not_ascii() -> None:
    """The issue's reproduction, through the real entry point: the Kelvin sign is no K."""
    done = lint_ua("\u212aiteBot/1.0 (+https://kite.example/bot)", "--product-token", "KiteBot")
    assert done.returncode == 1, done.stderr
    first, reason, *_ = done.stdout.splitlines()
    assert first == "FAIL ua-impersonation (impersonation:lookalike:KiteBot)"
    assert "'\\u212aiteBot'" in reason and "KiteBot" in reason
