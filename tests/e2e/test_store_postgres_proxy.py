"""PostgreSQL store specifics across processes (issue 11): a spool left by a killed process is
replayed by the next, and the real proxy (`crawlguard run`) records into PostgreSQL, spools
while it is down and replays exactly once, loses nothing to SIGKILL, and refuses a store it
cannot use. Outages are cut at a TCP relay (pgutil.TcpRelay), never at the shared server;
each test has its own schema. In-process specifics: tests/inprocess/test_store_postgres.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from harness import LocalOrigin, Proxy, base_config, wait_for

from crawlguard.store import (
    open_store,
)
from crawlguard.store.spool import SpoolingStore

if TYPE_CHECKING:
    from pgutil import PgSchema, TcpRelay

pytest_plugins = ["pgutil"]  # its fixtures: pg_server, pg_schema, relay

GENERIC_UA = "python-requests/2.31"


ROBOTS = b"User-agent: *\nDisallow: /private/\n"


def urls(schema: PgSchema) -> list[str]:
    return [u for (u,) in schema.rows("SELECT url FROM violations ORDER BY id")]


def spooling(url: str, directory: Path, **kw: Any) -> SpoolingStore:
    store = open_store(url, spool_dir=directory, **kw)
    assert isinstance(store, SpoolingStore)
    store.retry_max = 0.5  # tests wait on conditions; keep the reconnect back-off short
    return store


def test_records_spooled_by_a_killed_process_are_replayed_by_the_next(
    pg_schema: PgSchema,
    relay: TcpRelay,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    relay.stop()
    code = (
        "import os, signal, sys\n"
        "from crawlguard.policy.records import ViolationRecord\n"
        "from crawlguard.store import open_store\n"
        "s = open_store(sys.argv[1], spool_dir=sys.argv[2])\n"
        "assert s.spooling\n"
        "for i in range(30):\n"
        "    s.record(ViolationRecord(f'2024-05-01T00:00:{i:02d}Z', 'acme', 'ua-missing',"
        " 'blocked', 'GET', f'http://x.test/{i}'))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, pg_schema.url(port=relay.port), str(spool)], timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    (left,) = spool.glob("spool-*.jsonl")
    assert len(left.read_bytes().splitlines()) == 30
    relay.start()
    store = spooling(pg_schema.url(port=relay.port), spool)
    try:
        assert wait_for(lambda: not store.spooling, timeout=30)
        assert urls(pg_schema) == [f"http://x.test/{i}" for i in range(30)]
        assert not left.exists()
    finally:
        store.close()


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin(robots=ROBOTS)
    yield o
    o.close()


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", *args],
        cwd=tmp, capture_output=True, timeout=60,
    )  # fmt: skip


def metric(proxy: Proxy, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", proxy.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def test_the_proxy_records_into_postgresql_and_the_cli_reads_it(
    pg_schema: PgSchema,
    site: LocalOrigin,
    tmp_path: Path,
) -> None:
    cfg = base_config(tmp_path, store={"url": pg_schema.url()})
    proxy = Proxy(cfg, tmp_path)
    try:
        assert proxy.get(site.url("/generic"), ua=GENERIC_UA).status_code == 403
        assert proxy.get(site.url("/private/x")).status_code == 403
        assert proxy.get(site.url("/fine")).status_code == 200
        got = proxy.violations()  # `crawlguard violations --config` against PostgreSQL
        assert [(r["kind"], r["url"]) for r in got] == [
            ("robots-disallow", site.url("/private/x")),
            ("ua-generic", site.url("/generic")),
        ]
        assert proxy.violations("--kind", "ua-generic", "--tenant", "acme")[0]["url"].endswith(
            "/generic"
        )
        sha = got[0]["robots_sha256"]
        out = cli(tmp_path, "robots-txt", "--config", str(proxy.config_path), sha)
        assert out.returncode == 0 and out.stdout == ROBOTS
        assert proxy.stop() == 0  # flushes request counts
        out = cli(tmp_path, "report", "--config", str(proxy.config_path), "--format", "json")
        assert out.returncode == 0, out.stderr
        acme = json.loads(out.stdout)["tenants"]["acme"]
        assert acme["requests"] == {"ua-generic": 1, "robots-disallow": 1, "allowed": 1}
        assert acme["violations"] == {"robots-disallow": 1, "ua-generic": 1}
    finally:
        proxy.stop()


def test_the_proxy_spools_while_postgresql_is_down_and_replays_exactly_once(
    pg_schema: PgSchema,
    relay: TcpRelay,
    site: LocalOrigin,
    tmp_path: Path,
) -> None:
    # every refusal on its own record (fold_after): this test follows each one through the spool
    store = {"url": pg_schema.url(port=relay.port), "fold_after": 100}
    cfg = base_config(tmp_path, store=store)
    proxy = Proxy(cfg, tmp_path)
    try:
        assert proxy.get(site.url("/before"), ua=GENERIC_UA).status_code == 403
        relay.stop()
        for i in range(12):  # answered only once their records are in the spool
            assert proxy.get(site.url(f"/during/{i}"), ua=GENERIC_UA).status_code == 403
        assert metric(proxy, "crawlguard_store_spooled_total") == 12
        assert metric(proxy, "crawlguard_store_errors_total") == 0
        api = requests.get(
            f"http://127.0.0.1:{proxy.admin_port}/api/violations",
            headers={"Authorization": "Bearer op"},
            timeout=10,
        )
        assert api.status_code == 503 and "spooled" in api.json()["error"]  # at once, no hang
        r = proxy.get(site.url("/fine"))
        assert r.status_code == 200  # traffic goes on
        assert pg_schema.count("violations") == 1
        relay.start()
        expected = [site.url("/before")] + [site.url(f"/during/{i}") for i in range(12)]
        assert wait_for(lambda: urls(pg_schema) == expected, timeout=60), urls(pg_schema)
        assert wait_for(lambda: metric(proxy, "crawlguard_store_replayed_total") == 12)
        assert proxy.get(site.url("/after"), ua=GENERIC_UA).status_code == 403
        assert wait_for(lambda: len(urls(pg_schema)) == 14)
        got = [r["url"] for r in proxy.violations()]
        assert len(got) == len(set(got)) == 14
        assert "PostgreSQL store is back" in proxy.log()
    finally:
        proxy.stop()


def test_sigkill_while_spooling_loses_nothing(
    pg_schema: PgSchema,
    relay: TcpRelay,
    site: LocalOrigin,
    tmp_path: Path,
) -> None:
    cfg = base_config(tmp_path, store={"url": pg_schema.url(port=relay.port)})
    relay.stop()  # PostgreSQL is down from the start: the proxy starts anyway
    proxy = Proxy(cfg, tmp_path)
    try:
        for i in range(8):
            assert proxy.get(site.url(f"/lost?{i}"), ua=GENERIC_UA).status_code == 403
        proxy.proc.send_signal(signal.SIGKILL)
        proxy.proc.wait(10)
    finally:
        proxy.stop()
    spool = Path(cfg["proxy"]["confdir"]) / "store-spool"
    assert sum(len(p.read_bytes().splitlines()) for p in spool.glob("spool-*.jsonl")) == 8
    relay.start()
    again = Proxy(cfg, tmp_path)  # the next start adopts the dead process's spool
    try:
        expected = [site.url(f"/lost?{i}") for i in range(8)]
        assert wait_for(lambda: urls(pg_schema) == expected, timeout=60), urls(pg_schema)
        assert [p for p in spool.glob("spool-*.jsonl") if p.stat().st_size] == []
    finally:
        assert again.stop() == 0
    assert list(spool.glob("spool-*.jsonl")) == []


def test_run_refuses_a_store_it_cannot_use(pg_schema: PgSchema, tmp_path: Path) -> None:
    pg_schema.execute("CREATE TABLE violations (x integer)")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, store={"url": pg_schema.url()})))
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(path), "--listen-port", "0",
         "--admin-port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "did not create" in out.stderr and "Traceback" not in out.stderr
