"""The SQLite violation store: round trip, filters, robots bodies, durability, threads, report."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crawlguard.records import FIELDS, ViolationRecord, utc_now_iso
from crawlguard.store import (
    SQLiteStore,
    StoreError,
    ViolationStore,
    normalize_ts,
    open_store,
    parse_since,
)

ROBOTS = b"User-agent: *\nDisallow: /private/\n"
ROBOTS_SHA = hashlib.sha256(ROBOTS).hexdigest()


def rec(ts: str, tenant: str = "acme", kind: str = "ua-generic", **kw: object) -> ViolationRecord:
    base: dict[str, object] = {
        "ts": ts,
        "tenant": tenant,
        "kind": kind,
        "action": "blocked",
        "method": "GET",
        "url": f"http://example.test/{tenant}/{kind}/{ts}",
    }
    return ViolationRecord.from_dict({**base, **kw})


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'crawlguard.db'}"


@pytest.fixture
def store(url: str) -> Iterator[ViolationStore]:
    s = open_store(url)
    yield s
    s.close()


def test_round_trip_keeps_every_field(store: ViolationStore) -> None:
    full = ViolationRecord(
        ts="2024-05-01T12:00:00.123456Z",
        tenant="acme",
        kind="crawl-delay",
        action="delayed",
        method="POST",
        url="https://example.test/a?b=c&d=é",
        user_agent="AcmeBot/1.2 (+https://acme.example/bot)",
        rule="Crawl-delay: 2.5",
        crawl_delay=2.5,
        retry_after=3,
        robots_sha256=ROBOTS_SHA,
        delay_seconds=1.25,
        reason="request came 1.25 s early",
    )
    assert all(getattr(full, f) is not None for f in FIELDS)
    store.record(full, ROBOTS)
    minimal = rec("2024-05-01T11:00:00.000000Z")
    store.record(minimal)
    assert store.query() == [full, minimal]
    got = store.query()[0]
    assert isinstance(got.crawl_delay, float) and isinstance(got.retry_after, int)


def test_timestamps_are_normalised_to_utc(store: ViolationStore) -> None:
    store.record(rec("2024-05-01T14:00:00+02:00"))
    store.record(rec("2024-05-01T12:30:00Z"))
    store.record(rec("2024-05-01T12:15:00"))  # naive: UTC
    assert [r.ts for r in store.query()] == [
        "2024-05-01T12:30:00.000000Z",
        "2024-05-01T12:15:00.000000Z",
        "2024-05-01T12:00:00.000000Z",
    ]
    with pytest.raises(ValueError, match="ISO 8601"):
        store.record(rec("yesterday"))


def test_filters_and_newest_first(store: ViolationStore) -> None:
    for i, (tenant, kind) in enumerate(
        [("acme", "ua-generic"), ("globex", "robots-disallow"), ("acme", "robots-disallow"),
         ("acme", "crawl-delay"), ("globex", "ua-generic"), ("acme", "robots-disallow")]
    ):  # fmt: skip
        store.record(rec(f"2024-05-0{i + 1}T00:00:00Z", tenant, kind))
    days = lambda recs: [r.ts[8:10] for r in recs]  # noqa: E731
    assert days(store.query()) == ["06", "05", "04", "03", "02", "01"]
    assert days(store.query(tenant="acme")) == ["06", "04", "03", "01"]
    assert days(store.query(kind="robots-disallow")) == ["06", "03", "02"]
    assert days(store.query(tenant="acme", kind="robots-disallow")) == ["06", "03"]
    assert days(store.query(since="2024-05-04T00:00:00Z")) == ["06", "05", "04"]  # inclusive
    assert days(store.query(since="2024-05-04T02:00:00+02:00")) == ["06", "05", "04"]
    assert days(store.query(since="2024-05-04T00:00:00.000001Z")) == ["06", "05"]
    assert days(store.query(limit=2)) == ["06", "05"]
    assert days(store.query(tenant="globex", limit=1)) == ["05"]
    assert store.query(limit=0) == []
    assert store.query(tenant="nobody") == []
    with pytest.raises(ValueError):
        store.query(since="last tuesday")
    with pytest.raises(ValueError):
        store.query(limit=-1)


def test_same_timestamp_orders_by_insertion(store: ViolationStore) -> None:
    ts = "2024-05-01T00:00:00.000000Z"
    for path in ("first", "second", "third"):
        store.record(rec(ts, url=f"http://x.test/{path}"))
    assert [r.url.rsplit("/", 1)[1] for r in store.query()] == ["third", "second", "first"]


def test_robots_body_is_content_addressed_and_stored_once(store: ViolationStore, url: str) -> None:
    for i in range(3):
        store.record(rec(f"2024-05-01T00:00:0{i}Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    other = b"User-agent: *\nAllow: /\n"
    other_sha = hashlib.sha256(other).hexdigest()
    store.record(rec("2024-05-02T00:00:00Z", robots_sha256=other_sha), other)
    assert store.robots_body(ROBOTS_SHA) == ROBOTS
    assert store.robots_body(ROBOTS_SHA.upper()) == ROBOTS
    assert store.robots_body(other_sha) == other
    assert store.robots_body("0" * 64) is None
    # a body that does not hash to the record's address is not stored; the record still is
    store.record(rec("2024-05-03T00:00:00Z", robots_sha256="1" * 64), b"something else")
    assert store.robots_body("1" * 64) is None
    assert len(store.query()) == 5
    store.close()
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        assert db.execute("SELECT COUNT(*) FROM robots_bodies").fetchone() == (2,)
    finally:
        db.close()


def test_records_survive_a_restart(url: str) -> None:
    s = open_store(url)
    s.record(rec("2024-05-01T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    s.add_request_counts({("acme", "allowed"): 7}, "2024-05-01T00:10:00Z")
    s.close()
    s = open_store(url)  # schema creation is idempotent
    try:
        assert [r.ts for r in s.query()] == ["2024-05-01T00:00:00.000000Z"]
        assert s.robots_body(ROBOTS_SHA) == ROBOTS
        assert s.report().tenants["acme"].requests == {"allowed": 7}
    finally:
        s.close()


def test_records_survive_a_crash_without_close(url: str, tmp_path: Path) -> None:
    """`record` returning means on disk: a process killed right after must not lose it."""
    code = (
        "import os, sys\n"
        "from crawlguard.records import ViolationRecord\n"
        "from crawlguard.store import open_store\n"
        "s = open_store(sys.argv[1])\n"
        "s.record(ViolationRecord('2024-05-01T00:00:00Z', 'acme', 'ua-missing', 'blocked',"
        " 'GET', 'http://x.test/'))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, url], check=True, timeout=30, cwd=tmp_path)
    s = open_store(url)
    try:
        assert [r.kind for r in s.query()] == ["ua-missing"]
    finally:
        s.close()


def test_wal_and_full_sync(store: ViolationStore) -> None:
    assert isinstance(store, SQLiteStore)
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(violations)")}
    assert {"violations_tenant_ts", "violations_kind_ts"} <= indexes


def test_concurrent_writers_and_readers(url: str) -> None:
    shared = open_store(url)
    second = open_store(url)  # another connection, like another worker process
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(store: ViolationStore, tenant: str) -> None:
        try:
            for i in range(25):
                store.record(rec(utc_now_iso(), tenant, url=f"http://x.test/{tenant}/{i}"))
                store.add_request_counts({(tenant, "allowed"): 2}, utc_now_iso())
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            while not stop.is_set():
                shared.query(limit=10)
                second.report()
        except BaseException as exc:
            errors.append(exc)

    writers = [
        threading.Thread(target=write, args=(shared if i % 2 else second, f"t{i}"))
        for i in range(6)
    ]
    reader = threading.Thread(target=read)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(30)
    stop.set()
    reader.join(30)
    try:
        assert errors == []
        records = shared.query()
        assert len(records) == 150
        assert len({r.url for r in records}) == 150
        report = second.report()
        assert {tid: t.requests["allowed"] for tid, t in report.tenants.items()} == {
            f"t{i}": 50 for i in range(6)
        }
    finally:
        shared.close()
        second.close()


def test_request_counts_and_report(store: ViolationStore) -> None:
    store.add_request_counts(
        {("acme", "allowed"): 10, ("acme", "ua-generic"): 2}, "2024-05-01T10:05:00Z"
    )
    store.add_request_counts(
        {("acme", "allowed"): 5, ("globex", "allowed"): 0}, "2024-05-01T10:59:59Z"
    )
    store.add_request_counts(
        {("acme", "allowed"): 1, ("globex", "robots-disallow"): 3}, "2024-05-01T11:00:00Z"
    )
    store.record(rec("2024-05-01T10:06:00Z", "acme", "ua-generic"))
    store.record(rec("2024-05-01T10:07:00Z", "acme", "ua-generic"))
    for minute in range(3):
        store.record(rec(f"2024-05-01T11:0{minute}:00Z", "globex", "robots-disallow",
                         action="logged"))  # fmt: skip

    everything = store.report()
    assert everything.since is None
    assert set(everything.tenants) == {"acme", "globex"}  # a zero count adds nothing
    acme, globex = everything.tenants["acme"], everything.tenants["globex"]
    assert acme.requests == {"allowed": 16, "ua-generic": 2}
    assert acme.violations == {"ua-generic": 2}
    assert (acme.requests_total, acme.violations_total) == (18, 2)
    assert globex.requests == {"robots-disallow": 3}
    assert globex.violations == {"robots-disallow": 3}

    # request buckets are hourly: 10:30 still counts the whole 10:00 bucket; violations are exact
    later = store.report(since="2024-05-01T10:30:00Z")
    assert later.since == "2024-05-01T10:30:00.000000Z"
    assert later.tenants["acme"].requests == {"allowed": 16, "ua-generic": 2}
    assert later.tenants["acme"].violations == {}
    assert store.report(since="2024-05-01T11:00:00Z").tenants["acme"].requests == {"allowed": 1}
    assert store.report(since="2024-06-01T00:00:00Z").tenants == {}

    d = everything.to_dict()
    assert d["tenants"]["acme"] == {
        "requests_total": 18,
        "requests": {"allowed": 16, "ua-generic": 2},
        "violations_total": 2,
        "violations": {"ua-generic": 2},
        "held": 0,
    }
    with pytest.raises(ValueError):
        store.add_request_counts({("acme", "allowed"): -1}, utc_now_iso())


def test_closed_store_raises_store_error(url: str) -> None:
    s = open_store(url)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.query()
    with pytest.raises(StoreError, match="closed"):
        s.record(rec(utc_now_iso()))


NOW = datetime(2024, 5, 8, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01T12:00:00.5+02:00", "2024-05-01T10:00:00.500000Z"),
        ("2024-05-01T12:00:00-05:30", "2024-05-01T17:30:00.000000Z"),
        ("2024-05-01T12:00:00", "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01", "2024-05-01T00:00:00.000000Z"),
        (" 2024-05-01T12:00Z ", "2024-05-01T12:00:00.000000Z"),
        ("7d", "2024-05-01T12:00:00.000000Z"),
        ("12h", "2024-05-08T00:00:00.000000Z"),
        ("30m", "2024-05-08T11:30:00.000000Z"),
        ("45s", "2024-05-08T11:59:15.000000Z"),
        ("1w", "2024-05-01T12:00:00.000000Z"),
        ("1h30m", "2024-05-08T10:30:00.000000Z"),
        ("7D", "2024-05-01T12:00:00.000000Z"),
        ("0m", "2024-05-08T12:00:00.000000Z"),
    ],
)
def test_parse_since(value: str, expected: str) -> None:
    assert parse_since(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    ["", "7", "d", "-7d", "7y", "7 days", "1.5h", "yesterday", "2024-13-01", "999999999999w"],
)
def test_parse_since_rejects_with_a_clear_message(value: str) -> None:
    with pytest.raises(ValueError, match=r"invalid since .*(ISO 8601|too long)"):
        parse_since(value, now=NOW)


def test_parse_since_defaults_to_now() -> None:
    got = datetime.fromisoformat(parse_since("1h"))
    assert abs((datetime.now(UTC) - got).total_seconds() - 3600) < 60


def test_utc_now_iso_is_canonical() -> None:
    now = utc_now_iso()
    assert normalize_ts(now) == now


def test_open_store_relative_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///var/sub/rel.db").close()
    assert (tmp_path / "var" / "sub" / "rel.db").is_file()
    absolute = tmp_path / "abs" / "dir" / "a.db"
    open_store(f"sqlite:///{absolute}").close()  # sqlite:////abs/... : four slashes
    assert absolute.is_file()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://user@db:5432/crawlguard", "not supported until the scale-out store"),
        ("postgres://user@db/crawlguard", "not supported until the scale-out store"),
        ("mysql://user@db/crawlguard", "'mysql'"),
        ("redis://127.0.0.1:6379/0", "'redis'"),
        ("var/crawlguard.db", "no scheme"),
        ("sqlite://", "three slashes"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///var/", "names no database file"),
        ("sqlite:///var/x.db?mode=ro", "options"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, needle: str) -> None:
    with pytest.raises(StoreError, match=needle):
        open_store(url)


def test_open_store_errors_are_store_errors(tmp_path: Path) -> None:
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not a SQLite database, just junk bytes" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        open_store(f"sqlite:///{not_a_db}")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{blocker / 'sub' / 'x.db'}")  # parent is a file


def test_newer_schema_is_refused(url: str) -> None:
    open_store(url).close()
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(url)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_directory_is_a_store_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StoreError):
            open_store(f"sqlite:///{ro / 'x.db'}")
    finally:
        ro.chmod(0o700)


# -- group commit and retention (issue 9) ---------------------------------------------------------


def test_record_many_is_one_transaction(store: ViolationStore) -> None:
    items = [(rec(f"2024-05-01T00:00:0{i}Z", robots_sha256=ROBOTS_SHA), ROBOTS) for i in range(5)]
    store.record_many(items)
    assert len(store.query()) == 5 and store.robots_body(ROBOTS_SHA) == ROBOTS
    with pytest.raises(ValueError):  # one bad record: none of the batch is written
        store.record_many([(rec("2024-05-02T00:00:00Z"), None), (rec("yesterday"), None)])
    assert len(store.query()) == 5
    store.record_many([])


def test_prune_deletes_old_records_keeps_new_ones_in_batches(store: ViolationStore) -> None:
    other = b"User-agent: *\nAllow: /\n"
    other_sha = hashlib.sha256(other).hexdigest()
    for i in range(25):  # old, their robots body only referenced by old records
        store.record(rec(f"2024-04-01T00:00:{i:02d}Z", robots_sha256=other_sha), other)
    store.record(rec("2024-04-02T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)  # old
    store.record(rec("2024-05-02T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)  # new
    store.record(rec("2024-05-03T00:00:00Z"))  # new
    store.add_request_counts({("acme", "allowed"): 3}, "2024-04-30T23:59:00Z")  # old hour
    store.add_request_counts({("acme", "allowed"): 4}, "2024-05-01T00:30:00Z")  # the cutoff hour
    steps = []
    while step := store.prune_step("2024-05-01T00:00:00Z", 10):
        steps.append(step)
    assert [s.violations for s in steps if s.violations] == [10, 10, 6]
    assert sum(s.request_counts for s in steps) == 1
    assert sum(s.robots_bodies for s in steps) == 1
    assert [r.ts for r in store.query()] == [
        "2024-05-03T00:00:00.000000Z",
        "2024-05-02T00:00:00.000000Z",
    ]
    assert store.robots_body(other_sha) is None  # orphaned: pruned
    assert store.robots_body(ROBOTS_SHA) == ROBOTS  # still referenced by a kept record
    assert store.report().tenants["acme"].requests == {"allowed": 4}
    assert not store.prune("2024-05-01T00:00:00Z")  # nothing left: idempotent


def test_a_pruned_body_is_stored_again_by_the_next_record(store: ViolationStore) -> None:
    store.record(rec("2024-04-01T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    result = store.prune("2024-05-01T00:00:00Z", batch=2)
    assert (result.violations, result.robots_bodies) == (1, 1)
    assert store.robots_body(ROBOTS_SHA) is None
    store.record(rec("2024-05-02T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    assert store.robots_body(ROBOTS_SHA) == ROBOTS


def test_prune_uses_the_robots_sha_index(store: ViolationStore) -> None:
    assert isinstance(store, SQLiteStore) and store._conn is not None
    plan = store._conn.execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM violations WHERE robots_sha256 = ?", ("a",)
    ).fetchall()
    assert "violations_robots_sha256" in str(plan)


def test_a_version_1_store_is_migrated(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    Path(path).parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE violations (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, tenant TEXT NOT NULL,"
        " kind TEXT NOT NULL, action TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL,"
        " user_agent TEXT, rule TEXT, crawl_delay REAL, retry_after INTEGER, robots_sha256 TEXT,"
        " delay_seconds REAL, reason TEXT);"
        "INSERT INTO violations (ts, tenant, kind, action, method, url) VALUES"
        " ('2024-05-01T00:00:00.000000Z', 'acme', 'ua-generic', 'blocked', 'GET', 'http://v1/');"
        "PRAGMA user_version = 1;"
    )
    db.close()
    s = open_store(url)
    try:
        assert [r.url for r in s.query()] == ["http://v1/"]
        s.record(rec("2024-05-02T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)
        assert s.robots_body(ROBOTS_SHA) == ROBOTS
    finally:
        s.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "violations_robots_sha256" in names
    finally:
        db.close()
