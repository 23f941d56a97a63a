"""Dashboard sessions are server side (issue 18 item 15): logout ends a session for good, in one
process and across processes sharing Redis, and a session cannot be forged from the config
file or the Redis contents. Replays go through a raw socket client (tests/rawhttp.py), which
sends the captured cookie value and nothing else, as an attacker holding it would.

In-process tests run a real Runtime and AdminServer (tests/e2e/test_admin_api.py's helpers); the
replica and `--workers 2` tests run `crawlguard run` subprocesses over the real Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import requests
from adminutil import OP, Admin, cookie_of, start_admin, stop_admin
from harness import Proxy, base_config
from rawhttp import Reply, request_bytes, send
from redisutil import RedisServer, private_redis, redis_base, redis_url  # noqa: F401
from test_workers import WorkersProxy

from crawlguard.admin.auth import SESSION_COOKIE

TOKEN_ENV = "CG_TEST_SESSION_OPERATOR_TOKEN"


def replay(port: int, path: str, cookie: str) -> Reply:
    """GET `path` from the admin server with exactly this session cookie (no token)."""
    extra = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    return send(port, request_bytes(path, f"127.0.0.1:{port}", extra=extra))


async def areplay(admin: Admin, path: str, cookie: str) -> Reply:
    return await asyncio.to_thread(replay, admin.server.port, path, cookie)


async def login(admin: Admin, token: str = OP) -> str:
    r = await admin.post("/login", {"token": token})
    assert r.status == 303, await r.text()
    return cookie_of(r)


async def logout(admin: Admin, cookie: str) -> None:
    r = await admin.post("/logout", {}, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    assert (r.status, r.headers["Location"]) == (303, "/login")
    assert "Max-Age=0" in r.headers["Set-Cookie"]


def env_token_sections(state_url: str) -> dict[str, dict[str, object]]:
    return {
        "admin": {"token_env": TOKEN_ENV, "token_sha256": None},
        "state": {"url": state_url},
    }


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Admin]:
    a = await start_admin(tmp_path)
    try:
        yield a
    finally:
        await stop_admin(a)


# -- one process -----------------------------------------------------------------------------------


async def test_a_cookie_replayed_after_logout_is_refused(server: Admin) -> None:
    admin = server
    cookie = await login(admin)
    assert (await areplay(admin, "/api/tenants", cookie)).status == 200
    assert (await areplay(admin, "/", cookie)).status == 200
    await logout(admin, cookie)
    r = await areplay(admin, "/api/tenants", cookie)
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="crawlguard-admin"'
    r = await areplay(admin, "/", cookie)
    assert (r.status, r.header("Location")) == (303, "/login")
    # logging out twice is harmless; the operator token itself is untouched
    await logout(admin, cookie)
    assert (await admin.get("/api/tenants")).status == 200


async def test_logout_ends_only_its_own_session(server: Admin) -> None:
    admin = server
    laptop, phone = await login(admin), await login(admin)
    assert laptop != phone
    await logout(admin, laptop)
    assert (await areplay(admin, "/api/tenants", laptop)).status == 401
    assert (await areplay(admin, "/api/tenants", phone)).status == 200
    # a logout carrying a made-up or malformed cookie ends nothing (ending a session takes
    # its id, i.e. the cookie: the MAC is not needed, so a later token change cannot revive it)
    expiry, _, mac = phone.split(".")
    for junk in ("x", "1.2.3", f"{expiry}.{'B' * 43}.{mac}"):
        r = await admin.post("/logout", {}, headers={"Cookie": f"{SESSION_COOKIE}={junk}"})
        assert r.status == 303
    assert (await areplay(admin, "/api/tenants", phone)).status == 200


# -- processes sharing Redis -----------------------------------------------------------------------


async def test_two_admin_servers_over_one_redis_share_sessions_and_logouts(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With admin.token_env both derive the session key from the token: one login works on
    both, and a logout on either ends it on both."""
    monkeypatch.setenv(TOKEN_ENV, "shared-op")
    a = await start_admin(tmp_path / "a", **env_token_sections(redis_url))
    b = await start_admin(tmp_path / "b", **env_token_sections(redis_url))
    try:
        cookie = await login(a, "shared-op")
        assert (await areplay(b, "/api/tenants", cookie)).status == 200
        await logout(b, cookie)
        assert (await areplay(a, "/api/tenants", cookie)).status == 401
        assert (await areplay(b, "/api/tenants", cookie)).status == 401
        # a changed token ends the sessions made with the old one, on every server
        cookie = await login(b, "shared-op")
        monkeypatch.setenv(TOKEN_ENV, "rotated-op")
        assert (await areplay(a, "/api/tenants", cookie)).status == 401
        assert (await a.get("/api/tenants", token="rotated-op")).status == 200
    finally:
        await stop_admin(a)
        await stop_admin(b)


async def test_with_token_sha256_a_session_stays_on_the_process_that_made_it(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    """The digest is in the config file, so the key also needs this process's own secret."""
    a = await start_admin(tmp_path / "a", state={"url": redis_url})
    b = await start_admin(tmp_path / "b", state={"url": redis_url})
    try:
        cookie = await login(a)
        assert (await areplay(a, "/api/tenants", cookie)).status == 200
        assert (await areplay(b, "/api/tenants", cookie)).status == 401
        await logout(a, cookie)
        assert (await areplay(a, "/api/tenants", cookie)).status == 401
    finally:
        await stop_admin(a)
        await stop_admin(b)


async def test_neither_the_config_nor_redis_is_enough_to_forge_a_session(
    tmp_path: Path,
    redis_base: str,  # noqa: F811
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone who read the config file (the token digest, the Redis URL) and can write to
    Redis records a session of their own and signs a cookie with what they know."""
    from crawlguard.admin.auth import record_key

    prefix = redis_url.split("prefix=", 1)[1]
    monkeypatch.setenv(TOKEN_ENV, OP)
    for i, sections in enumerate(({"state": {"url": redis_url}}, env_token_sections(redis_url))):
        a = await start_admin(tmp_path / str(i), **sections)
        try:
            real = await login(a)
            key = f"crawlguard:{prefix}:admin-session:"
            client = redis.Redis.from_url(redis_base)
            stored = [k.decode() for k in client.scan_iter(match=key + "*")]
            # the store names sessions by a hash: what Redis holds is no cookie
            assert key + record_key(real.split(".")[1]) in stored
            assert not any(real.split(".")[1] in k for k in stored)
            sid = "F" * 43
            client.set(key + record_key(sid), b"1", px=60_000)
            client.close()
            expiry = int(time.time()) + 3600
            digest = hashlib.sha256(OP.encode()).digest()
            msg = f"crawlguard-session:{expiry}:{sid}".encode()
            for mac_key in (digest, hmac.new(digest, digest, hashlib.sha256).digest()):
                forged = f"{expiry}.{sid}.{hmac.new(mac_key, msg, hashlib.sha256).hexdigest()}"
                assert (await areplay(a, "/api/tenants", forged)).status == 401
            assert (await areplay(a, "/api/tenants", real)).status == 200
        finally:
            await stop_admin(a)


async def test_with_redis_down_sessions_fail_closed_and_the_token_still_works(
    tmp_path: Path,
    private_redis: RedisServer,  # noqa: F811
) -> None:
    a = await start_admin(tmp_path, state={"url": private_redis.url(prefix="sessions")})
    try:
        cookie = await login(a)
        assert (await areplay(a, "/api/tenants", cookie)).status == 200
        private_redis.kill()
        r = await areplay(a, "/api/tenants", cookie)
        assert r.status == 503 and int(r.header("Retry-After") or 0) >= 1
        assert b"cannot check the login session" in r.body and b"Bearer" in r.body
        r = await areplay(a, "/", cookie)
        assert r.status == 503 and b"Bearer" in r.body
        assert (await a.get("/api/tenants")).status == 200  # the bearer token needs no Redis
        r = await a.post("/login", {"token": OP})
        assert r.status == 503 and "Cannot start a session" in await r.text()
        assert SESSION_COOKIE not in r.cookies
        # a logout that cannot be recorded says so and leaves the cookie for another try
        r = await a.post("/logout", {}, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        assert r.status == 503 and "not ended" in await r.text()
        assert "Set-Cookie" not in r.headers
        # a cookie that is not well signed never reaches the store: refused as usual
        assert (await areplay(a, "/api/tenants", "1.2.3")).status == 401
        assert (await a.get("/healthz", token=None)).status == 200
        private_redis.start()  # back, and empty: the sessions it held are gone

        async def answered() -> int:
            for _ in range(200):
                status = (await areplay(a, "/api/tenants", cookie)).status
                if status != 503:
                    return status
                await asyncio.sleep(0.05)
            return 503

        assert await answered() == 401
        cookie = await login(a)
        assert (await areplay(a, "/api/tenants", cookie)).status == 200
    finally:
        await stop_admin(a)


# -- real processes --------------------------------------------------------------------------------


def post(
    port: int, path: str, data: dict[str, str], cookie: str | None = None
) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    return session.post(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers=headers,
        allow_redirects=False,
        timeout=10,
    )


def test_logout_on_one_replica_ends_the_session_on_the_other(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    env = {TOKEN_ENV: "replica-op"}
    replicas = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            cfg = base_config(tmp_path / name, **env_token_sections(redis_url))
            replicas.append(Proxy(cfg, tmp_path / name, env=env))
        a, b = replicas
        r = post(a.admin_port, "/login", {"token": "replica-op"})
        assert r.status_code == 303
        cookie = r.cookies[SESSION_COOKIE]
        assert replay(b.admin_port, "/api/tenants", cookie).status == 200
        assert post(b.admin_port, "/logout", {}, cookie).status_code == 303
        assert replay(a.admin_port, "/api/tenants", cookie).status == 401
        assert replay(b.admin_port, "/api/tenants", cookie).status == 401
    finally:
        for p in replicas:
            p.stop()


def test_the_parent_of_workers_ends_sessions_and_counts_wrong_tokens(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    p = WorkersProxy(base_config(tmp_path, state={"url": redis_url}), tmp_path, workers=2)
    try:
        r = post(p.admin_port, "/login", {"token": OP})
        assert r.status_code == 303
        cookie = r.cookies[SESSION_COOKIE]
        assert replay(p.admin_port, "/api/tenants", cookie).status == 200
        assert post(p.admin_port, "/logout", {}, cookie).status_code == 303
        assert replay(p.admin_port, "/api/tenants", cookie).status == 401
        # the parent's own counter, served after the workers' aggregate
        assert p.admin("/api/tenants", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert post(p.admin_port, "/login", {"token": "nope"}).status_code == 401
        text = p.admin("/metrics").text
        assert 'crawlguard_admin_auth_failures_total{reason="bearer"} 1.0' in text
        assert 'crawlguard_admin_auth_failures_total{reason="login"} 1.0' in text
        assert text.count("# TYPE crawlguard_admin_auth_failures_total counter") == 1
        assert "crawlguard_build_info" in text  # the workers' aggregate is still there
    finally:
        p.stop()
