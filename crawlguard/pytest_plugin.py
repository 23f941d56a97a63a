"""pytest plugin: test a crawler against a real crawlguard (`crawlguard dev`).

Installed with crawlguard (entry point ``pytest11: crawlguard``), so a crawler's own test
suite only names the fixture::

    def test_polite(crawlguard_proxy):
        run_my_crawler(proxy=crawlguard_proxy.url, ca=crawlguard_proxy.ca_path)
        assert not crawlguard_proxy.violations

Settings (a flag wins over the ini key):

* ``crawlguard_product_token`` / ``--crawlguard-product-token``: the crawler's product token
  (required; several may be given, separated by commas or spaces);
* ``crawlguard_mode`` / ``--crawlguard-mode``: ``enforce`` (default) or ``monitor``;
* ``crawlguard_upstream_ca`` / ``--crawlguard-upstream-ca``: a CA file (PEM) the proxy trusts
  for local HTTPS test sites that have their own CA.

Fixtures: ``crawlguard_proxy`` (a fresh proxy per test: its own violation store and pacing
state) and ``crawlguard_session_proxy`` (one for the whole session, cheaper; its violations
accumulate across tests, `reset()` hides the ones so far).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MODES = ("enforce", "monitor")
READY = re.compile(r"crawlguard ready: proxy on (\S+):(\d+),")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

TOKEN_HELP = (
    "crawlguard_proxy needs your crawler's product token (the name in its user agent): set "
    "`crawlguard_product_token = MyBot` in pytest's ini configuration (pytest.ini [pytest], "
    "pyproject.toml [tool.pytest.ini_options], tox.ini or setup.cfg), or run pytest with "
    "--crawlguard-product-token MyBot"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("crawlguard", "crawlguard proxy for crawler tests")
    group.addoption(
        "--crawlguard-product-token",
        metavar="TOKEN",
        help="the crawler's product token for the crawlguard_proxy fixture "
        "(overrides the crawlguard_product_token ini key)",
    )
    group.addoption(
        "--crawlguard-mode",
        choices=MODES,
        help="crawlguard_proxy mode: enforce (default) or monitor",
    )
    group.addoption(
        "--crawlguard-upstream-ca",
        metavar="FILE",
        help="CA file (PEM) the proxy trusts for local HTTPS test sites",
    )
    parser.addini(
        "crawlguard_product_token",
        "the crawler's product token(s) for the crawlguard_proxy fixture",
        default="",
    )
    parser.addini("crawlguard_mode", "crawlguard_proxy mode: enforce or monitor", default="")
    parser.addini(
        "crawlguard_upstream_ca", "CA file the proxy trusts for local HTTPS sites", default=""
    )


def _setting(config: pytest.Config, name: str) -> str:
    value = config.getoption(f"crawlguard_{name}", None)
    if value:
        return str(value)
    return str(config.getini(f"crawlguard_{name}") or "").strip()


class CrawlguardProxy:
    """A `crawlguard dev` subprocess: one tenant (`dev`), no credentials, loopback only."""

    def __init__(
        self,
        workdir: Path,
        product_tokens: list[str],
        *,
        mode: str = "enforce",
        confdir: Path | None = None,
        upstream_ca: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.product_tokens = product_tokens
        self.mode = mode
        self.confdir = Path(confdir) if confdir is not None else self.workdir / "ca"
        self.upstream_ca = upstream_ca
        self.store_path = self.workdir / "violations.db"
        self.ca_path = self.confdir / "mitmproxy-ca-cert.pem"
        self.port = 0
        self.url = ""
        self._since: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out_path = self.workdir / "crawlguard-dev.out"
        self._err_path = self.workdir / "crawlguard-dev.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> CrawlguardProxy:
        cmd = [sys.executable, "-m", "crawlguard", "dev", "--mode", self.mode,
               "--port", "0", "--admin-port", "0", "--confdir", str(self.confdir),
               "--store", str(self.store_path)]  # fmt: skip
        for token in self.product_tokens:
            cmd += ["--product-token", token]
        if self.upstream_ca:
            cmd += ["--upstream-ca", str(self.upstream_ca)]
        # The proxy's own outbound traffic never goes through the tester's proxy settings.
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["NO_COLOR"] = "1"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._out_path.open("wb") as out, self._err_path.open("wb") as err:
            self._proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (m := READY.search(self.log)) is not None:
                host = m.group(1)
                self.port = int(m.group(2))
                self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
                return self
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"crawlguard dev exited with code {self._proc.returncode} before it was "
                    f"ready:\n{self.log}{self.output}"
                )
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"crawlguard dev was not ready within {timeout:g} s:\n{self.log}")

    def stop(self) -> int | None:
        """SIGINT (as Ctrl-C: the summary is printed to `output`); the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __repr__(self) -> str:
        tokens = ",".join(self.product_tokens)
        return f"<CrawlguardProxy {self.url or '(not started)'} {self.mode} {tokens}>"

    def __enter__(self) -> CrawlguardProxy:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use ----------------------------------------------------------------------

    @property
    def proxies(self) -> dict[str, str]:
        """For requests: ``requests.get(url, proxies=p.proxies, verify=str(p.ca_path))``."""
        return {"http": self.url, "https": self.url}

    @property
    def env(self) -> dict[str, str]:
        """Environment for a crawler that reads its proxy and CA from it (both spellings of
        the proxy variables, and NO_PROXY emptied, so nothing routes around the proxy)."""
        ca = str(self.ca_path)
        return {
            "HTTP_PROXY": self.url,
            "HTTPS_PROXY": self.url,
            "http_proxy": self.url,
            "https_proxy": self.url,
            "NO_PROXY": "",
            "no_proxy": "",
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
            "CURL_CA_BUNDLE": ca,
        }

    @property
    def violations(self) -> list[dict[str, Any]]:
        """This proxy's violation records so far, oldest first, read from its store on every
        access. A record is stored before the proxy answers the request it is about."""
        from crawlguard.store import SQLiteStore

        if not self.store_path.exists():
            return []
        store = SQLiteStore(str(self.store_path))
        try:
            records = store.query(since=self._since)
        finally:
            store.close()
        return [rec.to_dict() for rec in reversed(records)]

    def kinds(self) -> list[str]:
        """The `kind` of each violation, oldest first."""
        return [v["kind"] for v in self.violations]

    def reset(self) -> None:
        """Hide the violations recorded so far (for a proxy shared by several tests)."""
        from crawlguard.policy.records import utc_now_iso

        self._since = utc_now_iso()

    @property
    def output(self) -> str:
        """What `crawlguard dev` printed: one line per decision, and the summary once stopped."""
        try:
            return self._out_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def log(self) -> str:
        try:
            return self._err_path.read_text(errors="replace")
        except OSError:
            return ""


def _proxy(request: pytest.FixtureRequest, workdir: Path, confdir: Path) -> CrawlguardProxy:
    config = request.config
    tokens = [t for t in re.split(r"[,\s]+", _setting(config, "product_token")) if t]
    if not tokens:
        pytest.fail(TOKEN_HELP, pytrace=False)
    mode = _setting(config, "mode") or "enforce"
    if mode not in MODES:
        pytest.fail(f"crawlguard_mode = {mode!r}: must be enforce or monitor", pytrace=False)
    upstream = _setting(config, "upstream_ca") or None
    proxy = CrawlguardProxy(workdir, tokens, mode=mode, confdir=confdir, upstream_ca=upstream)
    try:
        proxy.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return proxy


def _finish(proxy: CrawlguardProxy) -> None:
    proxy.stop()
    # Shown by pytest with a failing test ("Captured stdout teardown"): every decision, and
    # the summary of the violations with how to fix each.
    print(proxy.output, end="")


@pytest.fixture(scope="session")
def crawlguard_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crawlguard's CA for this session's proxies (created by the first one that starts)."""
    return tmp_path_factory.mktemp("crawlguard-ca")


@pytest.fixture
def crawlguard_proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    crawlguard_ca_dir: Path,
) -> Iterator[CrawlguardProxy]:
    """A fresh `crawlguard dev` proxy for this test; `.violations` are this test's only."""
    proxy = _proxy(request, tmp_path_factory.mktemp("crawlguard"), crawlguard_ca_dir)
    yield proxy
    _finish(proxy)


@pytest.fixture(scope="session")
def crawlguard_session_proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    crawlguard_ca_dir: Path,
) -> Iterator[CrawlguardProxy]:
    """One `crawlguard dev` proxy for the session: violations and pacing state accumulate
    across tests (call `.reset()` to hide the violations so far)."""
    proxy = _proxy(request, tmp_path_factory.mktemp("crawlguard-session"), crawlguard_ca_dir)
    yield proxy
    _finish(proxy)


__all__ = ["CrawlguardProxy"]
