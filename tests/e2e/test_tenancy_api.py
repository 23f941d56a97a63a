"""A control plane managing tenants through the admin API while the proxies keep serving
(issue 20): create, rotate, disable, as seen by real proxy processes on the same store.

One contract, two stores: two `crawlguard run` processes on one PostgreSQL schema (the API on
the first), and one process on SQLite. Requests are byte-exact through the proxy
(tests/rawhttp.py) to a real local origin; every change is polled for on every proxy (never a
fixed sleep, never a timing assertion). A token must be in its creating or rotating response
and nowhere else: not in either proxy's log output, an audit row, or a later API answer.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from harness import Proxy, base_config, wait_for
from rawhttp import WireOrigin, auth, closed_without_reply, connect, read_reply, request_bytes, send

if TYPE_CHECKING:
    from pgutil import PgSchema

pytest_plugins = ["pgutil", "redisutil"]  # fixtures: pg_server, pg_schema; redis_url

OP = "op"  # base_config's operator token
GRACE = 4.0  # tenancy.rotate_grace: long enough to see the old token work, short to wait out
PICKUP = 15.0  # how long a poll for a change waits before the test fails (not a target)
UA = "HooliBot/1.0 (+https://hooli.example/bot)"


def store_config(tmp: Path, url: str) -> dict[str, Any]:
    return base_config(
        tmp, store={"url": url}, tenancy={"source": "store", "rotate_grace": GRACE}, tenants=[]
    )


@dataclass
class Fleet:
    """The proxies on one store; the API is the first one's."""

    proxies: list[Proxy]
    origin: WireOrigin
    secrets: list[str] = field(default_factory=list)  # every token the API handed out
    delays: dict[str, list[float]] = field(default_factory=dict)  # observed pick-up, s

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.proxies[0].admin_port}"

    def api(
        self, method: str, path: str, body: Any = None, *, proxy: int = 0, token: str | None = OP
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        base = f"http://127.0.0.1:{self.proxies[proxy].admin_port}"
        r = requests.request(method, base + path, json=body, headers=headers, timeout=15)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.origin.port}"

    def status(self, proxy: Proxy, tid: str, token: str, path: str = "/page") -> int:
        """One request through `proxy` with these credentials; its status."""
        target = f"http://{self.authority}{path}"
        head = request_bytes(target, self.authority, ua=UA, proxy_auth=auth(tid, token))
        return send(proxy.port, head).status

    def until(self, what: str, tid: str, token: str, want: int) -> None:
        """Poll every proxy until `token` gets `want`; note how long each took."""
        start = time.monotonic()
        for i, proxy in enumerate(self.proxies):
            ok = wait_for(lambda p=proxy: self.status(p, tid, token) == want, PICKUP)
            assert ok, f"proxy {i}: {what}: still not {want} after {PICKUP} s\n{proxy.log()}"
            self.delays.setdefault(what, []).append(round(time.monotonic() - start, 3))


def tunnel(fleet: Fleet, proxy: Proxy, tid: str, token: str) -> socket.socket:
    """A CONNECT tunnel opened with these credentials, one request answered inside it."""
    sock, reply = connect(proxy.port, fleet.authority, proxy_auth=auth(tid, token))
    assert reply.status == 200, reply
    assert inside(sock, fleet.authority, "/in-tunnel") == 200
    return sock


def inside(sock: socket.socket, authority: str, path: str) -> int:
    sock.sendall(request_bytes(path, authority, ua=UA).replace(b"Connection: close\r\n", b""))
    return read_reply(sock).status


def lifecycle(fleet: Fleet) -> None:
    """The contract both stores keep."""
    first, *_ = fleet.proxies

    # nobody may manage tenants without the operator token
    status, _ = fleet.api("POST", "/api/tenants", {"id": "hooli"}, token=None)
    assert status == 401

    # create: the token once, then accepted by every proxy
    status, body = fleet.api(
        "POST", "/api/tenants", {"id": "hooli", "product_tokens": ["HooliBot"], "mode": "enforce"}
    )
    assert status == 201 and set(body) == {"id", "token"}, body
    t1 = body["token"]
    fleet.secrets.append(t1)
    fleet.until("create", "hooli", t1, 200)
    assert fleet.status(first, "hooli", "not-the-token") == 407
    for i in range(len(fleet.proxies)):  # every replica's API reads the same registry
        status, shown = fleet.api("GET", "/api/tenants/hooli", proxy=i)
        assert (status, shown["product_tokens"], shown["disabled"]) == (200, ["HooliBot"], False)

    # a product token another tenant holds (ASCII case-folded): 400 naming both
    status, body = fleet.api(
        "POST", "/api/tenants", {"id": "piedpiper", "product_tokens": ["hoolibot"]}
    )
    assert (status, body["field"]) == (400, "product_tokens"), body
    assert "'hooli'" in body["error"] and "'piedpiper'" in body["error"], body
    assert fleet.api("GET", "/api/tenants/piedpiper")[0] == 404

    # rotate: the new token everywhere, the old one still good in its grace, then refused
    old_tunnels = [tunnel(fleet, p, "hooli", t1) for p in fleet.proxies]
    status, body = fleet.api("POST", "/api/tenants/hooli/rotate")
    assert status == 200 and set(body) == {"token"}, body
    t2 = body["token"]
    fleet.secrets.append(t2)
    assert t2 != t1
    fleet.until("rotate", "hooli", t2, 200)
    for i, proxy in enumerate(fleet.proxies):  # the rotation is live; the grace is not over
        assert fleet.status(proxy, "hooli", t1) == 200, f"proxy {i}: old token refused early"
        assert inside(old_tunnels[i], fleet.authority, "/in-grace") == 200, f"proxy {i}"
    fleet.until("grace-end", "hooli", t1, 407)
    for sock in old_tunnels:  # a tunnel opened with the old token ends with its grace
        with sock:
            assert inside(sock, fleet.authority, "/after-grace") == 407
            assert closed_without_reply(sock)
    assert fleet.status(first, "hooli", t2) == 200

    # disable: refused everywhere, and a tunnel opened before is refused and closed
    open_tunnels = [tunnel(fleet, p, "hooli", t2) for p in fleet.proxies]
    status, body = fleet.api("DELETE", "/api/tenants/hooli")
    assert (status, body["id"], body["disabled"]) == (200, "hooli", True), body
    fleet.until("disable", "hooli", t2, 407)
    for sock in open_tunnels:
        with sock:
            assert inside(sock, fleet.authority, "/after-disable") == 407
            assert closed_without_reply(sock)
    targets = [r.target for r in fleet.origin.received()]
    assert b"/after-grace" not in targets and b"/after-disable" not in targets

    # the records are kept, and the trail says who did what
    status, shown = fleet.api("GET", "/api/tenants/hooli")
    assert (status, shown["disabled"]) == (200, True)
    status, audit = fleet.api("GET", "/api/audit?tenant=hooli")
    assert status == 200
    assert [(e["action"], e["actor"]) for e in audit] == [
        ("disable", "api:operator"),
        ("rotate", "api:operator"),
        ("create", "api:operator"),
    ]

    # no token anywhere after its own response
    later = [
        fleet.api("GET", path, proxy=i)
        for i in range(len(fleet.proxies))
        for path in (
            "/api/tenants/hooli",
            "/api/tenants",
            "/api/tenancy",
            "/api/audit",
            "/api/tenants/hooli/audit",
        )
    ]
    answers = json.dumps(later)
    assert "hooli" in answers
    for proxy in fleet.proxies:
        assert "crawlguard ready" in proxy.log()
    for secret in fleet.secrets:
        basic = base64.b64encode(f"hooli:{secret}".encode()).decode()
        for i, proxy in enumerate(fleet.proxies):
            output = proxy.log() + proxy.json_lines()
            assert secret not in output and basic not in output, f"proxy {i} logged a token"
        assert secret not in answers


def start_all(configs: list[tuple[dict[str, Any], Path]]) -> list[Proxy]:
    """Proxies started side by side (each start is ~1 s of mostly waiting)."""
    out: list[Proxy | BaseException | None] = [None] * len(configs)

    def one(i: int) -> None:
        try:
            out[i] = Proxy(*configs[i])
        except BaseException as exc:  # reported below, after every start ended
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [p for p in out if isinstance(p, Proxy)]
    failed = [e for e in out if not isinstance(e, Proxy)]
    if failed:
        for p in started:
            p.stop()
        raise RuntimeError(f"a proxy did not start: {failed[0]}")
    return started


@pytest.fixture
def wire() -> Iterator[WireOrigin]:
    o = WireOrigin()
    yield o
    o.close()


def run_fleet(proxies: list[Proxy], origin: WireOrigin) -> Fleet:
    fleet = Fleet(proxies, origin)
    try:
        lifecycle(fleet)
    finally:
        for p in proxies:
            p.stop()
    print(f"pick-up seconds per proxy: {fleet.delays}")
    return fleet


def test_lifecycle_on_postgresql_with_two_proxies(
    tmp_path: Path, pg_schema: PgSchema, wire: WireOrigin
) -> None:
    url = pg_schema.url()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    proxies = start_all([(store_config(a, url), a), (store_config(b, url), b)])
    run_fleet(proxies, wire)
    # the registry is the shared database's: one tenant, disabled, its trail intact
    rows = pg_schema.rows("SELECT id, disabled FROM tenancy_tenants")
    assert [(r[0], bool(r[1])) for r in rows] == [("hooli", True)]


def test_lifecycle_on_sqlite_with_one_proxy(tmp_path: Path, wire: WireOrigin) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'crawlguard.db'}"
    proxies = start_all([(store_config(tmp_path, url), tmp_path)])
    run_fleet(proxies, wire)


def test_the_api_of_a_workers_parent_manages_every_workers_tenants(
    tmp_path: Path, wire: WireOrigin, redis_url: str
) -> None:
    """`crawlguard run --workers 2`: the parent serves the admin API; the workers serve the
    proxy port. A change made through the parent reaches the worker that takes the next
    connection, whichever it is."""
    from test_workers import WorkersProxy

    url = f"sqlite:///{tmp_path / 'var' / 'crawlguard.db'}"
    config = {**store_config(tmp_path, url), "state": {"url": redis_url}}  # shared pacing
    proxy = WorkersProxy(config, tmp_path, workers=2)
    fleet = Fleet([proxy], wire)
    try:

        def every_time(tid: str, token: str, want: int) -> bool:
            return all(fleet.status(proxy, tid, token) == want for _ in range(8))

        status, body = fleet.api(
            "POST", "/api/tenants", {"id": "hooli", "product_tokens": ["HooliBot"]}
        )
        assert status == 201, body
        fleet.secrets.append(body["token"])
        assert wait_for(lambda: every_time("hooli", body["token"], 200), PICKUP), proxy.log()
        status, shown = fleet.api("GET", "/api/tenants/hooli")
        assert (status, shown["disabled"]) == (200, False), shown
        status, body = fleet.api("DELETE", "/api/tenants/hooli")
        assert (status, body["disabled"]) == (200, True), body
        assert wait_for(lambda: every_time("hooli", fleet.secrets[0], 407), PICKUP), proxy.log()
        status, audit = fleet.api("GET", "/api/audit")
        assert [(e["action"], e["actor"]) for e in audit] == [
            ("disable", "api:operator"),
            ("create", "api:operator"),
        ]
    finally:
        proxy.stop()
    assert fleet.secrets[0] not in proxy.log() + proxy.json_lines()
