"""The admin server in-process for tests: a real Runtime and AdminServer on loopback and an
aiohttp client that sends exactly the token or cookie a test names (shared by the admin API,
session and throttle tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from harness import base_config

from crawlguard.admin import AdminServer
from crawlguard.admin.auth import SESSION_COOKIE
from crawlguard.config import parse_config
from crawlguard.policy.records import ViolationRecord
from crawlguard.runtime import Runtime

OP = "op"  # the operator token of harness.base_config


@dataclass
class Admin:
    guard: Runtime
    server: AdminServer
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def get(
        self, path: str, token: str | None = OP, headers: dict[str, str] | None = None, **kw: Any
    ) -> aiohttp.ClientResponse:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        async with self.session.get(self.base + path, headers=h, allow_redirects=False, **kw) as r:
            await r.read()
            return r

    async def json(self, path: str, **kw: Any) -> Any:
        r = await self.get(path, **kw)
        assert r.status == 200, (r.status, await r.text())
        return await r.json()

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> aiohttp.ClientResponse:
        async with self.session.post(self.base + path, data=data, allow_redirects=False, **kw) as r:
            await r.read()
            return r

    def seed(self, *records: ViolationRecord) -> None:
        self.guard.store.record_many([(rec, None) for rec in records])


async def start_admin(
    tmp_path: Path, server_kw: dict[str, Any] | None = None, **sections: Any
) -> Admin:
    guard = Runtime(parse_config(base_config(tmp_path, **sections)))
    guard.start()
    server = AdminServer(guard, **(server_kw or {}))
    await server.start()
    # no cookie jar: every test says exactly which cookie it sends
    session = aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.DummyCookieJar())
    return Admin(guard, server, session)


async def stop_admin(admin: Admin) -> None:
    await admin.session.close()
    await admin.server.stop()
    await admin.guard.close()


def cookie_of(r: aiohttp.ClientResponse) -> str:
    morsel = r.cookies[SESSION_COOKIE]
    return morsel.value
