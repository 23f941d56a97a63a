"""Tenant limits end to end: the real proxy subprocess, real local origins on 127.0.0.1.

`max_rps` and `max_concurrency` refuse with 429 `tenant-limit` (recorded), per tenant;
`deny_hosts` / `allow_hosts` refuse with 403 `destination-forbidden` before anything reaches
the origin, robots.txt included.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import trustme
from harness import LocalOrigin, Proxy, Route, base_config, tenant, wait_for
from rawhttp import auth, request_bytes

pytestmark = pytest.mark.timeout(90)

TENANTS = [
    tenant("rated", ["RatedBot"], max_rps=1),
    tenant("free", ["FreeBot"]),
    tenant("single", ["SingleBot"], max_concurrency=1),
    tenant("leaver", ["LeaverBot"], max_concurrency=1),
    tenant("denied", ["DeniedBot"], deny_hosts=["127.0.0.1", "localhost"]),
    tenant("listed", ["ListedBot"], allow_hosts=["example.com", "*.example.com"]),
    tenant("local", ["LocalBot"], allow_hosts=["127.0.0.*"]),
    tenant("unguarded", ["UnguardedBot"], mode="off", deny_hosts=["127.0.0.1"]),
]


def ua(tid: str) -> str:
    token = next(t["product_tokens"][0] for t in TENANTS if t["id"] == tid)
    return f"{token}/1.0 (+https://{tid}.example/bot)"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, ca_file: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("limits")
    p = Proxy(base_config(tmp, proxy={"upstream_ca_file": ca_file}, tenants=TENANTS), tmp)
    yield p
    p.stop()


def get(proxy: Proxy, url: str, tid: str, **kw: Any) -> requests.Response:
    return proxy.get(url, tenant=tid, ua=ua(tid), **kw)


def assert_limited(r: requests.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["X-Crawlguard-Decision"] == "tenant-limit"
    assert int(r.headers["Retry-After"]) >= 1
    assert "tenant-limit" in r.text


def test_max_rps_limits_one_tenant_only(proxy: Proxy, origin: LocalOrigin) -> None:
    assert get(proxy, origin.url("/warm"), "free").status_code == 200  # robots.txt cached
    first = get(proxy, origin.url("/r1"), "rated")
    second = get(proxy, origin.url("/r2"), "rated")
    assert first.status_code == 200, first.text
    assert_limited(second)
    assert second.headers["Retry-After"] == "1"
    assert get(proxy, origin.url("/f1"), "free").status_code == 200  # other tenants proceed
    assert "/r2" not in origin.paths()
    # the bucket refills: a later request passes
    assert wait_for(lambda: get(proxy, origin.url("/r3"), "rated").status_code == 200)
    recs = proxy.violations("--tenant", "rated", "--kind", "tenant-limit")
    assert recs, "tenant-limit refusals are recorded"
    assert recs[-1]["action"] == "blocked"
    assert recs[-1]["rule"] == "tenants[rated].max_rps: 1"
    assert recs[-1]["retry_after"] >= 1


def test_max_concurrency_until_the_first_completes(proxy: Proxy, origin: LocalOrigin) -> None:
    origin.routes["/slow"] = Route(body=b"slow\n", delay=2.0)
    results: dict[str, requests.Response] = {}
    slow = threading.Thread(
        target=lambda: results.update(slow=get(proxy, origin.url("/slow"), "single"))
    )
    slow.start()
    try:
        assert wait_for(lambda: "/slow" in origin.paths()), "the first request reached the origin"
        second = get(proxy, origin.url("/second"), "single")
        assert_limited(second)
        assert second.headers["Retry-After"] == "1"
        assert get(proxy, origin.url("/other-tenant"), "free").status_code == 200
    finally:
        slow.join(15)
    assert results["slow"].status_code == 200 and results["slow"].text == "slow\n"
    assert "/second" not in origin.paths()
    assert wait_for(lambda: get(proxy, origin.url("/third"), "single").status_code == 200)
    recs = proxy.violations("--tenant", "single", "--kind", "tenant-limit")
    assert [r["rule"] for r in recs] == ["tenants[single].max_concurrency: 1"]


def test_client_gone_releases_its_slot(proxy: Proxy, origin: LocalOrigin) -> None:
    answer = threading.Event()  # the origin answers /hang only once the test says so
    origin.routes["/hang"] = Route(body=b"late\n", gate=answer)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    sock.sendall(
        request_bytes(
            origin.url("/hang"), f"127.0.0.1:{origin.port}", ua=ua("leaver"),
            proxy_auth=auth("leaver"),
        )
    )  # fmt: skip
    assert wait_for(lambda: "/hang" in origin.paths())
    sock.close()  # the client leaves while its request is in flight
    try:
        # released by the `error` hook: the origin has not answered /hang (its gate is shut)
        assert wait_for(lambda: get(proxy, origin.url("/after"), "leaver").status_code == 200)
    finally:
        answer.set()


def test_deny_hosts_refuse_before_anything_reaches_the_origin(
    proxy: Proxy, origin: LocalOrigin
) -> None:
    for url in (origin.url("/x"), f"http://LOCALHOST.:{origin.port}/y"):
        r = get(proxy, url, "denied")
        assert r.status_code == 403, r.text
        assert r.headers["X-Crawlguard-Decision"] == "destination-forbidden"
        assert "tenants[denied].deny_hosts: " in r.text
    # mode `off` is refused too (platform protection), just not recorded
    r = get(proxy, origin.url("/z"), "unguarded")
    assert r.status_code == 403
    assert r.headers["X-Crawlguard-Decision"] == "destination-forbidden"
    assert origin.hits == []
    recs = proxy.violations("--kind", "destination-forbidden")
    rules = sorted(r["rule"] for r in recs if r["tenant"] in ("denied", "unguarded"))
    assert rules == [
        "tenants[denied].deny_hosts: 127.0.0.1",
        "tenants[denied].deny_hosts: localhost",
    ]


def test_allow_hosts_admit_only_matching_hosts(proxy: Proxy, origin: LocalOrigin) -> None:
    r = get(proxy, origin.url("/x"), "listed")
    assert r.status_code == 403, r.text
    assert r.headers["X-Crawlguard-Decision"] == "destination-forbidden"
    assert "tenants[listed].allow_hosts: example.com, *.example.com" in r.text
    assert origin.hits == []
    assert get(proxy, origin.url("/ok"), "local").status_code == 200
    assert origin.paths() == ["/ok"]


def test_deny_hosts_refuse_the_connect(proxy: Proxy, server_cert: trustme.LeafCert) -> None:
    """The tenant's host globs refuse a CONNECT itself: no tunnel, no origin connection."""
    from rawhttp import auth, connect

    web = LocalOrigin(tls=server_cert)
    try:
        sock, reply = connect(proxy.port, f"127.0.0.1:{web.port}", proxy_auth=auth("denied"))
        sock.close()
        assert reply.status == 403
        assert reply.header("X-Crawlguard-Decision") == "destination-forbidden"
        assert web.hits == []
    finally:
        web.close()
