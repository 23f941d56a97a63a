"""The SQLite violation store's own behaviour (pragmas, file migration, paths) and the helpers
every store shares (time parsing, store URLs). What every backend must do is the contract
suite, tests/inprocess/test_store_contract.py (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import at, minute_record

from crawlguard.policy.records import ViolationRecord, utc_now_iso
from crawlguard.store import (
    SCHEMA_VERSION,
    SQLiteStore,
    StoreError,
    ViolationFilter,
    ViolationStore,
    normalize_ts,
    open_store,
    parse_since,
    url_host,
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


def test_wal_and_full_sync(store: ViolationStore) -> None:
    assert isinstance(store, SQLiteStore)
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(violations)")}
    assert {"violations_tenant_ts", "violations_kind_ts"} <= indexes


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
        ("postgresql+psycopg://user@db:5432/crawlguard", "no driver suffix"),
        ("postgresql://user:secret@db:5432/crawlguard", "PGPASSWORD"),
        ("postgres://db/crawlguard?password=secret", "password file"),
        ("postgresql://db/crawlguard?no_such_option=1", "no_such_option"),
        ("mysql://user@db/crawlguard", "'mysql'.*postgresql://"),
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
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "violations_robots_sha256" in names
    finally:
        db.close()


# The schema crawlguard wrote before folded records (version 3), verbatim.
VERSION_3_SCHEMA = """
CREATE TABLE violations (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
    action TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL, user_agent TEXT, rule TEXT,
    crawl_delay REAL, retry_after INTEGER, robots_sha256 TEXT, delay_seconds REAL, reason TEXT,
    host TEXT
);
CREATE INDEX violations_tenant_ts ON violations (tenant, ts);
CREATE INDEX violations_kind_ts ON violations (kind, ts);
CREATE INDEX violations_ts ON violations (ts);
CREATE INDEX violations_robots_sha256 ON violations (robots_sha256)
    WHERE robots_sha256 IS NOT NULL;
CREATE INDEX violations_host_ts ON violations (host, ts);
CREATE TABLE robots_bodies (
    sha256 TEXT PRIMARY KEY, body BLOB NOT NULL, first_seen TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE request_counts (
    hour TEXT NOT NULL, tenant TEXT NOT NULL, decision TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (hour, tenant, decision)) WITHOUT ROWID;
INSERT INTO violations (ts, tenant, kind, action, method, url, host) VALUES
    ('2024-05-01T00:00:00.000000Z', 'acme', 'ua-generic', 'blocked', 'GET', 'http://v3/', 'v3'),
    ('2024-05-01T00:00:01.000000Z', 'acme', 'ua-generic', 'blocked', 'GET', 'http://v3/', 'v3');
PRAGMA user_version = 3;
"""


def test_a_version_3_store_gets_fold_columns_and_keeps_its_records(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    Path(path).parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(VERSION_3_SCHEMA)
    db.close()
    s = open_store(url)
    try:
        old = s.query()
        assert [(r.url, r.count, r.first_ts, r.last_ts) for r in old] == [
            ("http://v3/", 1, None, None)
        ] * 2
        folded = rec(
            "2024-05-01T00:01:00Z",
            url="http://v3/",
            count=40,
            first_ts="2024-05-01T00:01:00Z",
            last_ts="2024-05-01T00:01:59.5Z",
        )
        s.record(folded)
        assert s.query(limit=1)[0] == rec(
            "2024-05-01T00:01:00.000000Z",
            url="http://v3/",
            count=40,
            first_ts="2024-05-01T00:01:00.000000Z",
            last_ts="2024-05-01T00:01:59.500000Z",
        )
        assert s.report().tenants["acme"].violations == {"ua-generic": 42}
    finally:
        s.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (5,)
        assert db.execute("SELECT count(*), sum(count) FROM violations").fetchone() == (3, 42)
    finally:
        db.close()
    open_store(url).close()  # opening the migrated file again changes nothing


# -- the hosts column and url_host (the admin API's top hosts read them) -------------------------


V2_SCHEMA = """
CREATE TABLE violations (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
    action TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL, user_agent TEXT, rule TEXT,
    crawl_delay REAL, retry_after INTEGER, robots_sha256 TEXT, delay_seconds REAL, reason TEXT
);
CREATE INDEX violations_tenant_ts ON violations (tenant, ts);
CREATE INDEX violations_kind_ts ON violations (kind, ts);
CREATE INDEX violations_ts ON violations (ts);
CREATE INDEX violations_robots_sha256 ON violations (robots_sha256)
    WHERE robots_sha256 IS NOT NULL;
CREATE TABLE robots_bodies (sha256 TEXT PRIMARY KEY, body BLOB NOT NULL, first_seen TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE request_counts (hour TEXT NOT NULL, tenant TEXT NOT NULL, decision TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (hour, tenant, decision)) WITHOUT ROWID;
PRAGMA user_version = 2;
"""


def test_a_version_2_store_gets_its_hosts_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(V2_SCHEMA)
    urls = ["http://Old.Example:8080/a", "[2001:DB8::1]:443", "not a url at all", "https://x.test"]
    db.executemany(
        "INSERT INTO violations (ts, tenant, kind, action, method, url) VALUES (?, ?, ?, ?, ?, ?)",
        [(at(i), "acme", "ua-generic", "blocked", "GET", u) for i, u in enumerate(urls)],
    )
    db.commit()
    db.close()
    store = SQLiteStore(str(path))
    try:
        page = store.page(ViolationFilter(), limit=10)
        assert [v.host for v in reversed(page.items)] == [
            "old.example", "2001:db8::1", None, "x.test",
        ]  # fmt: skip
        old = store.page(ViolationFilter(host="old.example"), limit=5).items
        assert [v.record.url for v in old] == [urls[0]]
        store.record(minute_record(9, url="http://new.example/"))
        new = store.page(ViolationFilter(host="new.example"), limit=5).items
        assert [v.host for v in new] == ["new.example"]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (5,)
        indexes = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"violations_host_ts", "violations_tenant_ts", "violations_kind_ts"} <= indexes
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM violations WHERE host = ? ORDER BY ts DESC",
            ("x",),
        ).fetchall()
        assert "violations_host_ts" in str(plan)
    finally:
        db.close()
    SQLiteStore(str(path)).close()  # opening a current store again changes nothing


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://EXAMPLE.test./p?q#f", "example.test"),
        ("https://user@h.example:8443/", "h.example"),
        ("http://[::FFFF:127.0.0.1]:80/", "::ffff:7f00:1"),
        ("h.example:443", "h.example"),
        ("[::1]:8080", "::1"),
        ("http://0177.1/", "127.0.0.1"),
        ("http://bad host/", None),
        ("", None),
    ],
)
def test_url_host(url: str, host: str | None) -> None:
    assert url_host(url) == host
