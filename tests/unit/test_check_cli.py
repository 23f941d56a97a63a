"""`crawlguard check` in-process: exit codes, text and JSON output. Batch mode over stdin, as a
subprocess: tests/e2e/test_check_cli_subprocess.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crawlguard.cli import main
from crawlguard.policy.robots import RobotsRules
from crawlguard.policy.ua import UserAgentPolicy, product_token_of

ROBOTS = """\
User-agent: *
Disallow: /

User-agent: AcmeBot
Crawl-delay: 2.5
Request-rate: 1/5
Disallow: /private/
Allow: /private/ok
"""
UA = "Mozilla/5.0 (compatible; AcmeBot/1.2; +https://acme.example/bot)"


@pytest.fixture
def robots(tmp_path: Path) -> Path:
    path = tmp_path / "robots.txt"
    path.write_text(ROBOTS)
    return path


def test_all_allowed_exits_0(robots: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--robots-file", str(robots), "--user-agent", UA, "/a", "/private/ok"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [
        "allowed\t/a\trule: (none matched)\tgroup: acmebot\tcrawl-delay: 2.5s\trequest-rate: 1/5s",
        "allowed\t/private/ok\trule: Allow: /private/ok\tgroup: acmebot\tcrawl-delay: 2.5s"
        "\trequest-rate: 1/5s",
    ]


def test_any_disallowed_exits_1(robots: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["check", "--robots-file", str(robots), "--user-agent", UA, "/a", "https://h/private/x"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[1].startswith("disallowed\thttps://h/private/x\trule: Disallow: /private/\t")


def test_json_output(robots: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--json", "--robots-file", str(robots), "--user-agent", "Other/1", "/x"])
    (line,) = capsys.readouterr().out.splitlines()
    obj = json.loads(line)
    assert code == 1
    assert obj["url"] == "/x"
    assert obj["allowed"] is False
    assert obj["rule"] == "Disallow: /"
    assert obj["group"] == ["*"]  # fallback
    assert obj["crawl_delay"] is None
    assert obj["request_rate"] is None
    assert obj["product_token"] == "Other"
    assert len(obj["robots_sha256"]) == 64


def test_json_output_with_delay(robots: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["check", "--json", "--robots-file", str(robots), "--user-agent", UA, "/a"])
    obj = json.loads(capsys.readouterr().out)
    assert (obj["crawl_delay"], obj["request_rate"], obj["product_token"], obj["group"]) == (
        2.5,
        [1, 5.0],
        "AcmeBot",
        ["acmebot"],
    )


MERGED = """\
User-agent: ExampleBot
Disallow: /a

User-agent: *
Disallow: /b

user-agent: examplebot
Disallow: /c
"""


@pytest.mark.parametrize(
    ("robots_txt", "user_agent", "group"),
    [
        (ROBOTS, UA, "acmebot"),
        (ROBOTS, "Other/1.0 (+https://other.example)", "*"),
        ("", UA, "(none)"),
        ("Disallow: /x\n", UA, "(none)"),  # rules outside any group
    ],
)
def test_text_output_names_the_group(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    robots_txt: str,
    user_agent: str,
    group: str,
) -> None:
    path = tmp_path / "robots.txt"
    path.write_text(robots_txt)
    main(["check", "--robots-file", str(path), "--user-agent", user_agent, "/z"])
    (line,) = capsys.readouterr().out.splitlines()
    assert f"\tgroup: {group}\t" in line


def test_group_is_the_verdicts_merged_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output shows exactly the agents robots.py reports for the applied (merged) selection."""
    path = tmp_path / "robots.txt"
    path.write_text(MERGED)
    ua = "ExampleBot/1.0 (+https://example.org/bot)"
    main(["check", "--json", "--robots-file", str(path), "--user-agent", ua, "/a", "/b", "/c"])
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    verdict = RobotsRules.parse(MERGED.encode()).decide("ExampleBot", "/c")
    assert verdict.agents and "examplebot" in verdict.agents
    assert [o["group"] for o in objs] == [list(verdict.agents)] * 3
    assert [o["allowed"] for o in objs] == [False, True, False]  # both ExampleBot groups merged
    main(["check", "--robots-file", str(path), "--user-agent", ua, "/a"])
    assert f"\tgroup: {', '.join(verdict.agents)}\t" in capsys.readouterr().out


SCRAPY_UA = "Scrapy/2.11 (+https://scrapy.org) AcmeBot/1.0 (+https://acme.example/bot)"


def test_check_matches_with_the_proxys_token(
    robots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library name beside the crawler's token: check and proxy both match AcmeBot's group."""
    proxy = UserAgentPolicy(["AcmeBot"]).evaluate(SCRAPY_UA)
    assert proxy.allowed and proxy.token == "AcmeBot" == product_token_of(SCRAPY_UA)
    code = main(["check", "--json", "--robots-file", str(robots), "--user-agent", SCRAPY_UA, "/a"])
    obj = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (obj["product_token"], obj["group"], obj["crawl_delay"]) == (
        "AcmeBot",
        ["acmebot"],
        2.5,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--robots-file", "/nonexistent/robots.txt", "--user-agent", UA, "/"],
        ["check", "--user-agent", UA, "/"],
        ["check", "--robots-file", "ROBOTS", "/"],
        ["check", "--robots-file", "ROBOTS", "--user-agent", UA],
        ["check", "--robots-file", "ROBOTS", "--user-agent", "1234", "/"],
        ["check", "--cases", "-", "--user-agent", UA],
        ["check", "--cases", "/nonexistent/cases.jsonl"],
    ],
)
def test_bad_input_exits_2(
    argv: list[str], robots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(robots) if a == "ROBOTS" else a for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error" in captured.err


def test_missing_everything_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "--no-such-flag"])
    assert exc.value.code == 2
