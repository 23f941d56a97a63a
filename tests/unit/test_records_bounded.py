"""Issue 9: bounded records, the bounded group-commit write queue, and retention in the Runtime."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import base_config
from prometheus_client import generate_latest

from crawlguard.admin.metrics import Metrics
from crawlguard.config import parse_config
from crawlguard.policy.decisions import Action, Decision, Kind
from crawlguard.policy.pipeline import RequestInfo
from crawlguard.policy.records import FIELD_LIMITS, ViolationRecord, cut, cut_marker, utc_now_iso
from crawlguard.runtime import Runtime
from crawlguard.store import SQLiteStore, StoreBacklogged, StoreWriter

MB = 1024 * 1024


def big_record(**kw: Any) -> ViolationRecord:
    base: dict[str, Any] = {
        "ts": "2024-05-01T00:00:00.000000Z",
        "tenant": "acme",
        "kind": "robots-disallow",
        "action": "blocked",
        "method": "GET",
        "url": "http://example.test/" + "a" * MB,
        "user_agent": "AcmeBot/1.0 " + "b" * MB,
        "rule": "Disallow: /" + "c" * MB,
        "reason": "d" * MB,
    }
    return ViolationRecord.from_dict({**base, **kw})


# -- records ------------------------------------------------------------------------------------


def test_limits_are_the_documented_ones() -> None:
    assert FIELD_LIMITS == {
        "method": 64,
        "url": 2048,
        "user_agent": 512,
        "rule": 1000,
        "reason": 1000,
    }


def test_cut_keeps_the_head_and_names_the_original_length() -> None:
    text = "x" * 5000
    out = cut(text, 2048)
    assert out is not None and len(out) == 2048
    assert out.endswith("…[cut, 5000 chars]")
    assert out.startswith("x" * 2000)
    assert cut("short", 2048) == "short"
    assert cut(None, 10) is None
    exact = "y" * 2048
    assert cut(exact, 2048) is exact  # at the limit: untouched
    assert cut("z" * 100, 5) == cut_marker(100)[:5]  # never over the limit


def test_bounded_record_cuts_every_client_controlled_field() -> None:
    r = big_record(method="M" * 1000)
    b = r.bounded()
    for name, limit in FIELD_LIMITS.items():
        value = getattr(b, name)
        assert len(value) <= limit, name
        original = len(getattr(r, name))
        assert value.endswith(f"…[cut, {original} chars]"), name
    assert b.url.startswith("http://example.test/aaaa")
    assert b.user_agent is not None and b.user_agent.startswith("AcmeBot/1.0 ")
    # the rest is untouched, and bounding is idempotent
    assert (b.ts, b.tenant, b.kind, b.action) == (r.ts, r.tenant, r.kind, r.action)
    assert b.bounded() == b


def test_small_record_is_returned_as_is() -> None:
    r = ViolationRecord(utc_now_iso(), "acme", "ua-missing", "blocked", "GET", "http://x.test/")
    assert r.bounded() is r


def test_store_bounds_records_too(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        store.record(big_record())
        (got,) = store.query()
        assert got == big_record().bounded()
    finally:
        store.close()
    assert (tmp_path / "s.db").stat().st_size < 200_000


# -- the Runtime: one bounded record for the store and the log -------------------------------------


@pytest.fixture
async def guard(tmp_path: Path) -> AsyncIterator[Runtime]:
    # every record on its own: these tests count individual records (folding: test_records_folded)
    store = {"fold_after": 1000, "fold_tenant_after": 1000}
    g = Runtime(parse_config(base_config(tmp_path, store=store)))
    g.start()
    try:
        yield g
    finally:
        await g.close()


def decision() -> Decision:
    return Decision(Kind.ROBOTS_DISALLOW, rule="Disallow: /" + "r" * MB, reason="q" * MB)


def request(i: int = 0, size: int = MB) -> RequestInfo:
    return RequestInfo(
        "GET", None, "AcmeBot/1.0 " + "u" * size, raw=f"http://x.test/{i}/" + "p" * size
    )


async def test_guard_records_the_bounded_record_in_store_and_log(
    guard: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = guard.tenants["acme"]
    with caplog.at_level(logging.INFO, logger="crawlguard.violations"):
        for i in range(50):
            await guard.record(tenant, decision(), Action.BLOCKED, request(i))
    stored = guard.store.query()
    assert len(stored) == 50
    for r in stored:
        assert len(r.url) == FIELD_LIMITS["url"] and r.url.endswith(" chars]")
        assert r.user_agent is not None and len(r.user_agent) == FIELD_LIMITS["user_agent"]
        assert r.rule is not None and len(r.rule) <= FIELD_LIMITS["rule"]
        assert r.reason is not None and len(r.reason) <= FIELD_LIMITS["reason"]
    lines = [r.getMessage() for r in caplog.records if r.name == "crawlguard.violations"]
    assert len(lines) == 50
    assert all(len(line) < 8000 for line in lines)
    logged = {ViolationRecord.from_dict(json.loads(line)) for line in lines}
    assert logged == set(stored)


async def test_each_record_is_committed_when_record_returns(guard: Runtime, tmp_path: Path) -> None:
    """Durability: another connection sees the record as soon as `record` returns."""
    tenant = guard.tenants["acme"]

    async def one(i: int) -> None:
        await guard.record(tenant, decision(), Action.BLOCKED, request(i, size=10))
        other = SQLiteStore(str(tmp_path / "var" / "crawlguard.db"))
        try:
            urls = {r.url for r in other.query()}
        finally:
            other.close()
        assert f"http://x.test/{i}/" + "p" * 10 in urls

    await asyncio.gather(*(one(i) for i in range(40)))
    assert guard.store_writer.depth == 0


# -- the write queue ------------------------------------------------------------------------------


class CountingStore(SQLiteStore):
    """A real SQLite store that counts batches and can be made to stall or fail."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def record_many(self, items: Sequence[tuple[ViolationRecord, bytes | None]]) -> None:
        self.gate.wait(10)
        self.batches.append(len(items))
        if self.fail:
            raise RuntimeError("disk on fire")
        super().record_many(items)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[CountingStore, Metrics, ThreadPoolExecutor]]:
    store = CountingStore(str(tmp_path / "w.db"))
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        yield store, Metrics(), executor
    finally:
        store.gate.set()
        executor.shutdown(wait=True)
        store.close()


def rec(i: int) -> ViolationRecord:
    return ViolationRecord(utc_now_iso(), "acme", "ua-generic", "blocked", "GET", f"http://x/{i}")


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_group_commit_batches_concurrent_records(setup: Any) -> None:
    store, metrics, executor = setup
    writer = StoreWriter(store, executor, metrics=metrics, batch_max=64)
    writer.start()
    store.gate.clear()  # the first batch stalls, so the rest queue up behind it
    first = asyncio.ensure_future(writer.write(rec(-1)))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(writer.write(rec(i))) for i in range(200)]
    await asyncio.sleep(0)
    assert writer.depth == 201
    assert sample(metrics, "crawlguard_store_queue_depth") == 201
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert sum(store.batches) == 201
    assert store.batches[0] == 1 and max(store.batches) == 64
    assert len(store.batches) <= 1 + 4  # 200 records in batches of at most 64
    assert len(store.query()) == 201
    assert writer.depth == 0 and sample(metrics, "crawlguard_store_queue_depth") == 0
    assert sample(metrics, "crawlguard_store_write_seconds_count") == len(store.batches)
    await writer.close()


async def test_full_queue_raises_store_backlogged(setup: Any) -> None:
    store, metrics, executor = setup
    writer = StoreWriter(store, executor, metrics=metrics, queue_max=10)
    store.gate.clear()
    waiting = [asyncio.ensure_future(writer.write(rec(i))) for i in range(10)]
    await asyncio.sleep(0.05)
    with pytest.raises(StoreBacklogged, match="at most 10"):
        writer.submit(rec(99))
    assert sample(metrics, "crawlguard_store_backlogged_total") == 1
    store.gate.set()
    await asyncio.gather(*waiting)
    await writer.write(rec(100))  # room again
    assert len(store.query()) == 11
    await writer.close()


async def test_guard_record_raises_store_backlogged_before_logging(
    guard: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    guard.store_writer.queue_max = 0
    with (
        caplog.at_level(logging.INFO, logger="crawlguard.violations"),
        pytest.raises(StoreBacklogged),
    ):
        await guard.record(guard.tenants["acme"], decision(), Action.BLOCKED, request())
    assert not [r for r in caplog.records if r.name == "crawlguard.violations"]
    assert guard.metrics.registry.get_sample_value(
        "crawlguard_violations_total", {"tenant": "acme", "kind": "robots-disallow"}
    ) in (None, 0.0)
    assert guard.store.query() == []


async def test_a_failed_batch_is_logged_once_and_counted_per_record(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store, metrics, executor = setup
    writer = StoreWriter(store, executor, metrics=metrics)
    store.fail = True
    store.gate.clear()
    waiting = [asyncio.ensure_future(writer.write(rec(i))) for i in range(5)]
    await asyncio.sleep(0.05)
    store.gate.set()
    with caplog.at_level(logging.ERROR, logger="crawlguard"):
        await asyncio.gather(*waiting)  # callers return: their records are in the log only
    assert sum(store.batches) == 5
    assert sample(metrics, "crawlguard_store_errors_total") == 5
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == len(store.batches)
    assert writer.depth == 0
    store.fail = False
    await writer.write(rec(10))
    assert [r.url for r in store.query()] == ["http://x/10"]
    await writer.close()


async def test_close_drains_the_queue_and_a_cancelled_caller_is_still_written(
    setup: Any,
) -> None:
    store, metrics, executor = setup
    writer = StoreWriter(store, executor, metrics=metrics)
    store.gate.clear()
    tasks = [asyncio.ensure_future(writer.write(rec(i))) for i in range(20)]
    await asyncio.sleep(0.05)
    tasks[5].cancel()
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    store.gate.set()
    await closing
    assert len(store.query()) == 20
    await writer.write(rec(99))  # after close: not written, counted, no exception
    assert len(store.query()) == 20
    assert sample(metrics, "crawlguard_store_errors_total") == 1
    assert b"crawlguard_store_queue_depth 0.0" in generate_latest(metrics.registry)


# -- retention in the Runtime ---------------------------------------------------------------------


async def test_guard_runs_retention_in_the_background(tmp_path: Path) -> None:
    guard = Runtime(parse_config(base_config(tmp_path, store={"retention_days": 7})))
    old = ViolationRecord(
        "2020-01-01T00:00:00Z", "acme", "ua-generic", "blocked", "GET", "http://old/"
    )
    guard.store.record(old)
    guard.store_writer.retention_first_delay = 0.01
    guard.store_writer.retention_interval = 0.05
    calls: list[str] = []
    prune_step = guard.store.prune_step

    def spy(before: str, limit: int = 1000) -> Any:
        calls.append(before)
        return prune_step(before, limit)

    guard.store.prune_step = spy  # type: ignore[method-assign]
    guard.start()
    try:
        await guard.record(guard.tenants["acme"], decision(), Action.BLOCKED, request(size=1))
        for _ in range(100):
            if len({c for c in calls}) >= 2:  # ran at least twice: periodic, not once
                break
            await asyncio.sleep(0.02)
        assert len(set(calls)) >= 2
        assert [r.url for r in guard.store.query()] == ["http://x.test/0/p"]
        assert (
            guard.metrics.registry.get_sample_value(
                "crawlguard_store_pruned_total", {"table": "violations"}
            )
            == 1
        )
    finally:
        await guard.close()


async def test_guard_without_retention_starts_no_prune(tmp_path: Path) -> None:
    """`retention_days: null` (explicitly: the default is 30) keeps everything."""
    guard = Runtime(parse_config(base_config(tmp_path, store={"retention_days": None})))
    assert guard.store_writer.retention_days is None
    guard.store.record(
        ViolationRecord(
            "2020-01-01T00:00:00Z", "acme", "ua-generic", "blocked", "GET", "http://old/"
        )
    )
    guard.store_writer.retention_first_delay = 0
    guard.start()
    try:
        await asyncio.sleep(0.05)
        assert len(guard.store.query()) == 1
    finally:
        await guard.close()
