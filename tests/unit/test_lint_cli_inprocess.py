"""`crawlguard lint-ua` in-process through `crawlguard.cli.main`: exit codes and output. The same
through the real entry point (a subprocess): tests/e2e/test_lint_cli.py.
"""

from __future__ import annotations

import json

import pytest

from crawlguard.cli import main


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
