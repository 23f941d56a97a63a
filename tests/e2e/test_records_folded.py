"""Issue 18 item 13: records by the million.

Identical refusals beyond `store.fold_after` per interval (and beyond `store.fold_tenant_after`
per tenant) are folded into one record per interval that carries the count; every refusal is
in some record's count; the default config keeps 30 days; `/healthz` and the
``crawlguard_store_disk_*`` gauges report a store disk below `store.min_free_bytes`.

Here against the real proxy (subprocess), a real origin and the real SQLite file; the folder
alone (pure logic, crawlguard.store.fold, on a fake clock): tests/unit/test_records_fold_rules.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import LocalOrigin, Proxy, base_config, wait_for
from prometheus_client.parser import text_string_to_metric_families

from crawlguard.store.fold import OVERFLOW_REASON

GENERIC_UA = "python-requests/2.31"  # refused ua-generic before any origin is contacted


# -- the folder (pure logic) -------------------------------------------------------------------


# -- the real proxy -------------------------------------------------------------------------------


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    origin = LocalOrigin()
    yield origin
    origin.close()


def db_rows(proxy: Proxy, sql: str) -> list[tuple[Any, ...]]:
    path = proxy.config["store"]["url"].removeprefix("sqlite:///")
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def acme_generic(proxy: Proxy) -> list[tuple[int, str, str | None, str | None]]:
    return db_rows(  # type: ignore[return-value]
        proxy,
        "SELECT count, url, first_ts, last_ts FROM violations "
        "WHERE tenant = 'acme' AND kind = 'ua-generic' ORDER BY id",
    )


def sample(proxy: Proxy, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(proxy.metrics()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_a_client_refused_in_a_loop_leaves_n_plus_one_records(
    tmp_path: Path, site: LocalOrigin
) -> None:
    """200 identical refusals, fold_after 5: the first 5 are durable before their responses,
    the rest fold into one record written at shutdown; counts sum to exactly 200, the metric
    counted every refusal, the JSON log has one line per record."""
    cfg = base_config(tmp_path, store={"fold_after": 5, "fold_interval": 3600})
    proxy = Proxy(cfg, tmp_path)
    try:
        for i in range(200):
            r = proxy.get(site.url(f"/loop?{i}"), ua=GENERIC_UA)
            assert r.status_code == 403 and r.headers["X-Crawlguard-Decision"] == "ua-generic"
            if i < 5:  # durable before the response, as before
                assert len(acme_generic(proxy)) == i + 1
        assert len(acme_generic(proxy)) == 5  # the rest is counted, not written
        assert sample(proxy, "crawlguard_violations_total", tenant="acme", kind="ua-generic") == 200
        assert sample(proxy, "crawlguard_violations_folded_total", tenant="acme") == 195
    finally:
        assert proxy.stop() == 0
    rows = acme_generic(proxy)
    assert len(rows) <= 6
    assert sum(n for n, *_ in rows) == 200
    assert [n for n, *_ in rows] == [1, 1, 1, 1, 1, 195]
    _, url, first_ts, last_ts = rows[-1]
    assert url == site.url("/loop?5")  # the sample
    assert first_ts is not None and last_ts is not None and first_ts < last_ts
    logged = [json.loads(ln) for ln in proxy.json_lines().splitlines() if ln.startswith("{")]
    logged = [d for d in logged if d.get("kind") == "ua-generic"]
    assert [d["count"] for d in logged] == [1, 1, 1, 1, 1, 195]
    # the operator views count refusals, not rows
    assert sum(v["count"] for v in proxy.violations("--tenant", "acme")) == 200


def test_folded_records_are_written_when_their_interval_ends(
    tmp_path: Path, site: LocalOrigin
) -> None:
    cfg = base_config(tmp_path, store={"fold_after": 2, "fold_interval": 1})
    proxy = Proxy(cfg, tmp_path)
    try:
        for i in range(30):
            assert proxy.get(site.url(f"/again?{i}"), ua=GENERIC_UA).status_code == 403
        # no shutdown: the interval's end writes them
        assert wait_for(lambda: sum(n for n, *_ in acme_generic(proxy)) == 30), acme_generic(proxy)
        assert any(n > 1 for n, *_ in acme_generic(proxy))
    finally:
        proxy.stop()


def test_a_tenant_cycling_through_hosts_is_bounded_per_tenant(
    tmp_path: Path, site: LocalOrigin
) -> None:
    """40 distinct hosts (127.0.0.1-40, refused before any is contacted), fold_tenant_after 4:
    4 individual records, 4 folded keys, one overflow record; another tenant is unaffected."""
    cfg = base_config(
        tmp_path, store={"fold_after": 100, "fold_tenant_after": 4, "fold_interval": 3600}
    )
    proxy = Proxy(cfg, tmp_path)
    try:
        for i in range(1, 41):
            r = proxy.get(f"http://127.0.0.{i}:{site.port}/x", ua=GENERIC_UA)
            assert r.status_code == 403
        assert len(acme_generic(proxy)) == 4
        assert proxy.get(site.url("/g"), tenant="globex", ua=GENERIC_UA).status_code == 200
        assert db_rows(proxy, "SELECT count FROM violations WHERE tenant = 'globex'") == [(1,)]
    finally:
        assert proxy.stop() == 0
    rows = acme_generic(proxy)
    assert [n for n, *_ in rows] == [1] * 8 + [32]
    assert sum(n for n, *_ in rows) == 40
    assert db_rows(proxy, "SELECT rule, reason FROM violations ORDER BY id DESC LIMIT 1") == [
        (None, OVERFLOW_REASON)
    ]
    assert site.paths() == ["/g"]  # no refused host was contacted


def test_healthz_and_the_gauges_report_a_store_disk_nearly_full(tmp_path: Path) -> None:
    """A threshold above the real free space trips it (the disk is not filled)."""
    low = Proxy(base_config(tmp_path, store={"min_free_bytes": 2**62}), tmp_path)
    try:
        r = requests.get(f"http://127.0.0.1:{low.admin_port}/healthz", timeout=5)
        assert r.status_code == 200  # ready: the proxy still records
        assert r.text.startswith("ok\nwarning: store disk low: ")
        assert "store.min_free_bytes" in r.text
        assert wait_for(lambda: sample(low, "crawlguard_store_disk_low") == 1)
        free = sample(low, "crawlguard_store_disk_free_bytes")
        assert free is not None and 0 < free < 2**62
        assert "store disk low" in low.log()
    finally:
        low.stop()
    fine = tmp_path / "fine"
    fine.mkdir()
    ok = Proxy(base_config(fine, store={"min_free_bytes": 0}), fine)
    try:
        r = requests.get(f"http://127.0.0.1:{ok.admin_port}/healthz", timeout=5)
        assert (r.status_code, r.text) == (200, "ok\n")
        assert wait_for(lambda: (sample(ok, "crawlguard_store_disk_free_bytes") or 0) > 0)
        assert sample(ok, "crawlguard_store_disk_low") == 0
    finally:
        ok.stop()


# -- defaults ---------------------------------------------------------------------------------
