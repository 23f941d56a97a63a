"""The violation store contract's durability across a crash, on every backend (SQLite and
PostgreSQL): `record` returning means durable, so a process killed right after (a subprocess
here) loses nothing. The rest of the contract: tests/inprocess/test_store_contract.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crawlguard.store import open_store

if TYPE_CHECKING:
    from storeutil import Backend  # the fixture itself comes as a plugin (below)

pytest_plugins = ["pgutil", "storeutil"]  # fixtures: pg_server, pg_schema, relay; backend


def test_records_survive_a_crash_without_close(backend: Backend, tmp_path: Path) -> None:
    """`record` returning means durable: a process killed right after must not lose it."""
    code = (
        "import os, sys\n"
        "from crawlguard.policy.records import ViolationRecord\n"
        "from crawlguard.store import open_store\n"
        "s = open_store(sys.argv[1])\n"
        "s.record(ViolationRecord('2024-05-01T00:00:00Z', 'acme', 'ua-missing', 'blocked',"
        " 'GET', 'http://x.test/'))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, backend.url], check=True, timeout=60, cwd=tmp_path)
    s = open_store(backend.url)
    try:
        assert [r.kind for r in s.query()] == ["ua-missing"]
    finally:
        s.close()
