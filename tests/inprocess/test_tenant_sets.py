"""`Runtime.replace_tenants` (issue 20): a new tenant set built off the loop, unchanged objects
reused, a rotation's grace for the old token, and tunnels that keep the token they were opened
with. The addon's hooks are called in-process (as tests/inprocess/test_addon_inprocess.py);
time is driven by the expiries given (in the past or the future), never by sleeping."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import GOOD_UA
from inprocess import Env, running
from mitmproxy import http
from mitmproxy.test import tflow, tutils
from netguard import netguard  # noqa: F401  (fixture)
from origins import RecordingOrigin, respond, routes

from crawlguard.config import Tenant
from crawlguard.policy.decisions import DECISION_HEADER

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("netguard")]

OLD, NEW = "acme-secret", "acme-rotated"
HOUR = 3600.0


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def basic(tenant: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{tenant}:{token}".encode()).decode()


def rotated(env: Env, token: str = NEW) -> list[Tenant]:
    """The running tenants with acme's token replaced by `token`."""
    return [
        t.model_copy(update={"token_sha256": hashlib.sha256(token.encode()).hexdigest()})
        if t.id == "acme"
        else t
        for t in env.guard.cfg.tenants
    ]


def flow(port: int, *, authorization: str | None, client: object | None = None) -> http.HTTPFlow:
    headers = [("User-Agent", GOOD_UA)]
    if authorization is not None:
        headers.append(("Proxy-Authorization", authorization))
    connect = client is None
    req = tutils.treq(
        host="127.0.0.1",
        port=port,
        path=b"" if connect else b"/page",
        method=b"CONNECT" if connect else b"GET",
        scheme=b"http",
        authority=f"127.0.0.1:{port}".encode() if connect else b"",
        headers=http.Headers([(k.encode(), v.encode()) for k, v in headers]),
        content=b"",
    )
    return tflow.tflow(client_conn=client or tflow.tclient_conn(), req=req)  # type: ignore[arg-type]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running(tmp_path) as e:
        yield e


@pytest.fixture
async def origin() -> AsyncIterator[RecordingOrigin]:
    handler = routes(
        {"/robots.txt": respond(body=b"User-agent: *\nAllow: /\n")},
        default=respond(200, b"page\n"),
    )
    async with RecordingOrigin(handler) as o:
        yield o


async def test_no_token_change_reuses_the_index_and_unchanged_tenants(env: Env) -> None:
    guard = env.guard
    before, index = dict(guard.tenants), guard.tenant_set.index
    await guard.replace_tenants(list(guard.cfg.tenants))
    assert guard.tenant_set.index is index
    assert all(guard.tenants[tid] is runtime for tid, runtime in before.items())

    changed = [
        t.model_copy(update={"mode": "monitor"}) if t.id == "acme" else t for t in guard.cfg.tenants
    ]
    await guard.replace_tenants(changed)
    assert guard.tenant_set.index is index  # no product token changed anywhere
    assert guard.tenants["acme"] is not before["acme"]
    assert guard.tenants["acme"].cfg.mode == "monitor"
    assert guard.tenants["globex"] is before["globex"]
    assert guard.tenants["initech"] is before["initech"]
    assert all(r.ua.index is index for r in guard.tenants.values())


async def test_a_token_change_updates_the_one_shared_index(env: Env) -> None:
    guard = env.guard
    before = dict(guard.tenants)
    renamed = [
        t.model_copy(update={"product_tokens": ["GlobexNews"]}) if t.id == "globex" else t
        for t in guard.cfg.tenants
    ]
    await guard.replace_tenants(renamed)
    index = guard.tenant_set.index
    assert index.owner("globexnews") == "globex" and index.owner("GlobexCrawler") is None
    assert len(index) == 3
    assert all(r.ua.index is index for r in guard.tenants.values())
    assert guard.tenants["acme"] is before["acme"]  # its check reads the new index
    acme = guard.tenants["acme"].ua
    carrying = "AcmeBot/1.0 (+https://acme.example) GlobexNews/1.0"
    assert acme.evaluate(carrying).rule == "mismatch:another-tenant:GlobexNews"
    assert acme.evaluate("AcmeBot/1.0 (+https://acme.example) GlobexCrawler/1.0").allowed


async def test_removed_tenant_is_refused(env: Env) -> None:
    guard = env.guard
    await guard.replace_tenants([t for t in guard.cfg.tenants if t.id != "globex"])
    assert guard.authenticate(basic("globex", "globex-secret")) is None
    assert guard.authenticate(basic("acme", OLD)) is guard.tenants["acme"]


async def test_a_retired_token_authenticates_until_its_grace_ends(env: Env) -> None:
    guard = env.guard
    await guard.replace_tenants(rotated(env), retired={"acme": [(digest(OLD), time.time() + HOUR)]})
    acme = guard.tenants["acme"]
    assert guard.authenticate(basic("acme", NEW)) is acme
    assert guard.authenticate(basic("acme", OLD)) is acme  # in its grace
    assert guard.authenticate(basic("acme", "other")) is None
    assert guard.authenticate(basic("globex", OLD)) is None  # a grace is per tenant

    await guard.replace_tenants(rotated(env), retired={"acme": [(digest(OLD), time.time() - 1)]})
    assert guard.authenticate(basic("acme", OLD)) is None  # grace over
    assert guard.authenticate(basic("acme", NEW)) is guard.tenants["acme"]


async def test_a_tunnel_keeps_the_token_it_was_opened_with(
    env: Env, origin: RecordingOrigin
) -> None:
    """Opened with the old token during the grace: works until the grace ends, then 407 and
    closed. Opened with the new token: works on."""
    guard, addon = env.guard, env.addon
    old_connect = flow(origin.port, authorization=basic("acme", OLD))
    await addon.http_connect(old_connect)
    assert old_connect.response is None

    in_grace = {"acme": [(digest(OLD), time.time() + HOUR)]}
    await guard.replace_tenants(rotated(env), retired=in_grace)
    new_connect = flow(origin.port, authorization=basic("acme", NEW))
    await addon.http_connect(new_connect)
    assert new_connect.response is None
    late_old = flow(origin.port, authorization=basic("acme", OLD))
    await addon.http_connect(late_old)
    assert late_old.response is None  # the old token opens tunnels during its grace too

    for connect in (old_connect, new_connect):
        inside = flow(origin.port, authorization=None, client=connect.client_conn)
        await addon.requestheaders(inside)
        assert inside.response is None, inside.response and inside.response.get_text()

    await guard.replace_tenants(rotated(env), retired={"acme": [(digest(OLD), time.time() - 1)]})
    inside_old = flow(origin.port, authorization=None, client=old_connect.client_conn)
    await addon.requestheaders(inside_old)
    assert inside_old.response is not None and inside_old.response.status_code == 407
    assert inside_old.response.headers.get("Connection") == "close"
    inside_new = flow(origin.port, authorization=None, client=new_connect.client_conn)
    await addon.requestheaders(inside_new)
    assert inside_new.response is None
    refused = flow(origin.port, authorization=basic("acme", OLD))
    await addon.http_connect(refused)
    assert refused.response is not None and refused.response.status_code == 407
    assert refused.response.headers.get(DECISION_HEADER) == "auth-required"


async def test_a_reload_builds_off_the_loop_and_keeps_unchanged_tenants(env: Env) -> None:
    """SIGHUP's path: the file read and the set built in a thread; the running Config then
    holds the running tenants' configs, not the file's second copies."""
    guard = env.guard
    before = dict(guard.tenants)
    changed = [
        t.model_copy(update={"mode": "monitor"}) if t.id == "initech" else t.model_copy()
        for t in guard.cfg.tenants
    ]
    new_cfg = guard.cfg.model_copy(update={"tenants": changed})
    assert await guard.reload_async(lambda: new_cfg) == []
    assert guard.tenants["acme"] is before["acme"]
    assert guard.tenants["initech"] is not before["initech"]
    assert [t.id for t in guard.cfg.tenants] == ["acme", "globex", "initech"]
    assert guard.cfg.tenants[0] is before["acme"].cfg  # not the reloaded file's copy
    assert guard.cfg.tenants[2] is guard.tenants["initech"].cfg
