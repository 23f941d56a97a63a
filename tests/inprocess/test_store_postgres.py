"""PostgreSQL store specifics (issue 11): schema creation under concurrent starts, connection
handling, the spool while PostgreSQL is unreachable. Across processes and with the real proxy:
tests/e2e/test_store_postgres_proxy.py.

What every backend must do is in tests/inprocess/test_store_contract.py. Outages are real from the
client's view: the store talks to PostgreSQL through a TCP relay (pgutil.TcpRelay) that the
test cuts and restores; the shared server is never touched. Each test has its own schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from harness import free_port, wait_for

from crawlguard.admin.metrics import Metrics
from crawlguard.policy.records import ViolationRecord
from crawlguard.store import (
    StoreBacklogged,
    StoreError,
    StoreUnavailable,
    StoreWriter,
    open_store,
)
from crawlguard.store.postgres import SCHEMA_VERSION, PostgresStore
from crawlguard.store.spool import SpoolingStore

if TYPE_CHECKING:
    from pgutil import PgSchema, TcpRelay

pytest_plugins = ["pgutil"]  # its fixtures: pg_server, pg_schema, relay

ROBOTS = b"User-agent: *\nDisallow: /private/\n"


def rec(i: int, tenant: str = "acme", **kw: Any) -> ViolationRecord:
    base: dict[str, Any] = {
        "ts": f"2024-05-01T00:{i // 60:02d}:{i % 60:02d}.000000Z",
        "tenant": tenant,
        "kind": "ua-generic",
        "action": "blocked",
        "method": "GET",
        "url": f"http://example.test/{i}",
    }
    return ViolationRecord.from_dict({**base, **kw})


def urls(schema: PgSchema) -> list[str]:
    return [u for (u,) in schema.rows("SELECT url FROM violations ORDER BY id")]


def spooling(url: str, directory: Path, **kw: Any) -> SpoolingStore:
    store = open_store(url, spool_dir=directory, **kw)
    assert isinstance(store, SpoolingStore)
    store.retry_max = 0.5  # tests wait on conditions; keep the reconnect back-off short
    return store


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


# -- schema ------------------------------------------------------------------------------------


def test_concurrent_first_opens_create_the_schema_once(pg_schema: PgSchema) -> None:
    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def open_one(i: int) -> None:
        try:
            barrier.wait(10)
            store = PostgresStore(pg_schema.url())
            stores.append(store)
            store.record(rec(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert pg_schema.rows("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        assert pg_schema.count("violations") == n
    finally:
        for store in stores:
            store.close()


def test_opening_again_is_idempotent_and_the_indexes_exist(pg_schema: PgSchema) -> None:
    first = PostgresStore(pg_schema.url())
    first.record(rec(1))
    first.close()

    def catalogue() -> list[tuple[Any, ...]]:
        return pg_schema.rows(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1",
            (pg_schema.name,),
        )

    before = catalogue()
    PostgresStore(pg_schema.url()).close()
    assert catalogue() == before
    assert pg_schema.count("violations") == 1
    assert pg_schema.rows("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    definitions = {name: sql for name, sql in before}
    for name, columns in [
        ("violations_tenant_ts", "(tenant, ts)"),
        ("violations_kind_ts", "(kind, ts)"),
        ("violations_host_ts", "(host, ts)"),
        ("violations_ts", "(ts, id)"),
        ("violations_robots_sha256", "(robots_sha256)"),
        ("violations_uid_key", "(uid)"),
    ]:
        assert columns in definitions[name], (name, definitions.get(name))
    assert "UNIQUE" in definitions["violations_uid_key"]


def test_filters_use_their_indexes(pg_schema: PgSchema) -> None:
    PostgresStore(pg_schema.url()).close()
    with psycopg.connect(pg_schema.url(), autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        for where, index in [
            ("tenant = 'a' AND ts >= now()", "violations_tenant_ts"),
            ("kind = 'a' AND ts >= now()", "violations_kind_ts"),
            ("host = 'a'", "violations_host_ts"),
            ("ts >= now()", "violations_ts"),
        ]:
            plan = conn.execute(
                f"EXPLAIN SELECT id FROM violations WHERE {where} ORDER BY ts DESC, id DESC"
            ).fetchall()
            assert index in str(plan), (where, plan)


def test_a_newer_schema_is_refused(pg_schema: PgSchema) -> None:
    PostgresStore(pg_schema.url()).close()
    pg_schema.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        PostgresStore(pg_schema.url())


# The schema crawlguard created before folded records (version 1), verbatim.
VERSION_1_SCHEMA = [
    """CREATE TABLE schema_version (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        version   integer NOT NULL)""",
    """CREATE TABLE violations (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, uid uuid NOT NULL,
        ts timestamptz NOT NULL, tenant text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL, action text COLLATE "C" NOT NULL,
        method text NOT NULL, url text NOT NULL, user_agent text, rule text,
        crawl_delay double precision, retry_after bigint, robots_sha256 text COLLATE "C",
        delay_seconds double precision, reason text, host text COLLATE "C",
        CONSTRAINT violations_uid_key UNIQUE (uid))""",
    "CREATE INDEX violations_tenant_ts ON violations (tenant, ts)",
    "CREATE INDEX violations_kind_ts ON violations (kind, ts)",
    "CREATE INDEX violations_host_ts ON violations (host, ts)",
    "CREATE INDEX violations_ts ON violations (ts, id)",
    "CREATE INDEX violations_robots_sha256 ON violations (robots_sha256) "
    "WHERE robots_sha256 IS NOT NULL",
    """CREATE TABLE robots_bodies (sha256 text COLLATE "C" PRIMARY KEY, body bytea NOT NULL,
        first_seen timestamptz NOT NULL)""",
    """CREATE TABLE request_counts (hour timestamptz NOT NULL, tenant text COLLATE "C" NOT NULL,
        decision text COLLATE "C" NOT NULL, n bigint NOT NULL,
        PRIMARY KEY (hour, tenant, decision))""",
    "INSERT INTO schema_version (version) VALUES (1)",
    "INSERT INTO violations (uid, ts, tenant, kind, action, method, url, host) VALUES "
    "(gen_random_uuid(), '2024-05-01T00:00:00Z', 'acme', 'ua-generic', 'blocked', 'GET', "
    "'http://v1/', 'v1')",
]


def test_a_version_1_store_gets_fold_columns_and_keeps_its_records(pg_schema: PgSchema) -> None:
    for statement in VERSION_1_SCHEMA:
        pg_schema.execute(statement)
    store = PostgresStore(pg_schema.url())
    try:
        [old] = store.query()
        assert (old.url, old.count, old.first_ts, old.last_ts) == ("http://v1/", 1, None, None)
        store.record(
            rec(60, count=9, first_ts="2024-05-01T00:01:00Z", last_ts="2024-05-01T00:01:30Z")
        )
        newest = store.query(limit=1)[0]
        assert (newest.count, newest.first_ts, newest.last_ts) == (
            9,
            "2024-05-01T00:01:00.000000Z",
            "2024-05-01T00:01:30.000000Z",
        )
        assert store.report().tenants["acme"].violations == {"ua-generic": 10}
    finally:
        store.close()
    assert pg_schema.rows("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)] == [(3,)]
    PostgresStore(pg_schema.url()).close()  # opening the migrated schema again changes nothing
    assert pg_schema.rows("SELECT count(*), sum(count) FROM violations") == [(2, 10)]


def test_a_table_crawlguard_did_not_create_is_refused(pg_schema: PgSchema) -> None:
    pg_schema.execute("CREATE TABLE violations (x integer)")
    with pytest.raises(StoreError, match="did not create"):
        PostgresStore(pg_schema.url())
    assert pg_schema.rows("SELECT to_regclass('schema_version')") == [(None,)]


def test_an_unreachable_server_is_store_unavailable() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StoreUnavailable, match="cannot connect to the PostgreSQL store"):
        open_store(f"postgresql://postgres@127.0.0.1:{port}/test")


def test_text_postgresql_refuses_is_stored_visibly(pg_schema: PgSchema) -> None:
    store = PostgresStore(pg_schema.url())
    try:
        store.record(rec(1, user_agent="Bot\x00/1.0", reason="bad \udcff byte"))
        (got,) = store.query()
        assert got.user_agent == "Bot\u2400/1.0"
        assert got.reason == "bad \\udcff byte"
    finally:
        store.close()


def test_uids_make_a_repeated_batch_a_no_op(pg_schema: PgSchema) -> None:
    store = PostgresStore(pg_schema.url())
    try:
        items = [(rec(i), None) for i in range(5)]
        uids = [uuid.uuid4().hex for _ in items]
        store.record_many(items, uids)
        store.record_many(items, uids)  # a commit whose outcome was unknown, sent again
        store.record_many(items[:2], uids[:2])
        assert pg_schema.count("violations") == 5
        store.record_many(items)  # fresh uids: new records
        assert pg_schema.count("violations") == 10
    finally:
        store.close()


def test_a_lost_connection_is_made_again(pg_schema: PgSchema, relay: TcpRelay) -> None:
    store = PostgresStore(pg_schema.url(port=relay.port))
    try:
        store.record(rec(1))
        assert len(store.query()) == 1
        relay.stop()
        relay.start()  # the server "restarted": both connections are dead
        assert len(store.query()) == 1  # a read is retried once on a fresh connection
        with pytest.raises(StoreUnavailable):
            store.record(rec(2))  # a write is not retried here (the proxy spools it)
        store.record(rec(2))
        assert len(store.query()) == 2
        relay.stop()
        with pytest.raises(StoreUnavailable):
            store.query()
    finally:
        store.close()


# -- the spool ---------------------------------------------------------------------------------


def test_an_outage_spools_and_every_record_arrives_exactly_once(
    pg_schema: PgSchema,
    relay: TcpRelay,
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    store = spooling(pg_schema.url(port=relay.port), tmp_path / "spool", metrics=metrics)
    try:
        body = ROBOTS
        sha = hashlib.sha256(body).hexdigest()
        store.record_many([(rec(i), None) for i in range(5)])
        assert not store.spooling and urls(pg_schema) == [
            f"http://example.test/{i}" for i in range(5)
        ]

        relay.stop()
        for i in range(5, 25, 4):  # batches, as the writer commits them
            store.record_many([(rec(j, robots_sha256=sha), body) for j in range(i, i + 4)])
        assert store.spooling
        lines = store.spool_path.read_bytes().splitlines()
        assert len(lines) == 21  # 20 records and the robots.txt body once
        assert sum(b'"body"' in line for line in lines) == 1
        assert sample(metrics, "crawlguard_store_spooled_total") == 20
        store.add_request_counts({("acme", "allowed"): 7}, "2024-05-01T00:00:00Z")  # kept
        with pytest.raises(StoreUnavailable, match="spooled"):
            store.query()  # reads fail fast while PostgreSQL is away
        assert pg_schema.count("violations") == 5

        relay.start()
        assert wait_for(lambda: not store.spooling, timeout=30)
        assert urls(pg_schema) == [f"http://example.test/{i}" for i in range(25)]  # in order
        assert pg_schema.rows("SELECT count(DISTINCT uid) FROM violations") == [(25,)]
        assert store.robots_body(sha) == body
        assert store.report().tenants["acme"].requests == {"allowed": 7}
        assert store.spool_path.stat().st_size == 0
        assert sample(metrics, "crawlguard_store_replayed_total") == 20
        store.record(rec(99))  # straight to PostgreSQL again
        assert pg_schema.count("violations") == 26 and store.spool_path.stat().st_size == 0
    finally:
        store.close()
    assert not list((tmp_path / "spool").iterdir())  # an empty spool is removed at close


def test_a_store_opened_while_postgresql_is_down_spools_from_the_start(
    pg_schema: PgSchema,
    relay: TcpRelay,
    tmp_path: Path,
) -> None:
    relay.stop()
    store = spooling(pg_schema.url(port=relay.port), tmp_path / "spool")
    try:
        assert store.spooling
        store.record(rec(1))
        relay.start()
        assert wait_for(lambda: not store.spooling, timeout=30)
        assert urls(pg_schema) == ["http://example.test/1"]
    finally:
        store.close()


def test_a_replay_repeated_after_a_crash_writes_nothing_twice(
    pg_schema: PgSchema,
    tmp_path: Path,
) -> None:
    """A process that died mid-replay left its spool behind, half of it already stored; the
    next start replays all of it: uids keep every record single. A torn last line (a write
    the crash interrupted, never acknowledged) and an unreadable line are skipped."""
    spool = tmp_path / "spool"
    spool.mkdir()
    records = [(uuid.uuid4().hex, rec(i)) for i in range(10)]
    done = PostgresStore(pg_schema.url())
    done.record_many([(r, None) for _, r in records[:6]], [u for u, _ in records[:6]])
    done.close()
    lines = [json.dumps({"uid": u, "record": r.to_dict()}) + "\n" for u, r in records]
    lines.insert(3, "{not json\n")
    torn = json.dumps({"uid": uuid.uuid4().hex, "record": rec(50).to_dict()})[:40]
    (spool / "spool-00000000000000000001-1.jsonl").write_text("".join(lines) + torn)
    store = spooling(pg_schema.url(), spool)
    try:
        assert wait_for(lambda: not store.spooling, timeout=30)
        assert urls(pg_schema) == [f"http://example.test/{i}" for i in range(10)]
    finally:
        store.close()


def test_a_spool_write_that_fails_is_cut_back_and_reported(
    pg_schema: PgSchema, relay: TcpRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crawlguard.store.spool as spool_module

    relay.stop()
    store = spooling(pg_schema.url(port=relay.port), tmp_path / "spool")
    try:
        store.record_many([(rec(1), None), (rec(2), None)])
        size = store.spool_path.stat().st_size

        def disk_full(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(spool_module, "_fdatasync", disk_full)
        with pytest.raises(StoreError, match="No space left on device"):
            store.record(rec(3))  # not durable: the writer counts it as a store error
        assert store.spool_path.stat().st_size == size  # no half batch left behind
        monkeypatch.undo()
        store.record(rec(4))
        relay.start()
        assert wait_for(lambda: not store.spooling, timeout=30)
        assert urls(pg_schema) == [f"http://example.test/{i}" for i in (1, 2, 4)]
    finally:
        store.close()


def test_a_live_process_spool_is_not_adopted(pg_schema: PgSchema, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = spooling(pg_schema.url(), spool)
    second = spooling(pg_schema.url(), spool)
    try:
        assert first.spool_path != second.spool_path
        assert not first.spooling and not second.spooling  # neither took the other's file
        assert first.spool_path.exists() and second.spool_path.exists()
    finally:
        first.close()
        second.close()


def test_an_unusable_spool_directory_is_a_store_error(pg_schema: PgSchema, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the store spool"):
        open_store(pg_schema.url(), spool_dir=blocker / "spool")


async def test_the_writer_still_refuses_when_its_queue_is_full(
    pg_schema: PgSchema,
    relay: TcpRelay,
    tmp_path: Path,
) -> None:
    relay.stop()
    store = spooling(pg_schema.url(port=relay.port), tmp_path / "spool")
    executor = ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    executor.submit(gate.wait, 30)  # the writer thread is busy: nothing drains
    metrics = Metrics()
    writer = StoreWriter(store, executor, metrics=metrics, queue_max=5)
    try:
        pending = [writer.submit(rec(i)) for i in range(5)]
        with pytest.raises(StoreBacklogged):
            writer.submit(rec(5))
        assert sample(metrics, "crawlguard_store_backlogged_total") == 1
        gate.set()
        await asyncio.gather(*pending)  # durable in the spool
        assert len(store.spool_path.read_bytes().splitlines()) == 5
        relay.start()
        await asyncio.to_thread(wait_for, lambda: not store.spooling, 30)
        assert pg_schema.count("violations") == 5
    finally:
        gate.set()
        await writer.close()
        executor.shutdown(wait=True)
        store.close()


# -- the real proxy ----------------------------------------------------------------------------
