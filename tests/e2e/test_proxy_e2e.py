"""The real proxy (subprocess) with real clients against real local origins: issue 2's contract."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme
from harness import GOOD_UA, LocalOrigin, Proxy, base_config

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


@pytest.fixture(scope="module")
def web() -> Iterator[LocalOrigin]:
    o = LocalOrigin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def tls_web(server_cert: trustme.LeafCert) -> Iterator[LocalOrigin]:
    o = LocalOrigin(tls=server_cert)
    yield o
    o.close()


def test_allowed_request_reaches_origin_without_proxy_credentials(proxy: Proxy, web: LocalOrigin):
    r = proxy.get(web.url("/page?x=1"))
    assert r.status_code == 200
    assert r.text == "hello from origin\n"
    assert r.headers["X-Crawlguard-Decision"] == "allowed"
    hit = [h for h in web.page_hits() if h.path == "/page?x=1"][-1]
    assert "Proxy-Authorization" not in hit.headers
    assert hit.headers["User-Agent"] == GOOD_UA


@pytest.mark.parametrize(
    ("tenant", "token"),
    [("acme", "wrong"), ("nosuch", "acme-secret"), ("acme", "")],
)
def test_bad_credentials_get_407_and_never_reach_origin(
    proxy: Proxy, web: LocalOrigin, tenant: str, token: str
):
    before = len(web.hits)
    r = requests.get(
        web.url("/secret"),
        proxies={"http": f"http://{tenant}:{token}@127.0.0.1:{proxy.port}"},
        headers={"User-Agent": GOOD_UA},
        timeout=10,
    )
    assert r.status_code == 407
    assert r.headers["Proxy-Authenticate"] == 'Basic realm="crawlguard"'
    assert len(web.hits) == before


def test_unknown_tenant_and_wrong_token_are_indistinguishable(proxy: Proxy, web: LocalOrigin):
    def attempt(user: str, password: str) -> tuple[int, dict[str, str], bytes]:
        r = requests.get(
            web.url("/"),
            proxies={"http": f"http://{user}:{password}@127.0.0.1:{proxy.port}"},
            timeout=10,
        )
        headers = {k.lower(): v for k, v in r.headers.items() if k.lower() != "date"}
        return r.status_code, headers, r.content

    assert attempt("acme", "nope") == attempt("nobody", "nope")


def test_missing_credentials_and_garbage_header(proxy: Proxy, web: LocalOrigin):
    r = requests.get(web.url("/"), proxies={"http": f"http://127.0.0.1:{proxy.port}"}, timeout=10)
    assert r.status_code == 407
    for garbage in ("Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"nocolon").decode()):
        r = requests.get(
            web.url("/"),
            proxies={"http": f"http://127.0.0.1:{proxy.port}"},
            headers={"Proxy-Authorization": garbage},
            timeout=10,
        )
        assert r.status_code == 407


@pytest.mark.parametrize(
    ("ua", "kind"),
    [
        (None, "ua-missing"),
        ("", "ua-missing"),
        ("python-requests/2.31.0", "ua-generic"),
        ("curl/8.5.0", "ua-generic"),
        (CHROME, "ua-generic"),
        ("AcmeBot (+https://acme.example/bot)", "ua-undescriptive"),
        ("AcmeBot/1.0", "ua-undescriptive"),
        ("SomeBot", "ua-undescriptive"),
        ("OtherBot/2.0 (+https://other.example/bot)", "ua-mismatch"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
         "ua-impersonation"),
        ("AcmeBot/1.0 (+https://acme.example/bot) bingbot/2.0", "ua-impersonation"),
    ],
)  # fmt: skip
def test_user_agent_decisions(proxy: Proxy, web: LocalOrigin, ua: str | None, kind: str):
    path = f"/ua-{kind}-{abs(hash(ua)) % 10**6}"
    r = proxy.get(web.url(path), ua=ua)
    assert r.status_code == 403, r.text
    assert r.headers["X-Crawlguard-Decision"] == kind
    assert r.headers["Content-Type"].startswith("text/plain")
    assert kind in r.text and len(r.text) < 2000
    assert path not in web.paths()
    recs = [v for v in proxy.violations("--tenant", "acme", "--kind", kind) if path in v["url"]]
    assert len(recs) == 1
    rec = recs[0]
    assert rec["action"] == "blocked" and rec["method"] == "GET"
    assert rec["url"] == web.url(path)
    assert rec["rule"]
    assert rec["ts"].endswith("Z")


def test_a_library_name_beside_the_token_passes(proxy: Proxy, web: LocalOrigin):
    ua = "AcmeBot/1.0 (+https://acme.example/bot) python-requests/2.31"
    r = proxy.get(web.url("/lib"), ua=ua)
    assert r.status_code == 200


def test_https_with_auth_on_connect(proxy: Proxy, tls_web: LocalOrigin):
    r = proxy.get(tls_web.url("/secure"))
    assert r.status_code == 200
    assert r.text == "hello from origin\n"
    assert "/secure" in tls_web.paths()
    assert "Proxy-Authorization" not in tls_web.page_hits()[-1].headers
    r = proxy.get(tls_web.url("/secure-generic"), ua="Go-http-client/1.1")
    assert r.status_code == 403
    assert r.headers["X-Crawlguard-Decision"] == "ua-generic"
    assert "/secure-generic" not in tls_web.paths()


def test_https_connect_without_credentials_is_refused(proxy: Proxy, tls_web: LocalOrigin):
    with pytest.raises(requests.exceptions.ProxyError) as exc:
        requests.get(
            tls_web.url("/nope"),
            proxies={"https": f"http://acme:wrong@127.0.0.1:{proxy.port}"},
            verify=proxy.ca_file,
            timeout=10,
        )
    assert "407" in str(exc.value)
    assert "/nope" not in tls_web.paths()


def test_monitor_mode_forwards_and_logs(proxy: Proxy, web: LocalOrigin):
    r = proxy.get(web.url("/monitored"), tenant="globex", ua="python-requests/2.31.0")
    assert r.status_code == 200
    assert r.headers["X-Crawlguard-Monitor"] == "ua-generic"
    assert "/monitored" in web.paths()
    recs = [v for v in proxy.violations("--tenant", "globex") if v["url"].endswith("/monitored")]
    assert [(v["kind"], v["action"]) for v in recs] == [("ua-generic", "logged")]


def test_off_mode_forwards_and_records_nothing(proxy: Proxy, web: LocalOrigin):
    r = proxy.get(web.url("/unguarded"), tenant="initech", ua="curl/8.0")
    assert r.status_code == 200
    assert proxy.violations("--tenant", "initech") == []


def test_metrics_count_by_tenant_and_decision(proxy: Proxy, web: LocalOrigin):
    for _ in range(3):
        proxy.get(web.url("/counted"), tenant="globex", ua="GlobexCrawler/1.0 (ops@globex.example)")
    text = proxy.metrics()
    assert 'crawlguard_requests_total{decision="allowed",tenant="globex"}' in text
    line = next(
        ln for ln in text.splitlines()
        if ln.startswith('crawlguard_requests_total{decision="allowed",tenant="globex"}')
    )  # fmt: skip
    assert float(line.split()[-1]) >= 3
    assert 'crawlguard_violations_total{kind="ua-generic",tenant="acme"}' in text
    for name in (
        "crawlguard_robots_fetches_total",
        "crawlguard_decision_seconds_bucket",
        "crawlguard_delayed_requests",
    ):
        assert name in text
    assert "127.0.0.1" not in text  # no label holds a URL or host
    health = requests.get(f"http://127.0.0.1:{proxy.admin_port}/healthz", timeout=5)
    assert health.status_code == 200


def test_violations_also_go_to_the_log_as_json_lines(proxy: Proxy, web: LocalOrigin):
    proxy.get(web.url("/logged-line"), ua="Wget/1.21")
    lines = [json.loads(ln) for ln in proxy.json_lines().splitlines() if ln.startswith("{")]
    assert any(rec["url"].endswith("/logged-line") and rec["kind"] == "ua-generic" for rec in lines)


def test_records_survive_a_restart(tmp_path: Path, origin: LocalOrigin):
    web = origin
    p = Proxy(base_config(tmp_path), tmp_path)
    try:
        assert p.get(web.url("/before-restart"), ua="okhttp/4.9.0").status_code == 403
        p.restart()  # asserts a graceful exit 0 on SIGTERM
        assert "crawlguard stopped" in p.log()
        recs = p.violations()
        assert any(r["url"].endswith("/before-restart") for r in recs)
        assert p.get(web.url("/after-restart"), ua="okhttp/4.9.0").status_code == 403
        assert p.get(web.url("/allowed-one")).status_code == 200
        urls = [r["url"] for r in p.violations()]
        assert urls[0].endswith("/after-restart") and urls[1].endswith("/before-restart")
        assert p.stop() == 0  # a graceful stop flushes the in-memory request counts
        out = subprocess.run(
            [sys.executable, "-m", "crawlguard", "report", "--config", str(p.config_path),
             "--format", "json"],
            capture_output=True, text=True, timeout=30, check=True, cwd=tmp_path,
        )  # fmt: skip
        acme = json.loads(out.stdout)["tenants"]["acme"]
        assert acme["requests"] == {"ua-generic": 2, "allowed": 1}
        assert acme["violations"] == {"ua-generic": 2}
    finally:
        p.stop()


def test_destination_forbidden_private_address_and_port(tmp_path: Path, origin: LocalOrigin):
    web = origin
    cfg = base_config(tmp_path, destinations={"allow_private": False, "allowed_ports": [80, 443]})
    p = Proxy(cfg, tmp_path)
    try:
        r = p.get(web.url("/private-net"))
        assert r.status_code == 403
        assert r.headers["X-Crawlguard-Decision"] == "destination-forbidden"
        assert web.paths() == []
        with pytest.raises(requests.exceptions.ProxyError):
            p.get(f"https://127.0.0.1:{web.port}/tunnel")
        kinds = {v["kind"] for v in p.violations()}
        assert kinds == {"destination-forbidden"}
    finally:
        p.stop()


def test_an_origin_resetting_mid_response_does_not_hurt_the_proxy(proxy: Proxy, web: LocalOrigin):
    """The origin sends half a body, then a TCP reset: that request fails, the next one works."""
    import socket
    import struct
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ua = "InitechBot/1.0 (+https://initech.example/bot)"  # mode off: no robots.txt fetch
    try:
        r = proxy.get(f"http://127.0.0.1:{port}/half", tenant="initech", ua=ua)
        assert r.status_code == 502 or len(r.content) < 100000
    except requests.RequestException:
        pass  # the client may see the reset itself: either way the request failed
    t.join(10)
    server.close()
    assert proxy.get(web.url("/after-reset")).status_code == 200
    assert proxy.proc.poll() is None
