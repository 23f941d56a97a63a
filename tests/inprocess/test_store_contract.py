"""The violation store contract, run against every backend: SQLite and PostgreSQL.

Round trip, filters and order, keyset pages, dashboard summary, report (held apart), robots.txt
bodies, request counts, retention, bounded fields, durability (across a crash:
tests/e2e/test_store_crash.py), concurrency, group commit.
Backend-specific behaviour (SQLite file migration and pragmas, PostgreSQL schema locking and
the spool) is in tests/unit/test_store.py and tests/inprocess/test_store_postgres.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from harness import at, minute_record

from crawlguard.policy.records import FIELD_LIMITS, FIELDS, ViolationRecord, utc_now_iso
from crawlguard.store import (
    StoreError,
    StoreWriter,
    ViolationFilter,
    ViolationStore,
    open_store,
)

if TYPE_CHECKING:
    from storeutil import Backend  # the fixture itself comes as a plugin (below)

pytest_plugins = ["pgutil", "storeutil"]  # fixtures: pg_server, pg_schema, relay; backend

ROBOTS = b"User-agent: *\nDisallow: /private/\n"
ROBOTS_SHA = hashlib.sha256(ROBOTS).hexdigest()
MB = 1024 * 1024


@pytest.fixture
def store(backend: Backend) -> Iterator[ViolationStore]:
    s = open_store(backend.url)
    yield s
    s.close()


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


mrec = minute_record


# -- records: round trip, order, filters ---------------------------------------------------------


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
        count=7,
        first_ts="2024-05-01T12:00:00.123456Z",
        last_ts="2024-05-01T12:00:59.999999Z",
    )
    assert all(getattr(full, f) is not None for f in FIELDS)
    store.record(full, ROBOTS)
    minimal = rec("2024-05-01T11:00:00.000000Z")
    store.record(minimal)
    assert store.query() == [full, minimal]
    got = store.query()[0]
    assert isinstance(got.crawl_delay, float) and isinstance(got.retry_after, int)


def test_text_from_clients_round_trips(store: ViolationStore) -> None:
    odd = rec(
        "2024-05-01T12:00:00.000000Z",
        url="https://xn--bcher-kva.example/ä?q=\x1b[31m'\";--",
        user_agent="Bot/1.0 \u202e \U0001f916 \\x00",
        rule="Disallow: /%00",
        reason="line one\nline two\ttab",
    )
    store.record(odd)
    assert store.query() == [odd]


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


def test_records_are_bounded(store: ViolationStore) -> None:
    big = rec(
        "2024-05-01T00:00:00.000000Z",
        method="M" * 1000,
        url="http://example.test/" + "a" * MB,
        user_agent="AcmeBot/1.0 " + "b" * MB,
        rule="Disallow: /" + "c" * MB,
        reason="d" * MB,
    )
    store.record(big)
    (got,) = store.query()
    assert got == big.bounded()
    for name, limit in FIELD_LIMITS.items():
        assert len(getattr(got, name)) <= limit, name


# -- keyset pages ------------------------------------------------------------------------------


def test_page_filters_and_hosts(store: ViolationStore) -> None:
    store.record_many(
        [
            (mrec(0, "acme", "ua-generic", url="http://Example.TEST/x"), None),
            (mrec(1, "acme", "robots-disallow", url="https://shop.example:8443/private"), None),
            (mrec(2, "globex", "robots-disallow", "logged", url="http://0x7f000001:8080/p"), None),
            (mrec(3, "acme", "crawl-delay", "delayed", url="http://example.test/y"), None),
            (mrec(4, "acme", "destination-forbidden", url="[::1]:443"), None),
            (mrec(5, "gone", "ua-missing", url="http://example.test/z"), None),
        ]
    )

    def mins(**kw: Any) -> list[str]:
        return [v.record.ts for v in store.page(ViolationFilter(**kw), limit=100).items]

    page = store.page(ViolationFilter(), limit=100)
    assert page.next is None
    assert [v.record.ts for v in page.items] == [at(m) for m in (5, 4, 3, 2, 1, 0)]
    assert [v.host for v in page.items] == [
        "example.test", "::1", "example.test", "127.0.0.1", "shop.example", "example.test",
    ]  # fmt: skip
    assert all(isinstance(v.id, int) for v in page.items)
    assert set(page.items[0].to_dict()) == {*FIELDS, "id", "host"}
    assert mins(tenant="globex") == [at(2)]
    assert mins(kind="robots-disallow") == [at(2), at(1)]
    assert mins(action="delayed") == [at(3)]
    assert mins(host="example.test") == [at(5), at(3), at(0)]
    assert mins(host="127.0.0.1") == [at(2)]
    assert mins(host="::1") == [at(4)]
    assert mins(since=at(3)) == [at(5), at(4), at(3)]  # since inclusive
    assert mins(until=at(2)) == [at(1), at(0)]  # until exclusive
    assert mins(since="2024-05-01T14:01:00+02:00", until="2024-05-01T12:04:00") == [
        at(3), at(2), at(1),
    ]  # fmt: skip
    assert mins(tenant="acme", kind="robots-disallow", host="shop.example") == [at(1)]
    with pytest.raises(ValueError):
        store.page(ViolationFilter(), limit=0)


def test_page_cursor_walks_every_record_once(store: ViolationStore) -> None:
    # 5 timestamps, 23 records each: pages end in the middle of a run of equal timestamps
    store.record_many([(mrec(i % 5, ("acme", "globex")[i % 2]), None) for i in range(115)])
    everything = store.page(ViolationFilter(), limit=1000).items
    assert len(everything) == 115
    keys = [(v.record.ts, v.id) for v in everything]
    assert keys == sorted(keys, reverse=True)  # ts DESC, id DESC
    walked = []
    after = None
    pages = 0
    while True:
        page = store.page(ViolationFilter(), limit=7, after=after)
        assert 0 < len(page.items) <= 7
        walked += page.items
        pages += 1
        if page.next is None:
            break
        assert page.next == (page.items[-1].record.ts, page.items[-1].id)
        after = page.next
        store.record(mrec(10, "acme"))  # newer: on no later page
    assert pages == 17
    assert [v.id for v in walked] == [v.id for v in everything]
    globex = store.page(ViolationFilter(tenant="globex"), limit=50)
    assert globex.next is not None
    rest = store.page(ViolationFilter(tenant="globex"), limit=50, after=globex.next)
    assert len(globex.items) + len(rest.items) == 57 and rest.next is None


# -- summary, report, held ---------------------------------------------------------------------


def test_summary_buckets_kinds_and_top_hosts(store: ViolationStore) -> None:
    records = [
        mrec(0, "acme", "ua-generic", url="http://a.example/1"),
        mrec(59.99, "acme", "ua-generic", url="http://a.example/2"),
        mrec(60, "acme", "robots-disallow", url="http://b.example/"),  # second bucket exactly
        mrec(150, "acme", "crawl-delay", "delayed", url="http://a.example/3"),  # held
        mrec(179, "globex", "robots-disallow", "logged", url="http://c.example/"),
        mrec(180, "globex", "ua-generic", url="http://c.example/"),  # at `until`: out
        mrec(-1, "acme", "ua-generic"),  # before `since`: out
    ]
    records += [mrec(10 + i, "globex", url=f"http://h{i}.example/") for i in range(12)]
    records += [mrec(20, "globex", url="http://h0.example/x") for _ in range(2)]
    store.record_many([(r, None) for r in records])
    window = ViolationFilter(since=at(0), until=at(180))
    s = store.summary(window, buckets=3)
    assert (s.since, s.until, s.bucket_us, s.buckets) == (at(0), at(180), 3600 * 10**6, 3)
    assert s.series == {"acme": [2, 1, 0], "globex": [14, 0, 1]}
    assert s.by_kind == [("ua-generic", 16), ("robots-disallow", 2)]
    assert s.total == 18
    assert s.top_hosts[0] == ("globex", "h0.example", 3)
    assert ("acme", "a.example", 2) in s.top_hosts
    assert len([t for t in s.top_hosts if t[0] == "globex"]) == 10  # the top 10 per tenant
    counts = [n for _, _, n in s.top_hosts]
    assert counts == sorted(counts, reverse=True)
    assert len(store.summary(window, buckets=3, top_hosts=1).top_hosts) == 2  # one per tenant

    held = store.summary(ViolationFilter(since=at(0), until=at(180), action="delayed"), buckets=3)
    assert held.total == 1 and held.by_kind == [("crawl-delay", 1)]
    assert held.series == {"acme": [0, 0, 1]}
    only = store.summary(
        ViolationFilter(since=at(0), until=at(180), tenant="acme", kind="ua-generic"), buckets=3
    )
    assert list(only.series) == ["acme"] and only.total == 2
    hosted = store.summary(ViolationFilter(since=at(0), until=at(180), host="b.example"), buckets=3)
    assert hosted.total == 1

    odd = store.summary(ViolationFilter(since=at(0), until=at(10)), buckets=7)
    assert odd.bucket_us == -(-600 * 10**6 // 7)
    assert odd.total == 1 and odd.series == {"acme": [1, 0, 0, 0, 0, 0, 0]}
    with pytest.raises(ValueError):
        store.summary(ViolationFilter(since=at(5), until=at(5)), buckets=3)
    with pytest.raises(ValueError):
        store.summary(ViolationFilter(since=at(0)), buckets=3)


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
    assert list(acme.requests) == ["allowed", "ua-generic"]  # most first
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
    store.add_request_counts({}, utc_now_iso())  # nothing to add: fine


def test_held_records_are_counted_apart_from_violations(store: ViolationStore) -> None:
    store.record_many(
        [
            (mrec(0, "acme", "ua-generic"), None),
            (mrec(5, "acme", "robots-disallow"), None),
            (mrec(6, "acme", "crawl-delay", "delayed", delay_seconds=1.5), None),  # held
            (mrec(7, "acme", "crawl-delay", "delayed", delay_seconds=0.5), None),  # held
            (mrec(1, "globex", "robots-disallow", "logged"), None),
            (mrec(2, "pacer", "crawl-delay", "delayed"), None),  # only held records
        ]
    )
    store.add_request_counts({("acme", "allowed"): 9, ("acme", "held"): 2}, at(0))
    report = store.report()
    acme = report.tenants["acme"]
    assert acme.violations == {"robots-disallow": 1, "ua-generic": 1}
    assert (acme.violations_total, acme.held, acme.requests_total) == (2, 2, 11)
    assert report.tenants["pacer"].violations == {} and report.tenants["pacer"].held == 1
    assert report.tenants["globex"].held == 0
    assert store.report(since=at(6)).tenants["acme"].held == 2
    assert store.report(since=at(7)).tenants["acme"].violations == {}
    # the newest *violation* per tenant: held records do not count
    assert store.latest_violations() == {"acme": at(5), "globex": at(1)}
    assert store.latest_violations(since=at(2)) == {"acme": at(5)}
    assert store.latest_violations(since="1h") == {}


def test_folded_records_count_as_many_everywhere(store: ViolationStore) -> None:
    """A folded record (count N) is N refusals in every count: report, summary series, kinds,
    top hosts; the newest violation is its last_ts; its fields round trip."""
    folded = mrec(
        30,
        "acme",
        "ua-generic",
        url="http://a.example/sample",
        count=500,
        first_ts=at(30),
        last_ts=at(89.5),
    )
    store.record_many(
        [
            (mrec(0, "acme", "ua-generic", url="http://a.example/1"), None),
            (folded, None),
            (mrec(1, "acme", "robots-disallow", url="http://b.example/"), None),
            (
                mrec(2, "acme", "crawl-delay", "delayed", count=7, first_ts=at(2), last_ts=at(3)),
                None,
            ),
        ]
    )
    assert store.query(kind="ua-generic", limit=1) == [folded]
    page = store.page(ViolationFilter(kind="ua-generic"), limit=1)
    assert page.items[0].to_dict()["count"] == 500
    assert page.items[0].to_dict()["last_ts"] == at(89.5)
    report = store.report()
    acme = report.tenants["acme"]
    assert acme.violations == {"ua-generic": 501, "robots-disallow": 1}
    assert (acme.violations_total, acme.held) == (502, 7)
    s = store.summary(ViolationFilter(since=at(0), until=at(120)), buckets=2)
    assert s.series == {"acme": [502, 0]}
    assert s.by_kind == [("ua-generic", 501), ("robots-disallow", 1)]
    assert s.total == 502
    assert s.top_hosts[0] == ("acme", "a.example", 501)
    assert store.latest_violations() == {"acme": at(89.5)}


# -- robots.txt bodies -------------------------------------------------------------------------


def test_robots_body_is_content_addressed_and_stored_once(
    store: ViolationStore, backend: Backend
) -> None:
    for i in range(3):
        store.record(rec(f"2024-05-01T00:00:0{i}Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    other = b"User-agent: *\nAllow: /\n\xff\x00binary"
    other_sha = hashlib.sha256(other).hexdigest()
    store.record(rec("2024-05-02T00:00:00Z", robots_sha256=other_sha.upper()), other)
    assert store.robots_body(ROBOTS_SHA) == ROBOTS
    assert store.robots_body(ROBOTS_SHA.upper()) == ROBOTS
    assert store.robots_body(other_sha) == other
    assert store.query(limit=1)[0].robots_sha256 == other_sha  # stored lower-case
    assert store.robots_body("0" * 64) is None
    # a body that does not hash to the record's address is not stored; the record still is
    store.record(rec("2024-05-03T00:00:00Z", robots_sha256="1" * 64), b"something else")
    assert store.robots_body("1" * 64) is None
    assert len(store.query()) == 5
    assert backend.count("robots_bodies") == 2


# -- durability, concurrency -------------------------------------------------------------------


def test_records_survive_a_restart(backend: Backend) -> None:
    s = open_store(backend.url)
    s.record(rec("2024-05-01T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    s.add_request_counts({("acme", "allowed"): 7}, "2024-05-01T00:10:00Z")
    s.close()
    s = open_store(backend.url)  # schema creation is idempotent
    try:
        assert [r.ts for r in s.query()] == ["2024-05-01T00:00:00.000000Z"]
        assert s.robots_body(ROBOTS_SHA) == ROBOTS
        assert s.report().tenants["acme"].requests == {"allowed": 7}
    finally:
        s.close()


def test_concurrent_writers_and_readers(backend: Backend) -> None:
    shared = open_store(backend.url)
    second = open_store(backend.url)  # another connection, like another proxy process
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
        t.join(60)
    stop.set()
    reader.join(60)
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


def test_closed_store_raises_store_error(backend: Backend) -> None:
    s = open_store(backend.url)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.query()
    with pytest.raises(StoreError, match="closed"):
        s.record(rec(utc_now_iso()))


# -- group commit and retention ----------------------------------------------------------------


def test_record_many_is_one_transaction(store: ViolationStore) -> None:
    items = [(rec(f"2024-05-01T00:00:0{i}Z", robots_sha256=ROBOTS_SHA), ROBOTS) for i in range(5)]
    store.record_many(items)
    assert len(store.query()) == 5 and store.robots_body(ROBOTS_SHA) == ROBOTS
    with pytest.raises(ValueError):  # one bad record: none of the batch is written
        store.record_many([(rec("2024-05-02T00:00:00Z"), None), (rec("yesterday"), None)])
    assert len(store.query()) == 5
    store.record_many([])


async def test_the_writer_group_commits_into_the_store(store: ViolationStore) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    writer = StoreWriter(store, executor, batch_max=50)
    try:
        await asyncio.gather(
            *(writer.write(rec(at(i / 60), url=f"http://x.test/{i}")) for i in range(200))
        )
        assert writer.depth == 0
        # the futures resolved after the commit: every record is readable now
        assert len(store.query()) == 200
    finally:
        await writer.close()
        executor.shutdown(wait=True)


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
    with pytest.raises(ValueError):
        store.prune_step("2024-05-01T00:00:00Z", 0)


def test_a_pruned_body_is_stored_again_by_the_next_record(store: ViolationStore) -> None:
    store.record(rec("2024-04-01T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    result = store.prune("2024-05-01T00:00:00Z", batch=2)
    assert (result.violations, result.robots_bodies) == (1, 1)
    assert store.robots_body(ROBOTS_SHA) is None
    store.record(rec("2024-05-02T00:00:00Z", robots_sha256=ROBOTS_SHA), ROBOTS)
    assert store.robots_body(ROBOTS_SHA) == ROBOTS
