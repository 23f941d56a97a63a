"""`crawlguard dev` (issue 13): the local proxy for crawler developers, as a real subprocess.

No credentials, loopback only, one tenant with the developer's product token, local sites
allowed; one line per decision on stdout (coloured on a terminal only), a summary by kind
with the advice to fix each after SIGINT. And `crawlguard ca --export` hands out the CA a
client must trust for HTTPS through it.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests
import trustme
from harness import GOOD_UA, LocalOrigin, wait_for

from crawlguard.policy.decisions import ADVICE, Kind

READY = re.compile(r"crawlguard ready: proxy on 127\.0\.0\.1:(\d+),")
ANSI = "\x1b["


class Dev:
    """`crawlguard dev` as a subprocess: stdout to a file (piped) or to a pseudo-terminal."""

    def __init__(
        self, tmp: Path, *args: str, tty: bool = False, env: dict[str, str] | None = None
    ) -> None:
        self.tmp = tmp
        self.err_path = tmp / "dev.log"
        self._chunks: list[bytes] = []
        self._out_file: IO[bytes] | None = None
        self._reader: threading.Thread | None = None
        cmd = [sys.executable, "-m", "crawlguard", "dev", "--port", "0", "--admin-port", "0",
               *args]  # fmt: skip
        environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
        environ.update(env or {})
        err = self.err_path.open("wb")
        if tty:
            master, slave = pty.openpty()
            self.proc = subprocess.Popen(cmd, cwd=tmp, stdout=slave, stderr=err, env=environ)
            os.close(slave)
            self._reader = threading.Thread(target=self._read_pty, args=(master,), daemon=True)
            self._reader.start()
        else:
            self._out_file = (tmp / "dev.out").open("wb")
            self.proc = subprocess.Popen(
                cmd, cwd=tmp, stdout=self._out_file, stderr=err, env=environ
            )
        err.close()
        assert wait_for(lambda: READY.search(self.log()) or self.proc.poll() is not None, 60)
        m = READY.search(self.log())
        assert m is not None, self.log()
        self.url = f"http://127.0.0.1:{m.group(1)}"
        self.proxies = {"http": self.url, "https": self.url}

    def _read_pty(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            self._chunks.append(data)
        os.close(fd)

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def out(self) -> str:
        if self._out_file is not None:
            return (self.tmp / "dev.out").read_text(errors="replace")
        return b"".join(self._chunks).decode(errors="replace")

    def get(self, url: str, ua: str | None = GOOD_UA, **kw: Any) -> requests.Response:
        session = requests.Session()
        session.trust_env = False
        headers = {"User-Agent": ua} if ua is not None else {}
        return session.get(url, proxies=self.proxies, headers=headers, timeout=15, **kw)

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT, as a terminal sends it; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        if self._reader is not None:
            self._reader.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._out_file is not None:
            self._out_file.close()


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin(robots=b"User-agent: *\nDisallow: /private/\n")
    yield o
    o.close()


def dev(tmp: Path, *args: str, **kw: Any) -> Dev:
    return Dev(tmp, "--product-token", "AcmeBot", "--confdir", str(tmp / "ca"),
               "--store", str(tmp / "dev.db"), *args, **kw)  # fmt: skip


def line_for(out: str, needle: str) -> str:
    return next((line for line in out.splitlines() if needle in line), "")


def test_dev_prints_each_decision_and_a_summary_at_exit(tmp_path: Path, site: LocalOrigin):
    p = dev(tmp_path)
    try:
        r = p.get(site.url("/page"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (200, "allowed")
        r = p.get(site.url("/private/secret"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (403, "robots-disallow")
        r = p.get(site.url("/tool"), ua=requests.utils.default_user_agent())
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (403, "ua-generic")
        # proxy credentials are not needed, and not in the way either
        # (another name of the origin: dev keeps the platform's default site budget, 4/s)
        creds = {"http": p.url.replace("//", "//someone:anything@")}
        other = site.url("/with-creds").replace("127.0.0.1", "localhost")
        r = requests.get(other, proxies=creds, headers={"User-Agent": GOOD_UA}, timeout=15)
        assert r.headers["X-Crawlguard-Decision"] == "allowed"
        assert wait_for(lambda: "/with-creds" in p.out())

        out = p.out()
        allowed = line_for(out, site.url("/page"))
        assert re.search(rf"\ballowed +GET {re.escape(site.url('/page'))}$", allowed), out
        disallowed = line_for(out, site.url("/private/secret"))
        assert "blocked robots-disallow" in disallowed
        assert "rule: Disallow: /private/" in disallowed
        assert "blocked ua-generic" in line_for(out, site.url("/tool"))
        assert ANSI not in out  # piped: no colour
        assert "crawlguard dev: proxy " + p.url in out
        assert "crawlguard dev summary" not in out  # only at exit

        assert p.interrupt() == 0
    finally:
        p.close()
    out = p.out()
    summary = out[out.index("crawlguard dev summary") :]
    assert "4 request(s), 2 allowed, 2 violation(s)" in summary
    assert "robots-disallow: 1 blocked" in summary
    assert ADVICE[Kind.ROBOTS_DISALLOW] in summary
    assert f"first: GET {site.url('/private/secret')} (Disallow: /private/)" in summary
    assert "ua-generic: 1 blocked" in summary
    assert ADVICE[Kind.UA_GENERIC] in summary
    assert "docs/decisions.md" in summary
    assert site.paths() == ["/page", "/with-creds"]
    assert "crawlguard stopped" in p.log()


def test_dev_counts_the_site_budget_as_waiting_not_as_violations(tmp_path: Path, site: LocalOrigin):
    """Dev keeps the platform's default site budget (4/s): a burst is answered 429
    `site-budget`, which the summary counts as waiting for the platform, not as a violation."""
    p = dev(tmp_path)
    try:
        answers = [p.get(site.url(f"/burst{i}")).headers["X-Crawlguard-Decision"] for i in range(6)]
        assert "site-budget" in answers and "allowed" in answers
        assert wait_for(lambda: "waited site-budget" in p.out())
        assert p.interrupt() == 0
    finally:
        p.close()
    out = p.out()
    summary = out[out.index("crawlguard dev summary") :]
    assert "0 violation(s)" in summary and "no violations" in summary
    assert "waited: site-budget" in summary


def test_dev_monitor_mode_forwards_and_logs(tmp_path: Path, site: LocalOrigin):
    p = dev(tmp_path, "--mode", "monitor")
    try:
        r = p.get(site.url("/private/x"))
        assert r.status_code == 200
        assert r.headers["X-Crawlguard-Monitor"] == "robots-disallow"
        assert wait_for(lambda: "logged robots-disallow" in line_for(p.out(), "/private/x"))
        assert p.interrupt() == 0
    finally:
        p.close()
    assert "robots-disallow: 1 logged" in p.out()
    assert site.paths() == ["/private/x"]


def test_dev_delay_pacing_holds_and_says_so(tmp_path: Path):
    site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 1\n")
    p = dev(tmp_path, "--pacing", "delay")
    try:
        assert p.get(site.url("/one")).headers["X-Crawlguard-Decision"] == "allowed"
        r = p.get(site.url("/two"))
        assert r.status_code == 200 and "X-Crawlguard-Delayed" in r.headers
        assert wait_for(lambda: "/two" in p.out())
        assert re.search(r"held crawl-delay .*rule: Crawl-delay: 1  wait [\d.]+ s$",
                         line_for(p.out(), "/two"))  # fmt: skip
        assert p.interrupt() == 0
    finally:
        p.close()
        site.close()
    assert "2 request(s), 1 allowed, 0 violation(s), 1 held" in p.out()
    assert "no violations" in p.out()


def test_dev_summary_without_violations(tmp_path: Path, site: LocalOrigin):
    p = dev(tmp_path)
    try:
        assert p.get(site.url("/")).status_code == 200
        assert p.proc.send_signal(signal.SIGTERM) is None
        assert p.proc.wait(30) == 0
    finally:
        p.close()
    assert "1 request(s), 1 allowed, 0 violation(s)" in p.out()
    assert "no violations" in p.out()


@pytest.mark.parametrize("no_color", [None, "1"])
def test_dev_colours_decisions_on_a_terminal_only(
    tmp_path: Path, site: LocalOrigin, no_color: str | None
):
    p = dev(tmp_path, tty=True, env={"NO_COLOR": no_color} if no_color else None)
    try:
        p.get(site.url("/ok"))
        p.get(site.url("/private/no"))
        assert wait_for(lambda: "/private/no" in p.out())
        assert p.interrupt() == 0
    finally:
        p.close()
    out = p.out()
    ok, blocked = line_for(out, site.url("/ok")), line_for(out, site.url("/private/no"))
    if no_color:
        assert ANSI not in out
        assert "allowed" in ok and "blocked robots-disallow" in blocked
    else:
        assert "\x1b[32mallowed" in ok  # green
        assert "\x1b[31mblocked robots-disallow" in blocked  # red


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_dev_refuses_a_non_loopback_host(tmp_path: Path, host: str):
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "dev", "--product-token", "AcmeBot",
         "--host", host, "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"--host {host}: crawlguard dev listens on loopback only" in out.stderr
    assert not (tmp_path / "var").exists()  # nothing started, nothing created


@pytest.mark.parametrize(
    ("token", "problem"),
    [("curl", "HTTP library"), ("Googlebot", "well-known crawler"), ("Bot/1.0", "letters")],
)
def test_dev_validates_the_product_token_like_the_config(tmp_path: Path, token: str, problem: str):
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "dev", "--product-token", token],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"--product-token {token!r}: " in out.stderr and problem in out.stderr


def test_exported_ca_is_trusted_for_https_through_dev(
    tmp_path: Path, server_cert: trustme.LeafCert, ca_file: str
):
    """The default confdir (var/mitmproxy) is the CA `crawlguard ca` shows and exports; a
    client that trusts the exported PEM accepts the intercepted HTTPS answer."""
    tls_site = LocalOrigin(robots=b"User-agent: *\nDisallow: /private/\n", tls=server_cert)
    p = Dev(tmp_path, "--product-token", "AcmeBot", "--upstream-ca", ca_file)
    try:
        exported = tmp_path / "exported-ca.pem"
        subprocess.run(
            [sys.executable, "-m", "crawlguard", "ca", "--export", str(exported)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert exported.read_text().startswith("-----BEGIN CERTIFICATE-----")
        r = p.get(tls_site.url("/secure"), verify=str(exported))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (200, "allowed")
        assert r.text == "hello from origin\n"
        r = p.get(tls_site.url("/private/x"), verify=str(exported))
        assert r.headers["X-Crawlguard-Decision"] == "robots-disallow"
        assert tls_site.paths() == ["/secure"]
        # the site's own test CA is not what the client sees: crawlguard re-signed it
        with pytest.raises(requests.exceptions.SSLError):
            p.get(tls_site.url("/secure"), verify=ca_file)
        assert wait_for(lambda: "tls-failed" in p.out())
        assert "crawlguard ca --export" in line_for(p.out(), "tls-failed")
        assert "allowed" in line_for(p.out(), tls_site.url("/secure"))
    finally:
        p.close()
        tls_site.close()
    assert (tmp_path / "var" / "mitmproxy" / "mitmproxy-ca-cert.pem").read_bytes() == (
        exported.read_bytes()
    )


def test_dev_says_when_a_local_https_site_needs_upstream_ca(
    tmp_path: Path, server_cert: trustme.LeafCert
):
    tls_site = LocalOrigin(tls=server_cert)  # its CA is trusted by nobody here
    p = dev(tmp_path)
    try:
        r = p.get(tls_site.url("/"), verify=str(tmp_path / "ca" / "mitmproxy-ca-cert.pem"))
        # crawlguard verifies the site's certificate, for its robots.txt first
        assert r.headers["X-Crawlguard-Decision"] == "robots-unreachable"
        assert wait_for(lambda: "--upstream-ca FILE" in p.out())
        out = p.out()
        assert f"{tls_site.url('/robots.txt')}: " in out  # why the fetch failed
        assert "TLS certificate verification failed (certificate verify failed" in out
        assert tls_site.hits == []
    finally:
        p.close()
        tls_site.close()
