"""`crawlguard check` as a subprocess: batch mode over stdin and from a file, a robots file from
stdin, the progress line on a terminal only. In-process runs of the same command:
tests/unit/test_check_cli.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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


SCRAPY_UA = "Scrapy/2.11 (+https://scrapy.org) AcmeBot/1.0 (+https://acme.example/bot)"


def test_cases_match_with_the_proxys_token() -> None:
    lines = [
        {"robots": ROBOTS, "user_agent": SCRAPY_UA, "url": "/private/x"},
        {"robots": ROBOTS, "user_agent": SCRAPY_UA, "url": "/a"},
        {"robots": ROBOTS, "user_agent": "Scrapy/2.11 (+https://scrapy.org)", "url": "/a"},
    ]
    proc = _run(["--cases", "-"], "".join(json.dumps(x) + "\n" for x in lines))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x) for x in proc.stdout.splitlines()] == [
        {"allowed": False, "crawl_delay": 2.5, "rule": "Disallow: /private/"},
        {"allowed": True, "crawl_delay": 2.5, "rule": None},
        {"allowed": False, "crawl_delay": None, "rule": "Disallow: /"},  # Scrapy alone: `*`
    ]


def _run(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "check", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )


def test_cases_from_stdin_keep_order() -> None:
    lines = [
        {"robots": ROBOTS, "user_agent": UA, "url": "/private/x"},
        {"robots": ROBOTS, "user_agent": UA, "url": "/a"},
        {"robots": "", "user_agent": "", "url": ""},
        {"robots": ROBOTS, "user_agent": "Other/1", "url": "https://h.example/a"},
    ]
    proc = _run(["--cases", "-"], "".join(json.dumps(x) + "\n" for x in lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x) for x in proc.stdout.splitlines()] == [
        {"allowed": False, "crawl_delay": 2.5, "rule": "Disallow: /private/"},
        {"allowed": True, "crawl_delay": 2.5, "rule": None},
        {"allowed": True, "crawl_delay": None, "rule": None},
        {"allowed": False, "crawl_delay": None, "rule": "Disallow: /"},
    ]


def test_cases_from_file(tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"robots": ROBOTS, "user_agent": UA, "url": "/private/ok"}))
    proc = _run(["--cases", str(cases)], "")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "allowed": True,
        "crawl_delay": 2.5,
        "rule": "Allow: /private/ok",
    }


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[1, 2]",
        json.dumps({"robots": ROBOTS, "user_agent": UA}),
        json.dumps({"robots": 1, "user_agent": UA, "url": "/"}),
    ],
)
def test_bad_case_line_exits_2_without_output(bad: str) -> None:
    good = json.dumps({"robots": ROBOTS, "user_agent": UA, "url": "/"})
    proc = _run(["--cases", "-"], f"{good}\n{bad}\n")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "line 2" in proc.stderr


def test_robots_file_from_stdin() -> None:
    proc = _run(["--robots-file", "-", "--user-agent", UA, "/private/x"], ROBOTS)
    assert proc.returncode == 1
    assert proc.stdout.startswith("disallowed\t/private/x\t")


def test_cases_show_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """A long --cases batch counts on a TTY's stderr; piped, stderr stays empty."""
    import os
    import pty

    cases = tmp_path / "cases.jsonl"
    line = {"robots": "User-agent: *\nDisallow: /x", "user_agent": "AcmeBot", "url": "/x"}
    cases.write_text("\n".join(json.dumps(line) for _ in range(50)) + "\n")
    cmd = [sys.executable, "-m", "crawlguard", "check", "--cases", str(cases)]

    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr == ""
    assert len(piped.stdout.splitlines()) == 50

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=60)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 50
    assert b"checking cases 50/50" in shown
