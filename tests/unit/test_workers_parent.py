"""`crawlguard run --workers N`, the parent's parts alone: the config snapshot it hands its workers
reads back as the same config, and its admin store opens at first use when the store was
down at start. The workers themselves: tests/e2e/test_workers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def test_the_config_snapshot_reads_back_as_the_same_config(tmp_path: Path) -> None:
    from crawlguard.cli.workers import write_snapshot
    from crawlguard.config import load_config

    for source in sorted((Path(__file__).resolve().parents[2] / "config").glob("*.yaml")):
        cfg = load_config(source, secrets=False)
        write_snapshot(cfg, tmp_path / "snapshot.yaml")  # raises if it does not read back
        assert load_config(tmp_path / "snapshot.yaml", secrets=False) == cfg
        assert (tmp_path / "snapshot.yaml").stat().st_mode & 0o077 == 0


def test_the_parents_store_opens_at_first_use_when_it_was_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crawlguard.store
    from crawlguard.cli.workers import AdminStore
    from crawlguard.store import StoreUnavailable

    real = crawlguard.store.open_store
    down = True

    def open_store(url: str, **kw: Any) -> Any:
        if down:
            raise StoreUnavailable("PostgreSQL is down")
        return real(url, **kw)

    monkeypatch.setattr(crawlguard.store, "open_store", open_store)
    store = AdminStore(f"sqlite:///{tmp_path / 'cg.db'}")  # starts all the same
    with pytest.raises(StoreUnavailable):  # what the API answers with a 503
        store.robots_body("0" * 64)
    down = False
    assert store.robots_body("0" * 64) is None
    store.close()
