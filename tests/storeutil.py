"""The violation-store backends for tests that run on each: SQLite in the test's tmp_path and
PostgreSQL in a private schema (pgutil). A test module gets the `backend` fixture with
``pytest_plugins = ["pgutil", "storeutil"]``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pgutil import PgSchema


@dataclass
class Backend:
    name: str
    url: str
    count: Callable[[str], int]  # rows in a table, read behind the store's back


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "var" / "crawlguard.db"

        def count(table: str) -> int:
            db = sqlite3.connect(path)
            try:
                return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            finally:
                db.close()

        return Backend("sqlite", f"sqlite:///{path}", count)
    schema: PgSchema = request.getfixturevalue("pg_schema")
    return Backend("postgresql", schema.url(), schema.count)
