"""The pytest plugin (issue 13): a crawler's own test suite, run with pytester in a subprocess,
gets a real `crawlguard dev` proxy from the `crawlguard_proxy` fixture.

The inner runs load the plugin with ``-p no:crawlguard -p crawlguard.pytest_plugin``: by module
name, and with the entry point (``pytest11: crawlguard``, once installed) blocked, so the
plugin is registered once either way.
"""

from __future__ import annotations

import pytest
import trustme

pytest_plugins = ["pytester"]

PLUGIN = ("-p", "no:crawlguard", "-p", "crawlguard.pytest_plugin")

# A crawler author's conftest: a local site with a robots.txt (and an HTTPS twin when the
# test hands it a certificate), and the crawler's user agent.
CONFTEST = """
import http.server
import ssl
import threading
from pathlib import Path

import pytest

UA = "AcmeBot/1.0 (+https://acme.example/bot)"
ROBOTS = b"User-agent: *\\nDisallow: /private/\\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ROBOTS if self.path == "/robots.txt" else b"page " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(tls=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def site():
    server, url = serve()
    yield url
    server.shutdown()


@pytest.fixture
def https_site():
    server, url = serve(tls=str(Path(__file__).parent / "server.pem"))
    yield url
    server.shutdown()
"""

CRAWLER_TESTS = """
import requests

from conftest import UA


def crawl(proxy, url, ua=UA):
    session = requests.Session()
    session.trust_env = False
    return session.get(url, proxies=proxy.proxies, headers={"User-Agent": ua}, timeout=15)


def test_polite(crawlguard_proxy, site):
    assert crawl(crawlguard_proxy, site + "/robots.txt").status_code == 200
    r = crawl(crawlguard_proxy, site + "/page")
    assert r.status_code == 200 and r.headers["X-Crawlguard-Decision"] == "allowed"
    assert not crawlguard_proxy.violations


def test_impolite(crawlguard_proxy, site):
    crawl(crawlguard_proxy, site + "/page", ua=requests.utils.default_user_agent())
    crawl(crawlguard_proxy, site + "/private/x")
    assert not crawlguard_proxy.violations
"""


def write_site(pytester: pytest.Pytester, tests: str, name: str = "test_crawler") -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**{name: tests})


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", *args, timeout=300)


def test_a_polite_crawler_passes_and_an_impolite_one_sees_its_violations(
    pytester: pytest.Pytester,
):
    pytester.makeini("[pytest]\ncrawlguard_product_token = AcmeBot\n")
    write_site(pytester, CRAWLER_TESTS)
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "test_impolite FAILED" in out or "FAILED test_crawler.py::test_impolite" in out
    assert "FAILED test_crawler.py::test_polite" not in out
    # the assertion shows the records, and the proxy's own lines and summary are shown
    assert "'kind': 'ua-generic'" in out and "'kind': 'robots-disallow'" in out
    assert "Captured stdout teardown" in out
    assert "blocked robots-disallow" in out
    assert "crawlguard dev summary: 2 request(s), 0 allowed, 2 violation(s)" in out


RECORD_TESTS = '''
import requests

from conftest import UA

SPEC_FIELDS = {"ts", "tenant", "kind", "action", "method", "url", "user_agent", "rule",
               "crawl_delay", "retry_after", "robots_sha256"}


def get(proxy, url, ua):
    session = requests.Session()
    session.trust_env = False
    return session.get(url, proxies=proxy.proxies, headers={"User-Agent": ua}, timeout=15)


def test_records(crawlguard_proxy, site):
    assert crawlguard_proxy.violations == []
    get(crawlguard_proxy, site + "/a", requests.utils.default_user_agent())
    assert [v["kind"] for v in crawlguard_proxy.violations] == ["ua-generic"]  # fresh each time
    get(crawlguard_proxy, site + "/private/x", UA)
    get(crawlguard_proxy, site + "/b", "Googlebot/2.1 (+http://www.google.com/bot.html)")
    records = crawlguard_proxy.violations
    assert [v["kind"] for v in records] == ["ua-generic", "robots-disallow", "ua-impersonation"]
    assert all(SPEC_FIELDS <= set(v) for v in records)
    assert {v["tenant"] for v in records} == {"dev"}
    assert {v["action"] for v in records} == {"blocked"}
    disallow = records[1]
    assert disallow["url"] == site + "/private/x" and disallow["method"] == "GET"
    assert disallow["rule"] == "Disallow: /private/" and disallow["user_agent"] == UA
    assert len(disallow["robots_sha256"]) == 64
    assert records[0]["ts"] <= records[1]["ts"] <= records[2]["ts"]


def test_fresh_proxy_per_test(crawlguard_proxy, site):
    """Independent of the test above: its own store, so none of its records."""
    get(crawlguard_proxy, site + "/c", UA)
    assert crawlguard_proxy.violations == []


def test_env_and_ca(crawlguard_proxy, https_site, monkeypatch):
    """A crawler that reads the proxy and CA from the environment, over HTTPS."""
    for name, value in crawlguard_proxy.env.items():
        monkeypatch.setenv(name, value)
    assert crawlguard_proxy.env["REQUESTS_CA_BUNDLE"] == str(crawlguard_proxy.ca_path)
    r = requests.get(https_site + "/secure", headers={"User-Agent": UA}, timeout=15)
    assert r.status_code == 200 and r.headers["X-Crawlguard-Decision"] == "allowed"
    r = requests.get(https_site + "/private/y", headers={"User-Agent": UA}, timeout=15)
    assert r.headers["X-Crawlguard-Decision"] == "robots-disallow"
    assert [v["url"] for v in crawlguard_proxy.violations] == [https_site + "/private/y"]
    assert crawlguard_proxy.url.startswith("http://127.0.0.1:")
    assert crawlguard_proxy.proxies == {"http": crawlguard_proxy.url,
                                        "https": crawlguard_proxy.url}
'''


def test_records_fields_env_and_ca(
    pytester: pytest.Pytester, test_ca: trustme.CA, server_cert: trustme.LeafCert
):
    test_ca.cert_pem.write_to_path(str(pytester.path / "site-ca.pem"))
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(pytester.path / "server.pem"))
    write_site(pytester, RECORD_TESTS)
    result = run(
        pytester,
        "--crawlguard-product-token",
        "AcmeBot",
        "--crawlguard-upstream-ca",
        str(pytester.path / "site-ca.pem"),
    )
    result.assert_outcomes(passed=3)


def test_the_flag_wins_over_the_ini_option(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\ncrawlguard_product_token = OtherBot\n")
    write_site(pytester, CRAWLER_TESTS)
    # the ini's OtherBot would make AcmeBot's user agent a ua-mismatch: the flag's token wins
    # (that the ini's token is read without the flag: test_mode_from_the_ini_option)
    result = run(pytester, "--crawlguard-product-token", "AcmeBot", "-k", "polite and not im")
    result.assert_outcomes(passed=1, deselected=1)


MONITOR_TESTS = """
import requests


def test_monitor(crawlguard_proxy, site):
    session = requests.Session()
    session.trust_env = False
    r = session.get(site + "/page", proxies=crawlguard_proxy.proxies, timeout=15)
    assert r.status_code == 200  # forwarded
    assert r.headers["X-Crawlguard-Monitor"] == "ua-generic"
    assert [(v["kind"], v["action"]) for v in crawlguard_proxy.violations] == [
        ("ua-generic", "logged")
    ]
"""


def test_mode_from_the_ini_option(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\ncrawlguard_product_token = AcmeBot\ncrawlguard_mode = monitor\n")
    write_site(pytester, MONITOR_TESTS)
    run(pytester).assert_outcomes(passed=1)


SESSION_TESTS = """
import requests

from conftest import UA

seen = []


def get(proxy, url, ua):
    session = requests.Session()
    session.trust_env = False
    return session.get(url, proxies=proxy.proxies, headers={"User-Agent": ua}, timeout=15)


def test_one(crawlguard_session_proxy, site):
    seen.append(crawlguard_session_proxy.url)
    get(crawlguard_session_proxy, site + "/x", requests.utils.default_user_agent())
    assert crawlguard_session_proxy.kinds() == ["ua-generic"]
    crawlguard_session_proxy.reset()
    assert crawlguard_session_proxy.violations == []


def test_two(crawlguard_session_proxy, site):
    seen.append(crawlguard_session_proxy.url)
    assert len(set(seen)) == 1  # one proxy for the session
    get(crawlguard_session_proxy, site + "/y", UA)
    assert crawlguard_session_proxy.violations == []
"""


def test_session_scoped_proxy(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\ncrawlguard_product_token = AcmeBot\n")
    write_site(pytester, SESSION_TESTS)
    run(pytester).assert_outcomes(passed=2)


def test_missing_product_token_is_a_clear_error(pytester: pytest.Pytester):
    write_site(pytester, CRAWLER_TESTS)
    result = run(pytester, "-k", "polite and not im")
    result.assert_outcomes(errors=1, deselected=1)
    out = result.stdout.str()
    assert "crawlguard_proxy needs your crawler's product token" in out
    assert "crawlguard_product_token = MyBot" in out and "--crawlguard-product-token" in out


def test_a_bad_product_token_says_why(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\ncrawlguard_product_token = curl\n")
    write_site(pytester, CRAWLER_TESTS)
    result = run(pytester, "-k", "polite and not im")
    result.assert_outcomes(errors=1, deselected=1)
    assert "--product-token 'curl': is the name of an HTTP library" in result.stdout.str()
