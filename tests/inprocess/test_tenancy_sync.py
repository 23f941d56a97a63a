"""The tenancy sync (crawlguard.tenancy.sync) and the Runtime with `tenancy.source: store`.

A change made through another registry (another process's) reaches the sync's `apply` on
SQLite (polled version) and on PostgreSQL (LISTEN/NOTIFY: the periodic checks are pushed out
of the test's reach, so only a notification can deliver it); a database that goes away keeps
the last good set, logs once and catches up when it is back; the Runtime serves the registry's
tenants from its first request (seeded from the file, which the store then wins over).
With the real proxy and the CLI: tests/e2e/test_tenancy_cli.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import base_config, sha256_hex, tenant

import crawlguard.tenancy.sync as sync_module
from crawlguard.config import Tenant, parse_config
from crawlguard.runtime import Runtime
from crawlguard.tenancy import TenantRegistry, open_registry
from crawlguard.tenancy.sync import TenantSync

if TYPE_CHECKING:
    from pgutil import PgSchema, TcpRelay
    from storeutil import Backend

pytest_plugins = ["pgutil", "storeutil"]  # fixtures: pg_server, pg_schema, relay; backend


def open_for(url: str) -> TenantRegistry:
    return open_registry(parse_config({"store": {"url": url}, "tenancy": {"source": "store"}}))


class Applied:
    """What the sync handed to `apply`, in order."""

    def __init__(self) -> None:
        self.sets: list[tuple[list[str], dict[str, int]]] = []

    async def __call__(
        self, tenants: Sequence[Tenant], *, retired: Mapping[str, Sequence[Any]]
    ) -> None:
        self.sets.append(([t.id for t in tenants], {k: len(v) for k, v in retired.items()}))

    def last(self) -> list[str] | None:
        return self.sets[-1][0] if self.sets else None


async def until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


def basic(tenant_id: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{tenant_id}:{token}".encode()).decode()


async def test_changes_reach_every_process_sync(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the version checks and resyncs are pushed out of reach: only the
    NOTIFY of the change can wake the sync in time."""
    if backend.name == "postgresql":
        monkeypatch.setattr(sync_module, "PG_CHECK_SECONDS", 3600.0)
    control, watched = open_for(backend.url), open_for(backend.url)
    control.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    applied = Applied()
    sync = TenantSync(watched, applied, resync=3600)
    sync.start(asyncio.get_running_loop())
    try:
        assert await until(lambda: applied.last() == ["acme"])
        await asyncio.to_thread(
            control.create, {"id": "beta", "product_tokens": ["BetaBot"]}, actor="x"
        )
        assert await until(lambda: applied.last() == ["acme", "beta"]), applied.sets
        await asyncio.to_thread(control.rotate, "beta", actor="x", grace=600)
        assert await until(lambda: applied.sets[-1][1] == {"beta": 1}), applied.sets
        await asyncio.to_thread(control.disable, "acme", actor="x")
        assert await until(lambda: applied.last() == ["beta"]), applied.sets
        # nothing changed: nothing applied again
        count = len(applied.sets)
        await asyncio.sleep(1.2)
        assert len(applied.sets) == count
    finally:
        await asyncio.to_thread(sync.stop)
        control.close()
        watched.close()


async def test_the_periodic_resync_rebuilds_only_a_set_that_differs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'crawlguard.db'}"
    control, watched = open_for(url), open_for(url)
    control.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    applied = Applied()
    sync = TenantSync(watched, applied, poll=0.05, resync=0.1)
    sync.start(asyncio.get_running_loop())
    try:
        assert await until(lambda: applied.last() == ["acme"])
        checks = sync.checks
        assert await until(lambda: sync.checks > checks + 10)  # several full resyncs
        assert len(applied.sets) == 1
    finally:
        await asyncio.to_thread(sync.stop)
        control.close()
        watched.close()


async def test_another_schemas_notifications_are_not_ours(
    pg_schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgutil import create_schema, drop_schema

    monkeypatch.setattr(sync_module, "PG_CHECK_SECONDS", 3600.0)
    other = create_schema()
    mine, theirs = open_for(pg_schema.url()), open_for(other.url())
    applied = Applied()
    sync = TenantSync(mine, applied, resync=3600)
    sync.start(asyncio.get_running_loop())
    try:
        assert await until(lambda: applied.sets == [([], {})])
        assert await until(lambda: sync.checks == 2)  # once more when the listener is up
        await asyncio.to_thread(
            theirs.create, {"id": "other", "product_tokens": ["OtherBot"]}, actor="x"
        )
        await asyncio.sleep(1.0)
        assert applied.sets == [([], {})] and sync.checks == 2  # not even a look
        await asyncio.to_thread(mine.create, {"id": "own", "product_tokens": ["OwnBot"]}, actor="x")
        assert await until(lambda: applied.last() == ["own"])
    finally:
        await asyncio.to_thread(sync.stop)
        mine.close()
        theirs.close()
        drop_schema(other)


async def test_a_dead_database_keeps_the_last_set_logs_once_and_catches_up(
    pg_schema: PgSchema, relay: TcpRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crawlguard")
    control = open_for(pg_schema.url())
    control.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    watched = open_for(pg_schema.url(port=relay.port))
    applied = Applied()
    sync = TenantSync(watched, applied, poll=0.1, resync=0.5)
    sync.start(asyncio.get_running_loop())
    try:
        assert await until(lambda: applied.last() == ["acme"])
        relay.stop()
        assert await until(lambda: "tenant registry unreachable" in caplog.text, 20)
        await asyncio.to_thread(
            control.create, {"id": "beta", "product_tokens": ["BetaBot"]}, actor="x"
        )
        await asyncio.sleep(2.0)  # several retries while it is down
        assert all(ids == ["acme"] for ids, _ in applied.sets)
        assert caplog.text.count("tenant registry unreachable") == 1
        relay.start()
        assert await until(lambda: applied.last() == ["acme", "beta"], 20), applied.sets
        assert await until(lambda: "tenant registry reachable again" in caplog.text)
    finally:
        await asyncio.to_thread(sync.stop)
        control.close()
        watched.close()


def store_config(tmp: Path, **tenancy: Any) -> Any:
    cfg = base_config(tmp, tenancy={"source": "store", **tenancy})
    cfg["tenants"] = [tenant("acme", ["AcmeBot"])]
    return parse_config(cfg)


async def test_runtime_serves_the_registry_from_its_first_request(tmp_path: Path) -> None:
    cfg = store_config(tmp_path)
    registry = open_for(cfg.store.url)
    _, token = registry.create({"id": "newco", "product_tokens": ["NewcoBot"]}, actor="x")
    guard = await asyncio.to_thread(Runtime, cfg)  # as crawlguard.proxy.master builds it
    try:
        assert guard.tenancy is not None and guard.tenant_sync is not None
        # before `start`: the registry's tenants and the seeded file tenant answer already
        assert guard.authenticate(basic("newco", token)) is not None
        assert guard.authenticate(basic("acme", "acme-secret")) is not None
        assert guard.authenticate(basic("newco", "wrong")) is None
        seeded = registry.audit(tenant="acme")
        assert [(e.actor, e.action) for e in seeded] == [("config-seed", "import")]
        guard.start()
        await asyncio.to_thread(registry.disable, "newco", actor="x")
        assert await until(lambda: guard.authenticate(basic("newco", token)) is None)
        # a reload does not take tenants from the file: the registry wins
        reloaded = parse_config(
            {
                **cfg.model_dump(mode="json"),
                "tenants": [tenant("acme", ["AcmeBot"]), tenant("filed", ["FiledBot"])],
            }
        )
        guard.reload(reloaded)
        assert guard.authenticate(basic("filed", "filed-secret")) is None
        assert guard.authenticate(basic("acme", "acme-secret")) is not None
        assert registry.get("filed") is None
    finally:
        await guard.close()
        registry.close()


async def test_the_file_seeds_only_what_the_registry_lacks(tmp_path: Path) -> None:
    cfg = store_config(tmp_path)
    registry = open_for(cfg.store.url)
    registry.import_file(
        [{"id": "acme", "token_sha256": sha256_hex("stored"), "product_tokens": ["AcmeBot"]}],
        actor="cli:ops",
    )
    guard = await asyncio.to_thread(Runtime, cfg)
    try:
        assert guard.authenticate(basic("acme", "stored")) is not None
        assert guard.authenticate(basic("acme", "acme-secret")) is None
        assert [e.actor for e in registry.audit(tenant="acme")] == ["cli:ops"]
    finally:
        await guard.close()
        registry.close()


async def test_with_source_file_the_registry_is_not_read(tmp_path: Path) -> None:
    cfg = store_config(tmp_path, source="file")
    registry = open_for(cfg.store.url)
    _, token = registry.create({"id": "newco", "product_tokens": ["NewcoBot"]}, actor="x")
    guard = await asyncio.to_thread(Runtime, cfg)
    try:
        assert guard.tenancy is None and guard.tenant_sync is None
        assert guard.authenticate(basic("newco", token)) is None
        assert guard.authenticate(basic("acme", "acme-secret")) is not None
    finally:
        await guard.close()
        registry.close()
