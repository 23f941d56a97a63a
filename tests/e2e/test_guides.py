"""The crawler-developer guides in docs/crawlers/ (issue 13): their examples run, and what they
claim holds.

Every guide shows its example file verbatim (tests/unit/test_guides_text.py), and every
example runs unchanged against a local HTTPS site through the real proxy, configured only by
CRAWLGUARD_PROXY, CRAWLGUARD_CA and CRAWLGUARD_URL. The examples run in a hostile environment
(proxy and CA variables pointing elsewhere), which is what the guides tell crawlers to be
immune to. The pitfalls the guides describe (REQUESTS_CA_BUNDLE beating Session.verify, an exported
http_proxy catching curl's request to the admin port, Chromium ignoring CA files) are shown
to be real, so the advice stays true.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness import LocalOrigin, Proxy, Route, base_config, free_port, sha256_hex, tenant

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "crawlers"
EXAMPLES = DOCS / "examples"
UA_TOKEN = "DemoBot"
DEAD = f"http://127.0.0.1:{free_port()}"  # a proxy nobody listens on

INDEX = b'<html><body><a href="/a">a</a> <a href="/private/x">private</a></body></html>'


@pytest.fixture(scope="module")
def site(test_ca: trustme.CA) -> Iterator[LocalOrigin]:
    o = LocalOrigin(
        robots=b"User-agent: *\nDisallow: /private\n",
        tls=test_ca.issue_cert("127.0.0.1", "localhost"),
    )
    html = {"Content-Type": "text/html; charset=utf-8"}
    o.routes["/"] = Route(body=INDEX, headers=html)
    o.routes["/a"] = Route(body=b"<html><body>page a</body></html>", headers=html)
    yield o
    o.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, ca_file: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("guides")
    demo = {**tenant("demo", [UA_TOKEN]), "token_sha256": sha256_hex("demo-token")}
    cfg = base_config(tmp, proxy={"upstream_ca_file": ca_file}, tenants=[demo])
    p = Proxy(cfg, tmp)
    yield p
    p.stop()


def example_env(proxy: Proxy, site: LocalOrigin, ca_file: str, **extra: str) -> dict[str, str]:
    """What a guide tells the reader to set, in an environment that tries to mislead."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    hostile = {name: DEAD for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    hostile |= {name.lower(): DEAD for name in hostile}
    hostile |= {name: ca_file for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")}
    return {
        **env,
        **hostile,  # the test CA signs the site, not crawlguard's certificates
        "CRAWLGUARD_PROXY": f"http://demo:demo-token@127.0.0.1:{proxy.port}",
        "CRAWLGUARD_CA": proxy.ca_file,
        "CRAWLGUARD_URL": site.url("/"),
        **extra,
    }


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=90)


def hits_since(site: LocalOrigin, before: int) -> list[tuple[str, str]]:
    return [(h.path, h.headers.get("User-Agent", "")) for h in site.hits[before:]]


# -- the guides show their example files verbatim ----------------------------------------------


# -- the examples, unchanged, through the real proxy ---------------------------------------------


@pytest.mark.parametrize("name", ["requests_example.py", "httpx_example.py", "aiohttp_example.py"])
def test_client_example_fetches_through_the_proxy(
    name: str, proxy: Proxy, site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    importlib.import_module(name.removesuffix("_example.py"))  # a dev dependency: fails if absent
    before = len(site.hits)
    done = run([sys.executable, str(EXAMPLES / name)], example_env(proxy, site, ca_file), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "200 allowed", done.stdout
    assert ("/", "DemoBot/1.0 (+https://demo.example/bot)") in hits_since(site, before)


def test_scrapy_example_crawls_through_the_proxy(
    proxy: Proxy, site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    before = len(site.hits)
    cmd = [sys.executable, "-m", "scrapy", "runspider", str(EXAMPLES / "scrapy_example.py"),
           # the example's delay is for real sites; this one asks for none
           "-s", "DOWNLOAD_DELAY=0.2", "-s", "TELNETCONSOLE_ENABLED=False"]  # fmt: skip
    done = run(cmd, example_env(proxy, site, ca_file), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done.stdout.splitlines()) == ["200 allowed", "200 allowed"], done.stderr[-3000:]
    seen = hits_since(site, before)
    # robots.txt was obeyed (no /private/x), and Scrapy's own robots.txt request went
    # through crawlguard too: the environment's proxy is dead, so only CRAWLGUARD_PROXY
    # (set by the middleware) can have carried it. TLS was verified all along.
    assert sorted(path for path, _ in seen if path != "/robots.txt") == ["/", "/a"]
    assert ("/robots.txt", "DemoBot/1.0 (+https://demo.example/bot)") in seen
    assert "certificate verify failed" not in done.stderr
    assert "RANDOMIZE_DOWNLOAD_DELAY setting is deprecated" not in done.stderr  # Scrapy 2.19


def test_scrapy_example_verifies_crawlguards_certificate(
    proxy: Proxy, site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    """The example's TLS set-up is not decoration: with another CA, Scrapy refuses."""
    cmd = [sys.executable, "-m", "scrapy", "runspider", str(EXAMPLES / "scrapy_example.py"),
           "-s", "DOWNLOAD_DELAY=0.2", "-s", "TELNETCONSOLE_ENABLED=False",
           "-s", "RETRY_ENABLED=False"]  # fmt: skip
    done = run(cmd, example_env(proxy, site, ca_file, CRAWLGUARD_CA=ca_file), tmp_path)
    assert "certificate verify failed" in done.stderr
    assert "200 allowed" not in done.stdout


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail("the Playwright guide's test needs Debian's chromium: apt-get install chromium")
    return path


@pytest.mark.parametrize("trust", ["spki", "nss"])
def test_playwright_example_verifies_crawlguard(
    trust: str, proxy: Proxy, site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    if trust == "nss" and shutil.which("certutil") is None:
        pytest.fail(
            "certutil missing: apt-get install libnss3-tools (make test installs it as root)"
        )
    env = example_env(proxy, site, ca_file, CRAWLGUARD_TRUST=trust, CRAWLGUARD_CHROMIUM=chromium())
    before = len(site.hits)
    done = run([sys.executable, str(EXAMPLES / "playwright_example.py")], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "200 allowed", done.stdout
    agents = [ua for path, ua in hits_since(site, before) if path == "/"]
    assert agents and "DemoBot/1.0" in agents[0] and "HeadlessChrome" not in agents[0]


def test_chromium_without_the_ca_refuses_crawlguard(
    proxy: Proxy, site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    """Why the guide's trust step exists: ignore_https_errors=False and no CA fails."""
    env = example_env(proxy, site, ca_file, CRAWLGUARD_TRUST="none", CRAWLGUARD_CHROMIUM=chromium())
    done = run([sys.executable, str(EXAMPLES / "playwright_example.py")], env, tmp_path)
    assert done.returncode != 0
    assert "ERR_CERT_AUTHORITY_INVALID" in done.stderr


# -- the pitfalls the guides warn about ---------------------------------------------------------


def test_requests_bundle_variable_beats_session_verify(
    proxy: Proxy, site: LocalOrigin, ca_file: str, tmp_path: Path
) -> None:
    """docs/crawlers/requests.md: with trust_env (the default) REQUESTS_CA_BUNDLE wins over
    verify."""
    script = textwrap.dedent(
        """
        import os, requests
        s = requests.Session()
        s.proxies = {"https": os.environ["CRAWLGUARD_PROXY"]}
        s.verify = os.environ["CRAWLGUARD_CA"]
        s.headers["User-Agent"] = "DemoBot/1.0 (+https://demo.example/bot)"
        try:
            s.get(os.environ["CRAWLGUARD_URL"], timeout=30)
        except requests.exceptions.SSLError:
            print("SSLError")
        """
    )
    env = example_env(proxy, site, ca_file)
    for name in [name for name in env if name.upper().endswith("_PROXY")]:
        if not name.startswith("CRAWLGUARD"):
            del env[name]
    done = run([sys.executable, "-c", script], env, tmp_path)
    assert done.stdout.strip() == "SSLError", done.stderr[-2000:]


def test_exported_http_proxy_catches_curl_to_the_admin_port(proxy: Proxy, tmp_path: Path) -> None:
    """docs/crawlers/README.md: NO_PROXY or `curl --noproxy '*'` for the admin port, else the
    metrics request goes through crawlguard as the tenant and is refused (and recorded) as
    ua-generic."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed: apt-get install curl")
    metrics = f"http://127.0.0.1:{proxy.admin_port}/metrics"
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env["http_proxy"] = f"http://demo:demo-token@127.0.0.1:{proxy.port}"
    code = ["-s", "-o", os.devnull, "-w", "%{http_code}"]
    through = run([curl, *code, "-D", "-", metrics], env, tmp_path)
    assert through.stdout.startswith("HTTP/1.1 403"), through.stdout
    assert "X-Crawlguard-Decision: ua-generic" in through.stdout
    assert any(r["url"] == metrics for r in proxy.violations("--tenant", "demo"))
    assert run([curl, *code, "--noproxy", "*", metrics], env, tmp_path).stdout == "200"
    assert run([curl, *code, metrics], {**env, "NO_PROXY": "127.0.0.1"}, tmp_path).stdout == "200"
