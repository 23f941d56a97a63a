"""The test tiers hold: every test file lives in tests/unit, tests/inprocess or tests/e2e, and
a unit test cannot open a socket or start a process (tests/tierguard.py)."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tierguard import TierViolation

TESTS = Path(__file__).resolve().parents[1]
TIERS = ("unit", "inprocess", "e2e")


def test_every_test_file_is_in_a_tier() -> None:
    outside = sorted(
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("test_*.py")
        if p.relative_to(TESTS).parts[0] not in TIERS
    )
    assert not outside, (
        f"test files outside tests/unit|inprocess|e2e (see docs/development.md, Tests): {outside}"
    )


def test_no_test_file_name_is_used_twice() -> None:
    """pytest imports test modules by file name (rootdir-relative, no packages): two files of
    one name in two tiers would collide."""
    names = [p.name for tier in TIERS for p in (TESTS / tier).glob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_a_unit_test_cannot_open_a_socket() -> None:
    with socket.socket() as s, pytest.raises(TierViolation, match="bind a socket"):
        s.bind(("127.0.0.1", 0))
    with socket.socket() as s, pytest.raises(TierViolation, match="connect a socket"):
        s.connect(("127.0.0.1", 9))
    with socket.socket() as s, pytest.raises(TierViolation, match="connect a socket"):
        s.connect_ex(("127.0.0.1", 9))
    with socket.socket(type=socket.SOCK_DGRAM) as s, pytest.raises(TierViolation, match="datagram"):
        s.sendto(b"x", ("127.0.0.1", 9))
    with pytest.raises(TierViolation):
        socket.create_connection(("127.0.0.1", 9))


def test_a_unit_test_cannot_start_a_process() -> None:
    with pytest.raises(TierViolation, match="subprocess"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(TierViolation, match="process"):
        multiprocessing.get_context("spawn").Process(target=print).start()


async def test_an_event_loop_still_runs() -> None:
    """asyncio's self-pipe is a socketpair: neither connect nor bind, so loops work here."""
    import asyncio

    assert await asyncio.sleep(0, result=1) == 1
