"""`crawlguard store import` writes SQLite set-based (a staging table, one INSERT … SELECT, the
roll-ups grouped in SQL) and PostgreSQL through `record_many`: either way a uid stored already,
twice in one batch or again in a later batch is one record, the first, and the roll-ups count
exactly the records inserted — also while another connection writes the same SQLite file."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import rollupref

from crawlguard.cli import store as store_cli
from crawlguard.policy.records import ViolationRecord
from crawlguard.store import ViolationStore, canonical_ts, open_store

if TYPE_CHECKING:
    from storeutil import Backend

pytest_plugins = ["pgutil", "storeutil"]

T0 = datetime(2024, 5, 1, 23, 0, tzinfo=UTC)  # records straddle an hour and a day


def _rec(i: int, tenant: str = "acme") -> ViolationRecord:
    return ViolationRecord(
        canonical_ts(T0 + timedelta(seconds=97 * i)),
        tenant,
        ("robots-disallow", "crawl-delay", "ua-generic")[i % 3],
        ("blocked", "delayed", "logged")[i % 3],
        "GET",
        ("https://a.test/x", "http://b.test:8080/y", "/no-host")[i % 3] + "z" * (i % 2 * 3000),
        robots_sha256="AB" * 32 if i % 4 == 0 else None,
        count=1 + i % 3,
        last_ts=canonical_ts(T0 + timedelta(seconds=97 * i + 5)) if i % 5 == 0 else None,
    )


def _uid(i: int) -> str:
    return f"{i:032x}"


def _line(rec: ViolationRecord, uid: str) -> str:
    return json.dumps({**rec.to_dict(), "uid": uid})


def _as_stored(rec: ViolationRecord) -> ViolationRecord:
    """Bounded, its robots digest in lower case (as robots_bodies is keyed)."""
    b = rec.bounded()
    return ViolationRecord(
        **{**b.to_dict(), "robots_sha256": b.robots_sha256 and b.robots_sha256.lower()}
    )


@pytest.fixture
def store(backend: Backend) -> Iterator[ViolationStore]:
    s = open_store(backend.url)
    yield s
    s.close()


def _stored(store: ViolationStore) -> list[ViolationRecord]:
    return sorted(store.query(), key=lambda r: r.ts)


def test_import_skips_stored_and_repeated_uids_and_rolls_up_what_it_inserts(
    backend: Backend, store: ViolationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = [_rec(i) for i in range(30)]
    assert store.record_many([(r, None) for r in recs[:3]], [_uid(i) for i in range(3)]) == 3
    lines = [_line(r, _uid(i)) for i, r in enumerate(recs)]
    lines.insert(6, _line(_rec(5, "globex"), _uid(5)))  # twice in one batch: the first wins
    lines.insert(4, _line(_rec(4, "globex"), _uid(4)))  # ... whichever it is
    lines.append(_line(_rec(9, "initech"), _uid(9)))  # again in a later batch
    lines.append(_line(_rec(1, "initech"), str(uuid.UUID(_uid(1))).upper()))  # stored, dashed
    monkeypatch.setattr(store_cli, "IMPORT_BATCH", 8)
    result = store_cli.import_lines(store, lines)
    assert (result.read, result.inserted) == (len(lines), 27)
    want = [_as_stored(r) for r in recs]
    want[4] = _as_stored(_rec(4, "globex"))
    assert _stored(store) == sorted(want, key=lambda r: r.ts)
    assert rollupref.stored_rollups(backend.url) == rollupref.rollups(want)
    assert store.report() == rollupref.report(want, None)
    again = store_cli.import_lines(store, lines)  # idempotent
    assert (again.read, again.inserted) == (len(lines), 0)
    assert rollupref.stored_rollups(backend.url) == rollupref.rollups(want)


def test_sqlite_import_rows_beside_another_writer_add_up(tmp_path: Path) -> None:
    """As an import next to the running proxy: two connections to one file, interleaved."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    importer, proxy = open_store(url), open_store(url)
    imported = [_rec(i) for i in range(0, 240, 2)]
    recorded = [_rec(i, "globex") for i in range(1, 240, 2)]
    lines = [_line(r, _uid(i)) for i, r in enumerate(imported)]
    rows = [store_cli.import_row(text, n) for n, text in enumerate(lines, 1)]

    def import_all() -> None:
        for i in range(0, len(rows), 9):
            importer.import_rows(rows[i : i + 9])  # type: ignore[attr-defined]

    def record_all() -> None:
        for i in range(0, len(recorded), 7):
            proxy.record_many([(r, None) for r in recorded[i : i + 7]])

    threads = [threading.Thread(target=import_all), threading.Thread(target=record_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert importer.import_rows(rows) == 0  # type: ignore[attr-defined]
        want = [_as_stored(r) for r in imported + recorded]
        assert rollupref.stored_rollups(url) == rollupref.rollups(want)
        assert _stored(importer) == sorted(want, key=lambda r: r.ts)
    finally:
        importer.close()
        proxy.close()


def test_sqlite_import_rows_after_a_failed_batch(tmp_path: Path) -> None:
    """A batch the database refuses leaves nothing behind, and the next one still imports."""
    from crawlguard.store import StoreError

    url = f"sqlite:///{tmp_path / 'one.db'}"
    store = open_store(url)
    try:
        rows = [store_cli.import_row(_line(_rec(i), _uid(i)), i + 1) for i in range(6)]
        broken = [*rows[:3], (rows[3][0], None, *rows[3][2:])]  # ts NULL: NOT NULL refuses it
        with pytest.raises(StoreError):
            store.import_rows(broken)  # type: ignore[attr-defined]
        assert store.query() == []
        assert rollupref.stored_rollups(url) == rollupref.rollups([])
        assert store.import_rows(rows) == 6  # type: ignore[attr-defined]
        assert rollupref.stored_rollups(url) == rollupref.rollups(
            [_as_stored(_rec(i)) for i in range(6)]
        )
    finally:
        store.close()
