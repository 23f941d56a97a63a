"""Moving a store as an operator does it (docs/operators/store.md): `crawlguard store export`
from the embedded SQLite, `crawlguard store import` into PostgreSQL, as processes. Every record
arrives once (uids), a second import adds nothing, and the report and summaries are the same on
both sides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from harness import base_config

from crawlguard.policy.records import FIELDS, ViolationRecord
from crawlguard.store import ViolationFilter, open_store

pytest_plugins = ["pgutil"]

if TYPE_CHECKING:
    from pgutil import PgSchema

TENANTS = ("acme", "globex", "initech")
KINDS = ("robots-disallow", "ua-generic", "crawl-delay", "tenant-limit")
ACTIONS = ("blocked", "logged", "delayed")


def _records(n: int) -> list[ViolationRecord]:
    out = []
    for i in range(n):
        minute = i * 37  # about 9 days: hour and day edges, partial hours at both ends
        ts = f"2024-05-{1 + minute // 1440:02d}T{minute // 60 % 24:02d}:{minute % 60:02d}:07.5Z"
        folded = i % 5 == 0
        out.append(
            ViolationRecord(
                ts=ts,
                tenant=TENANTS[i % 3],
                kind=KINDS[i % 4],
                action=ACTIONS[i % 3],
                method="GET",
                url=f"https://site{i % 7}.example/p/{i}",
                user_agent="AcmeBot/1.0 (+https://acme.example/bot)",
                rule="Disallow: /p/" if i % 4 == 0 else None,
                crawl_delay=2.5 if i % 4 == 2 else None,
                count=1 + i % 9 if folded else 1,
                first_ts=ts if folded else None,
                last_ts=ts.replace(":07.5Z", ":59.25Z") if folded else None,
            )
        )
    return out


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def _config(tmp_path: Path, name: str, url: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path / name, store={"url": url})))
    return str(path)


def _summaries(url: str) -> list[Any]:
    store = open_store(url)
    try:
        return [
            store.summary(ViolationFilter(since=since, until=until, **flt), buckets=buckets)
            for since, until, buckets, flt in (
                ("2024-04-30T00:00:00Z", "2024-05-12T00:00:00Z", 12, {}),
                ("2024-05-02T05:17:00Z", "2024-05-05T01:00:00Z", 28, {}),
                ("2024-05-01T00:00:00Z", "2024-05-10T00:00:00Z", 9, {"tenant": "acme"}),
                ("2024-05-01T00:00:00Z", "2024-05-10T00:00:00Z", 9, {"action": "delayed"}),
                ("2024-05-01T00:00:00Z", "2024-05-10T00:00:00Z", 3, {"host": "site3.example"}),
            )
        ] + [store.latest_violations(), store.latest_violations(since="2024-05-04T12:30:00Z")]
    finally:
        store.close()


def test_export_from_sqlite_import_into_postgresql(tmp_path: Path, pg_schema: PgSchema) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'old' / 'crawlguard.db'}"
    recs = _records(350)
    source = open_store(sqlite_url)
    source.record_many([(r, None) for r in recs[:200]])
    source.record_many([(r, None) for r in recs[200:]])
    source.close()
    old = _config(tmp_path, "old", sqlite_url)
    new = _config(tmp_path, "new", pg_schema.url())

    exported = _cli("store", "export", "--config", old)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.decode().splitlines()]
    assert len(lines) == 350 and all(set(obj) == {*FIELDS, "uid"} for obj in lines)
    assert [obj["ts"] for obj in lines] == sorted(obj["ts"] for obj in lines)  # oldest first
    export_file = tmp_path / "export.jsonl"
    export_file.write_bytes(exported.stdout)

    first = _cli("store", "import", "--config", new, str(export_file))
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().strip() == "read 350, inserted 350, skipped 0"
    uids = {obj["uid"] for obj in lines}
    moved = [u.hex for (u,) in pg_schema.rows("SELECT uid FROM violations")]
    assert len(moved) == len(set(moved)) == 350 and set(moved) == uids

    again = _cli("store", "import", "--config", new, "-", stdin=exported.stdout)
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().strip() == "read 350, inserted 0, skipped 350"
    assert pg_schema.count("violations") == 350

    reports = [_cli("report", "--config", c, "--format", "json") for c in (old, new)]
    assert all(r.returncode == 0 for r in reports), [r.stderr for r in reports]
    assert json.loads(reports[0].stdout) == json.loads(reports[1].stdout)
    assert json.loads(reports[0].stdout)["tenants"]["acme"]["violations_total"] > 0
    assert _summaries(sqlite_url) == _summaries(pg_schema.url())

    back = _cli("store", "export", "--config", new, "--since", "2024-05-05T00:00:00Z")
    assert back.returncode == 0, back.stderr
    tail = [json.loads(line) for line in back.stdout.decode().splitlines()]
    assert tail == [obj for obj in lines if obj["ts"] >= "2024-05-05T00:00:00.000000Z"]
