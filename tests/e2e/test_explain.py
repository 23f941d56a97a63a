"""`crawlguard explain`: the proxy's verdict on one URL, step by step (issue 13).

Live cases run the command as a subprocess against local origins, with the same config the
proxy would use, and the last test checks that explain and the running proxy agree on the
decision. The offline cases (`--robots-file`, in-process): tests/unit/test_explain_offline.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from harness import GOOD_UA, LocalOrigin, Proxy, Route, base_config

from crawlguard.cli import main

ROBOTS = """\
User-agent: *
Crawl-delay: 2
Disallow: /private/

User-agent: AcmeBot
Request-rate: 1/5
Disallow: /acme-only-no/
"""


def explain(*args: str) -> tuple[int, str]:
    """Run in-process, return (exit code, stdout)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["explain", *args])
    return code, out.getvalue()


# -- offline: --robots-file ----------------------------------------------------------------------


# -- with a config and a tenant ------------------------------------------------------------------


def write_config(tmp: Path, **sections: Any) -> Path:
    path = tmp / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp, **sections)))
    return path


# -- live: robots.txt fetched the way the proxy fetches it ------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "explain", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def https_site(test_ca: trustme.CA) -> Iterator[LocalOrigin]:
    o = LocalOrigin(robots=ROBOTS.encode(), tls=test_ca.issue_cert("127.0.0.1"))
    yield o
    o.close()


def test_live_fetch_reports_status_sha256_and_lifetime(
    https_site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, proxy={"upstream_ca_file": ca_file}, robots={"max_age": 3600, "fetch_timeout": 5}
    )
    done = run_cli(https_site.url("/private/a"), "--user-agent", "Other/1.0 (+https://o.example)",
                   "--config", str(cfg), "--json")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""  # piped: no progress line
    obj = json.loads(done.stdout)
    assert obj["decision"] == "robots-disallow"
    assert obj["rule"] == "Disallow: /private/"
    assert obj["destination"] == {"allowed": True, "checked": "port, addresses",
                                  "rule": None, "reason": None, "address": "127.0.0.1"}  # fmt: skip
    assert obj["fetch"] == {
        "url": f"{https_site.url('')}/robots.txt",
        "result": "ok",
        "status": 200,
        "detail": None,
        "available": True,
        "bytes": len(ROBOTS),
        "sha256": hashlib.sha256(ROBOTS.encode()).hexdigest(),
        "lifetime": 3600.0,
    }
    # fetched with the proxy's robots.user_agent, like the proxy does
    robots_hits = [h for h in https_site.hits if h.path == "/robots.txt"]
    assert [h.headers["User-Agent"] for h in robots_hits] == [
        "crawlguard-test/1.0 (+https://ops.example)"
    ]

    text = run_cli(https_site.url("/a"), "--user-agent", GOOD_UA, "--config", str(cfg))
    assert text.returncode == 0, text.stderr
    assert f"fetched {https_site.url('')}/robots.txt: HTTP 200, {len(ROBOTS)} bytes" in text.stdout
    assert "rules in force, trusted for 3600 s" in text.stdout


def test_upstream_ca_flag_trusts_a_local_sites_ca(
    https_site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    """Issue 21: without the CA the fetch fails and says why and what to set; `--upstream-ca`
    (over a config without proxy.upstream_ca_file) makes the same fetch succeed."""
    cfg = str(write_config(tmp_path, robots={"max_age": 3600, "fetch_timeout": 5}))
    url = https_site.url("/a")
    untrusted = run_cli(url, "--user-agent", GOOD_UA, "--config", cfg)
    assert untrusted.returncode == 1, untrusted.stderr
    assert "TLS certificate verification failed" in untrusted.stdout
    assert "proxy.upstream_ca_file" in untrusted.stdout and "--upstream-ca" in untrusted.stdout
    trusted = run_cli(url, "--user-agent", GOOD_UA, "--config", cfg, "--upstream-ca", ca_file)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert f"fetched {https_site.url('')}/robots.txt: HTTP 200" in trusted.stdout
    missing = run_cli(url, "--user-agent", GOOD_UA, "--upstream-ca", str(tmp_path / "no.pem"))
    assert missing.returncode == 2 and "--upstream-ca" in missing.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bad = run_cli(url, "--user-agent", GOOD_UA, "--upstream-ca", str(junk))
    assert bad.returncode == 2 and "--upstream-ca: cannot load" in bad.stderr, bad.stderr


def test_live_caching_headers_shorten_the_lifetime(tmp_path: Path) -> None:
    site = LocalOrigin(robots=None)
    site.routes["/robots.txt"] = Route(body=b"User-agent: *\nAllow: /\n",
                                       headers={"Cache-Control": "max-age=300"})  # fmt: skip
    try:
        done = run_cli(site.url("/"), "--user-agent", GOOD_UA,
                       "--config", str(write_config(tmp_path)), "--json")  # fmt: skip
    finally:
        site.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fetch"]["lifetime"] == 300.0


@pytest.mark.parametrize(
    ("status", "code", "decision", "result"),
    [(404, 0, "allowed", "4xx"), (503, 1, "robots-unreachable", "5xx")],
)
def test_live_fetch_failures_follow_rfc_9309(
    status: int, code: int, decision: str, result: str, tmp_path: Path
) -> None:
    site = LocalOrigin(robots=None)
    site.routes["/robots.txt"] = Route(status=status, body=b"no\n")
    try:
        done = run_cli(site.url("/page"), "--user-agent", GOOD_UA,
                       "--config", str(write_config(tmp_path)), "--json")  # fmt: skip
    finally:
        site.close()
    assert done.returncode == code, done.stderr
    obj = json.loads(done.stdout)
    assert obj["decision"] == decision
    assert (obj["fetch"]["result"], obj["fetch"]["status"]) == (result, status)
    if status == 503:
        assert obj["fetch"]["available"] is False
        assert obj["fetch"]["lifetime"] == 30.0  # the proxy's first retry back-off
        assert "complete disallow" in obj["reason"]


def test_default_policy_refuses_loopback_without_fetching(
    origin: LocalOrigin, tmp_path: Path
) -> None:
    """Without --config: the defaults of a production proxy (allow_private false, ports 80,
    443, 8000-8999); nothing is fetched from a refused destination."""
    done = run_cli(origin.url("/"), "--user-agent", GOOD_UA, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["decision"] == "destination-forbidden"
    cfg = write_config(tmp_path, destinations={"allow_private": False})  # every port allowed
    done = run_cli(origin.url("/"), "--user-agent", GOOD_UA, "--config", str(cfg))
    assert done.returncode == 1
    assert "FORBIDDEN: 127.0.0.1 is a loopback address" in done.stdout
    assert "destinations.allow_private: true" in done.stdout  # the hint for local sites
    assert origin.hits == []


def test_progress_line_only_on_a_terminal(origin: LocalOrigin, tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "crawlguard", "explain", origin.url("/"),
             "--user-agent", GOOD_UA, "--config", cfg],
            stdout=subprocess.PIPE, stderr=follower, text=True, timeout=60,
        )  # fmt: skip
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the writer side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert f"fetching {origin.url('')}/robots.txt".encode() in seen
    assert seen.endswith(b"\r\x1b[K")  # and the line is wiped before the answer
    assert "fetching" not in done.stdout


# -- explain agrees with the running proxy ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ua"),
    [
        ("/page", GOOD_UA),
        ("/private/x", GOOD_UA),
        ("/page", "curl/8.5.0"),
        ("/page", "GlobexCrawler/1.0 (+https://globex.example)"),
        ("/page", "AcmeBot (+https://acme.example/bot)"),
    ],
)
def test_explain_matches_the_proxy(path: str, ua: str, proxy: Proxy, test_ca: trustme.CA) -> None:
    site = LocalOrigin(robots=b"User-agent: *\nDisallow: /private/\n",
                       tls=test_ca.issue_cert("127.0.0.1"))  # fmt: skip
    try:
        answer = proxy.get(site.url(path), ua=ua)
        done = run_cli(site.url(path), "--user-agent", ua, "--json",
                       "--config", str(proxy.config_path), "--tenant", "acme")  # fmt: skip
    finally:
        site.close()
    obj = json.loads(done.stdout)
    assert obj["decision"] == answer.headers["X-Crawlguard-Decision"]
    assert done.returncode == (0 if answer.status_code == 200 else 1)
