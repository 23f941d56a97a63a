"""tests/unit: no sockets, no subprocesses, enforced for every test here (tests/tierguard.py)."""

from __future__ import annotations

import pytest
from tierguard import refuse_sockets_and_processes


@pytest.fixture(autouse=True)
def unit_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuses sockets and processes while the test and its function-scoped fixtures run."""
    refuse_sockets_and_processes(monkeypatch)
