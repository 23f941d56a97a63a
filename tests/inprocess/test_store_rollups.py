"""Roll-ups (crawlguard.store.rollup) on SQLite and PostgreSQL: the store's summary, report and
latest-violation answers equal a plain computation over the records, for generated records
(tenants, kinds, actions, hosts, timestamps across hour and day edges, folded counts) and
windows; the roll-up tables hold exactly the records' sums, after writes, retention and an
idempotent re-import; a version-4 SQLite file gets its roll-ups and uids when opened; and
`crawlguard store export|import` stream, name a bad line and keep what was committed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import rollupref
import yaml
from harness import base_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawlguard.cli import main as cli_main
from crawlguard.policy.records import ViolationRecord
from crawlguard.store import ViolationFilter, ViolationStore, canonical_ts, open_store

if TYPE_CHECKING:
    from pgutil import PgSchema
    from storeutil import Backend

pytest_plugins = ["pgutil", "storeutil"]

T0 = datetime(2024, 5, 1, tzinfo=UTC)  # a midnight: day and hour edges are at known offsets
SPAN_US = 3 * 86_400 * 1_000_000  # records fall in three days
TENANTS = ("acme", "globex", "initech")
KINDS = ("ua-generic", "robots-disallow", "crawl-delay")
ACTIONS = ("blocked", "logged", "delayed")
URLS = ("http://a.test/x", "http://b.test:8080/y", "https://c.test/", "/no-host")
HOSTS = ("a.test", "b.test", "c.test")


def _ts(us: int) -> str:
    return canonical_ts(T0 + timedelta(microseconds=us))


# Offsets that like to sit on, or a microsecond beside, an hour or a day edge.
_edge = st.builds(
    lambda unit, k, d: max(0, min(SPAN_US - 1, k * unit + d)),
    st.sampled_from((3_600_000_000, 86_400_000_000)),
    st.integers(0, 72),
    st.sampled_from((-1, 0, 1)),
)
_offset = st.one_of(st.integers(0, SPAN_US - 1), _edge)


@st.composite
def records(draw: st.DrawFn) -> ViolationRecord:
    us = draw(_offset)
    count = draw(st.sampled_from((1, 1, 1, 2, 7, 40)))
    first_ts = last_ts = None
    if count > 1:  # folded: its newest refusal may lie hours later
        first_ts = _ts(us)
        last_ts = _ts(us + draw(st.integers(0, 3 * 3_600_000_000)))
    return ViolationRecord(
        ts=_ts(us),
        tenant=draw(st.sampled_from(TENANTS)),
        kind=draw(st.sampled_from(KINDS)),
        action=draw(st.sampled_from(ACTIONS)),
        method="GET",
        url=draw(st.sampled_from(URLS)),
        count=count,
        first_ts=first_ts,
        last_ts=last_ts,
    )


_bound = st.one_of(
    st.integers(-3_600_000_000, SPAN_US + 3_600_000_000),
    _edge,
    st.integers(-2, 76).map(lambda h: h * 3_600_000_000),
)


@st.composite
def windows(draw: st.DrawFn) -> tuple[ViolationFilter, int]:
    a, b = draw(_bound), draw(_bound)
    if a == b:
        b = a + 1
    lo, hi = min(a, b), max(a, b)
    flt = ViolationFilter(
        tenant=draw(st.none() | st.sampled_from(TENANTS)),
        kind=draw(st.none() | st.sampled_from(KINDS)),
        action=draw(st.none() | st.sampled_from(ACTIONS)),
        host=draw(st.none() | st.sampled_from(HOSTS)),
        since=_ts(lo),
        until=_ts(hi),
    )
    return flt, draw(st.sampled_from((1, 3, 7, 24, 30)))


@pytest.fixture
def store(backend: Backend) -> Iterator[ViolationStore]:
    s = open_store(backend.url)
    yield s
    s.close()


def _wipe(url: str) -> None:
    tables = ("violations", "rollup_kinds", "rollup_hosts")
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///") :])
        try:
            for table in tables:
                db.execute(f"DELETE FROM {table}")
            db.commit()
        finally:
            db.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(tables)}")


def _check_answers(
    store: ViolationStore, recs: list[ViolationRecord], cases: list[tuple[ViolationFilter, int]]
) -> None:
    for flt, buckets in cases:
        assert store.summary(flt, buckets=buckets, top_hosts=2) == rollupref.summary(
            recs, flt, buckets, 2
        ), flt
        assert store.report(since=flt.since) == rollupref.report(recs, flt.since)
        assert store.latest_violations(since=flt.since) == rollupref.latest(recs, flt.since)
    assert store.report() == rollupref.report(recs, None)
    assert store.latest_violations() == rollupref.latest(recs, None)


def _check_tables(url: str, recs: list[ViolationRecord]) -> None:
    assert rollupref.stored_rollups(url) == rollupref.rollups(recs)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(recs=st.lists(records(), max_size=30), cases=st.lists(windows(), min_size=1, max_size=3))
def test_rollups_answer_as_the_records_do(
    backend: Backend,
    store: ViolationStore,
    recs: list[ViolationRecord],
    cases: list[tuple[ViolationFilter, int]],
) -> None:
    _wipe(backend.url)
    half = len(recs) // 2
    store.record_many([(r, None) for r in recs[:half]])  # two batches: upserts add up
    store.record_many([(r, None) for r in recs[half:]])
    _check_tables(backend.url, recs)
    _check_answers(store, recs, cases)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    recs=st.lists(records(), min_size=1, max_size=30),
    bound=_bound,
    batch=st.sampled_from((1, 3, 1000)),
)
def test_retention_keeps_rollups_equal_to_what_remains(
    backend: Backend, store: ViolationStore, recs: list[ViolationRecord], bound: int, batch: int
) -> None:
    _wipe(backend.url)
    store.record_many([(r, None) for r in recs])
    before = _ts(bound)
    store.prune(before, batch=batch)
    left = [r for r in recs if r.ts >= before]
    _check_tables(backend.url, left)
    whole = ViolationFilter(since=_ts(-86_400_000_000), until=_ts(SPAN_US + 86_400_000_000))
    _check_answers(store, left, [(whole, 4)])


def _behind_its_back(backend: Backend, sql: str) -> None:
    """Change a roll-up table without the store: an answer that shows it read the roll-up."""
    if backend.name == "sqlite":
        db = sqlite3.connect(backend.url[len("sqlite:///") :])
        db.execute(sql)
        db.commit()
        db.close()
    else:
        with psycopg.connect(backend.url, autocommit=True) as conn:
            conn.execute(sql)


def test_summary_over_whole_hours_reads_the_rollups(
    backend: Backend, store: ViolationStore
) -> None:
    """Not a raw scan in disguise: a roll-up row changed behind the store's back shows."""
    rec = ViolationRecord(_ts(90 * 60_000_000), "acme", "ua-generic", "blocked", "GET", URLS[0])
    store.record(rec)
    _behind_its_back(backend, "UPDATE rollup_kinds SET n = 5 WHERE span = 86400")
    day = ViolationFilter(since=_ts(0), until=_ts(86_400_000_000))
    assert store.summary(day, buckets=1).total == 5
    hour = ViolationFilter(since=_ts(3_600_000_000), until=_ts(7_200_000_000))
    assert store.summary(hour, buckets=1).total == 1  # the hour roll-up was left alone


def test_unfiltered_top_hosts_read_the_per_host_sums(
    backend: Backend, store: ViolationStore
) -> None:
    """The dashboard's default top hosts come from the per-host sums (kind and action "*"),
    held records left out of them; a kind filter reads the per-kind rows."""
    store.record(ViolationRecord(_ts(90 * 60_000_000), "acme", "ua-generic", "blocked", "GET",
                                 URLS[0]))  # fmt: skip
    store.record(ViolationRecord(_ts(91 * 60_000_000), "acme", "crawl-delay", "delayed", "GET",
                                 URLS[0]))  # fmt: skip
    _behind_its_back(
        backend, "UPDATE rollup_hosts SET n = 7 WHERE span = 86400 AND kind = '*' AND action = '*'"
    )
    day = ViolationFilter(since=_ts(0), until=_ts(86_400_000_000))
    assert [n for _, _, n in store.summary(day, buckets=1).top_hosts] == [7]
    by_kind = ViolationFilter(since=_ts(0), until=_ts(86_400_000_000), kind="ua-generic")
    assert [n for _, _, n in store.summary(by_kind, buckets=1).top_hosts] == [1]


def test_reimport_adds_nothing_to_the_rollups(backend: Backend, store: ViolationStore) -> None:
    recs = [
        ViolationRecord(
            _ts(i * 997_000_000),
            TENANTS[i % 3],
            KINDS[i % 3],
            ACTIONS[i % 3],
            "GET",
            URLS[i % 4],
            count=1 + i % 3,
        )
        for i in range(40)
    ]
    uids = [f"{i:032x}" for i in range(40)]
    assert store.record_many([(r, None) for r in recs], uids) == 40
    assert store.record_many([(r, None) for r in recs[:25]], uids[:25]) == 0
    twice = recs[30:] + recs[30:]  # a uid twice in one batch is one record
    assert store.record_many([(r, None) for r in twice], uids[30:] * 2) == 0
    _check_tables(backend.url, recs)
    assert store.report() == rollupref.report(recs, None)


# -- migration ------------------------------------------------------------------------------------

_V4_SCHEMA = """
CREATE TABLE violations (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
    action TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL, user_agent TEXT, rule TEXT,
    crawl_delay REAL, retry_after INTEGER, robots_sha256 TEXT, delay_seconds REAL, reason TEXT,
    count INTEGER NOT NULL DEFAULT 1, first_ts TEXT, last_ts TEXT, host TEXT
);
CREATE INDEX violations_tenant_ts ON violations (tenant, ts);
CREATE INDEX violations_kind_ts ON violations (kind, ts);
CREATE INDEX violations_ts ON violations (ts);
CREATE INDEX violations_host_ts ON violations (host, ts);
CREATE TABLE robots_bodies (sha256 TEXT PRIMARY KEY, body BLOB NOT NULL, first_seen TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE request_counts (hour TEXT NOT NULL, tenant TEXT NOT NULL, decision TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (hour, tenant, decision)) WITHOUT ROWID;
PRAGMA user_version = 4;
"""


def test_a_version_4_sqlite_store_gets_rollups_and_uids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crawlguard.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "ROLLUP_BUILD_ROWS", 7)  # several batches
    monkeypatch.setattr(sqlite_store, "MIGRATE_BATCH_ROWS", 5)
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_V4_SCHEMA)
    recs = [
        ViolationRecord(
            _ts(i * 3_331_000_000),
            TENANTS[i % 3],
            KINDS[i % 3],
            ACTIONS[i % 2],
            "GET",
            URLS[i % 4],
            count=1 + i % 4,
            first_ts=_ts(i * 3_331_000_000) if i % 4 else None,
            last_ts=_ts(i * 3_331_000_000 + 5_000_000_000) if i % 4 else None,
        )
        for i in range(60)
    ]
    db.executemany(
        "INSERT INTO violations (ts, tenant, kind, action, method, url, count, first_ts, "
        "last_ts, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.ts,
                r.tenant,
                r.kind,
                r.action,
                r.method,
                r.url,
                r.count,
                r.first_ts,
                r.last_ts,
                rollupref.url_host(r.url),
            )
            for r in recs
        ],
    )
    db.commit()
    db.close()
    url = f"sqlite:///{path}"
    store = open_store(url)
    try:
        _check_tables(url, recs)
        window = ViolationFilter(since=_ts(1_800_000_000), until=_ts(2 * 86_400_000_000))
        _check_answers(store, recs, [(window, 24)])
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (5,)
        uids = [u for (u,) in db.execute("SELECT uid FROM violations")]
    finally:
        db.close()
    assert len(uids) == len(set(uids)) == 60 and all(len(u) == 32 for u in uids)
    again = open_store(url)  # opening a current file builds nothing twice
    again.close()
    _check_tables(url, recs)


# -- export and import ----------------------------------------------------------------------------


def _config(tmp_path: Path, url: str, name: str) -> str:
    cfg = base_config(tmp_path, store={"url": url})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _sample(n: int) -> list[ViolationRecord]:
    return [
        ViolationRecord(
            _ts(i * 61_000_000),
            TENANTS[i % 3],
            KINDS[i % 3],
            ACTIONS[i % 3],
            "GET",
            URLS[i % 4],
            count=1 + i % 2,
        )
        for i in range(n)
    ]


def test_export_streams_pages_oldest_first_from_since(
    backend: Backend, store: ViolationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crawlguard.cli import store as store_cli

    recs = _sample(23)
    store.record_many([(r, None) for r in reversed(recs)])
    monkeypatch.setattr(store_cli, "EXPORT_PAGE", 5)
    calls: list[Any] = []
    page = store.export_page

    def counting(**kw: Any) -> Any:
        calls.append(kw)
        return page(**kw)

    monkeypatch.setattr(store, "export_page", counting)
    lines = store_cli.export_lines(store, recs[8].ts)
    first = json.loads(next(lines))
    assert len(calls) == 1  # one page read for the first line: it streams
    rest = [json.loads(line) for line in lines]
    got = [first, *rest]
    assert [r["ts"] for r in got] == [r.ts for r in recs[8:]]
    assert len({r["uid"] for r in got}) == 15
    assert set(got[0]) == {*ViolationRecord.__dataclass_fields__, "uid"}
    assert len(calls) == 4  # 15 records in pages of 5, and the empty one that ends it


def test_import_names_a_bad_line_and_keeps_the_batches_before_it(
    backend: Backend,
    store: ViolationStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from crawlguard.cli import store as store_cli

    recs = _sample(12)
    lines = [json.dumps({**r.to_dict(), "uid": f"{i:032x}"}) for i, r in enumerate(recs)]
    lines.append(json.dumps({**recs[0].to_dict(), "uid": "not-a-uuid"}))  # line 13
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(store_cli, "IMPORT_BATCH", 5)
    config = _config(tmp_path, backend.url, "c")
    assert cli_main(["store", "import", "--config", config, str(path)]) == 1
    err = capsys.readouterr().err
    assert "line 13" in err and "uid" in err
    kept = recs[:10]  # two whole batches; nothing of the third
    _check_tables(backend.url, kept)
    assert store.report() == rollupref.report(kept, None)
    path.write_text("\n".join(lines[:12]) + "\n{not json\n")
    assert cli_main(["store", "import", "--config", config, str(path)]) == 1
    assert "line 13: not JSON" in capsys.readouterr().err
    path.write_text("\n".join(lines[:12]) + "\n")
    assert cli_main(["store", "import", "--config", config, str(path)]) == 0
    assert capsys.readouterr().out.strip() == "read 12, inserted 2, skipped 10"
    _check_tables(backend.url, recs)


def test_request_counts_by_day_answer_as_the_hours_do(
    backend: Backend, store: ViolationStore
) -> None:
    """The report's requests: whole days from the daily counts, the hours before them from
    the hourly ones; retention takes what it deletes out of both."""
    hours = [_ts(h * 3_600_000_000 + 1_234) for h in range(0, 80, 3)]
    for i, ts in enumerate(hours):
        store.add_request_counts({("acme", "allowed"): i + 1, ("globex", "blocked"): 2}, ts)
    store.add_request_counts({("acme", "allowed"): 100}, hours[4])  # an hour twice

    def expected(since_us: int | None) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for i, ts in enumerate(hours):
            hour_us = (int(ts[11:13]) + 24 * (int(ts[8:10]) - 1)) * 3_600_000_000
            if since_us is not None and hour_us < since_us // 3_600_000_000 * 3_600_000_000:
                continue
            acme = out.setdefault("acme", {})
            acme["allowed"] = acme.get("allowed", 0) + i + 1 + (100 if i == 4 else 0)
            globex = out.setdefault("globex", {})
            globex["blocked"] = globex.get("blocked", 0) + 2
        return out

    for since in (None, 0, 5_400_000_000, 86_400_000_000, 100_000_000_000, 200_000_000_000):
        report = store.report(since=None if since is None else _ts(since))
        assert {t: r.requests for t, r in report.tenants.items()} == expected(since), since
    store.prune(_ts(100_000_000_000), batch=5)
    report = store.report()
    assert {t: r.requests for t, r in report.tenants.items()} == expected(100_000_000_000)


def test_a_version_2_postgresql_store_gets_rollups(pg_schema: PgSchema) -> None:
    from crawlguard.store import postgres

    old = [s for s in postgres._SCHEMA if "rollup_" not in s and "request_counts_daily" not in s]
    with psycopg.connect(pg_schema.url(), autocommit=True) as conn:
        for statement in old:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        recs = _sample(50)
        for i, r in enumerate(recs):
            conn.execute(
                "INSERT INTO violations (uid, ts, tenant, kind, action, method, url, count, "
                "host) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (f"{i:032x}", r.ts, r.tenant, r.kind, r.action, r.method, r.url, r.count,
                 rollupref.url_host(r.url)),
            )  # fmt: skip
        conn.execute(
            "INSERT INTO request_counts (hour, tenant, decision, n) VALUES "
            "('2024-05-01T10:00:00Z', 'acme', 'allowed', 5), "
            "('2024-05-01T11:00:00Z', 'acme', 'allowed', 7)"
        )
    store = open_store(pg_schema.url())
    try:
        _check_tables(pg_schema.url(), recs)
        window = ViolationFilter(since=_ts(1_800_000_000), until=_ts(86_400_000_000))
        assert store.summary(window, buckets=24) == rollupref.summary(recs, window, 24, 10)
        report = store.report()
        assert report.tenants["acme"].requests == {"allowed": 12}
        want = rollupref.report(recs, None).tenants
        assert {t: (r.violations, r.held) for t, r in report.tenants.items()} == {
            t: (r.violations, r.held) for t, r in want.items()
        }
    finally:
        store.close()
    assert pg_schema.rows("SELECT version FROM schema_version") == [(3,)]


def test_two_writers_on_one_sqlite_file_add_up(tmp_path: Path) -> None:
    """As two `--workers` processes do: two connections, interleaved batches, one file."""
    import threading

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    stores = [open_store(url), open_store(url)]
    recs = [_sample(120)[i::2] for i in range(2)]

    def write(store: ViolationStore, mine: list[ViolationRecord]) -> None:
        for i in range(0, len(mine), 7):
            store.record_many([(r, None) for r in mine[i : i + 7]])

    threads = [threading.Thread(target=write, args=pair) for pair in zip(stores, recs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        _check_tables(url, recs[0] + recs[1])
    finally:
        for s in stores:
            s.close()
