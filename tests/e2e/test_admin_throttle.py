"""Wrong operator credentials are throttled per source address (issue 18 item 16).

The admin server in-process with real HTTP clients from two loopback sources (127.0.0.1 and
127.0.0.2: the server listens on 127.0.0.1, a client socket bound to 127.0.0.2 reaches it as
another source); and the issue's flood of wrong logins against `crawlguard run`. The back-off
logic on a fake clock: tests/unit/test_admin_throttle_backoff.py.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
from adminutil import OP, Admin, cookie_of, start_admin, stop_admin
from harness import Proxy, base_config
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import read_reply, request_bytes

from crawlguard.admin import throttle
from crawlguard.admin.auth import SESSION_COOKIE
from crawlguard.admin.throttle import AuthThrottle

OTHER_SOURCE = "127.0.0.2"
THROTTLE_LINE = "wrong operator credentials in a row from"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the admin server ------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def server(tmp_path: Path, clock: Clock) -> AsyncIterator[Admin]:
    """The admin server with the module's back-off on a clock the test moves (a lock-out
    lasts exactly until the test says so, however slow the machine)."""
    a = await start_admin(tmp_path, server_kw={"throttle": AuthThrottle(clock=clock)})
    try:
        yield a
    finally:
        await stop_admin(a)


@pytest.fixture
async def elsewhere() -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from 127.0.0.2."""
    connector = aiohttp.TCPConnector(local_addr=(OTHER_SOURCE, 0))
    async with aiohttp.ClientSession(
        trust_env=False, connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


def failures(text: str) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "crawlguard_admin_auth_failures"
        for s in f.samples
    }


async def test_wrong_tokens_lock_out_their_source_and_no_other(
    server: Admin,
    clock: Clock,
    elsewhere: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = server
    r = await admin.post("/login", {"token": OP})
    session = {"Cookie": f"{SESSION_COOKIE}={cookie_of(r)}"}
    caplog.set_level(logging.WARNING, "crawlguard")
    for _ in range(throttle.FREE_FAILURES):  # typos cost nothing
        assert (await admin.get("/api/tenants", token="wrong")).status == 401
    assert (await admin.get("/api/tenants", token="wrong")).status == 401  # checked: locks
    r = await admin.get("/api/tenants")  # the right token, from the same source: not checked
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert "too many wrong operator credentials" in (await r.json())["error"]
    r = await admin.get("/", token="wrong")
    assert r.status == 429
    r = await admin.post("/login", {"token": OP})  # the login form shares the count
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert "Too many wrong tokens" in await r.text() and SESSION_COOKIE not in r.cookies
    # a session is no guess: it keeps working from the throttled source
    assert (await admin.get("/api/tenants", token=None, headers=session)).status == 200
    # another source: the right token works, and its wrong ones are its own to count
    bearer = {"Authorization": f"Bearer {OP}"}
    async with elsewhere.get(admin.base + "/api/tenants", headers=bearer) as r:
        assert r.status == 200
    async with elsewhere.get(admin.base + "/api/tenants", headers={"Authorization": "x"}) as r:
        assert r.status == 401
    login = elsewhere.post(admin.base + "/login", data={"token": OP}, allow_redirects=False)
    async with login as r:
        assert r.status == 303 and SESSION_COOKIE in r.cookies
    metrics = await (await admin.get("/metrics", token=None)).text()
    assert failures(metrics) == {"bearer": 7.0, "login": 0.0, "throttled": 3.0}
    lines = [r.getMessage() for r in caplog.records if THROTTLE_LINE in r.getMessage()]
    assert len(lines) == 1 and "from 127.0.0.1;" in lines[0]

    # once the lock-out ends, the right token resets the count: typos are free again
    clock.now += 0.5
    assert (await admin.get("/api/tenants")).status == 429
    clock.now += 0.5
    assert (await admin.get("/api/tenants")).status == 200
    for _ in range(throttle.FREE_FAILURES):
        assert (await admin.get("/api/tenants", token="wrong")).status == 401
    assert (await admin.get("/api/tenants")).status == 200


async def test_wrong_logins_lock_out_the_form_and_the_bearer_token(
    server: Admin, clock: Clock
) -> None:
    admin = server
    for _ in range(throttle.FREE_FAILURES + 1):
        r = await admin.post("/login", {"token": "guess"})
        assert r.status == 401 and "Wrong operator token" in await r.text()
    r = await admin.post("/login", {"token": "guess"})
    assert r.status == 429 and "Try again in 1 s" in await r.text()
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert (await admin.get("/api/violations")).status == 429
    # each further failure doubles the lock-out
    for lock in (2, 4, 8):
        clock.now += lock / 2
        assert (await admin.post("/login", {"token": "guess"})).status == 401
        assert (await admin.post("/login", {"token": "guess"})).headers["Retry-After"] == str(lock)
    metrics = failures(await (await admin.get("/metrics", token=None)).text())
    assert metrics == {"bearer": 0.0, "login": 9.0, "throttled": 5.0}


# -- the flood, against `crawlguard run` ---------------------------------------------------


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Proxy]:
    p = Proxy(base_config(tmp_path), tmp_path)
    yield p
    p.stop()


def raw_from(source: str, port: int, request: bytes) -> int:
    address = ("127.0.0.1", port)
    with socket.create_connection(address, timeout=15, source_address=(source, 0)) as sock:
        sock.sendall(request)
        return read_reply(sock).status


def login_bytes(port: int, token: str) -> bytes:
    body = f"token={token}"
    extra = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))}
    head = request_bytes("/login", f"127.0.0.1:{port}", method="POST", extra=extra)
    return head + body.encode()


def test_300_wrong_logins_are_answered_but_few_are_checked(live: Proxy) -> None:
    port = live.admin_port
    statuses = [raw_from("127.0.0.1", port, login_bytes(port, f"guess-{i}")) for i in range(300)]
    assert set(statuses) <= {401, 429}  # every one answered, none crashed anything
    checked = statuses.count(401)
    # the free ones, the one that locked, and one per expired lock-out (1, 2, 4, 8 … s): far
    # fewer than 300 in any run shorter than an hour
    assert throttle.FREE_FAILURES + 1 <= checked <= throttle.FREE_FAILURES + 13, checked
    assert statuses[: throttle.FREE_FAILURES + 1] == [401] * (throttle.FREE_FAILURES + 1)
    # the right token from another source works meanwhile
    assert raw_from(OTHER_SOURCE, port, login_bytes(port, OP)) == 303
    assert live.log().count(THROTTLE_LINE) == 1, live.log()
    session = requests.Session()
    session.trust_env = False
    text = session.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert failures(text) == {"bearer": 0.0, "login": float(checked), "throttled": 300.0 - checked}
