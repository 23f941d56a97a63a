"""Wrong operator credentials are throttled per source address (issue 18 item 16): the back-off
logic on a fake clock. The admin server in-process and `crawlguard run` under a flood of wrong
logins: tests/e2e/test_admin_throttle.py.
"""

from __future__ import annotations

import logging

import pytest

from crawlguard.admin import throttle
from crawlguard.admin.throttle import AuthThrottle, source_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_free_failures_then_a_lockout_doubling_up_to_the_cap() -> None:
    clock = Clock()
    t = AuthThrottle(free=3, base=1.0, cap=8.0, clock=clock)
    assert [t.failure("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert t.retry_after("a") == 0
    locks = []
    for _ in range(6):
        locks.append(t.failure("a"))
        assert t.retry_after("a") == int(locks[-1])
        clock.now += locks[-1]  # the caller checks nothing while locked: wait it out
        assert t.retry_after("a") == 0
    assert locks == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert t.retry_after("b") == 0  # another source is never affected


def test_success_resets_and_an_old_run_of_failures_is_forgotten() -> None:
    clock = Clock()
    t = AuthThrottle(free=2, base=1.0, cap=60.0, forget=100.0, clock=clock)
    for _ in range(3):
        t.failure("a")
    assert t.retry_after("a") == 1
    t.success("a")
    assert t.retry_after("a") == 0 and len(t) == 0
    assert [t.failure("a") for _ in range(3)] == [0.0, 0.0, 1.0]  # free again
    clock.now += 99.0
    assert t.failure("a") == 2.0  # still the same run
    clock.now += 100.0
    assert t.failure("a") == 0.0  # idle for `forget`: a new run


def test_a_flood_of_sources_stays_bounded() -> None:
    clock = Clock()
    t = AuthThrottle(free=0, max_sources=1000, clock=clock)

    def source(i: int) -> str:
        return f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"

    for i in range(5_000):  # five times the bound: every source past it evicts one
        t.failure(source(i))
    assert len(t) == 1000
    # the most recent ones are the ones kept
    assert t.retry_after(source(4_999)) >= 1 and t.retry_after(source(0)) == 0


def test_one_log_line_per_throttled_source_and_a_flood_cannot_fill_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    t = AuthThrottle(free=2, clock=clock)
    with caplog.at_level(logging.WARNING, "crawlguard"):
        for _ in range(50):  # one source keeps failing, waiting out every lock
            t.failure("198.51.100.7")
            clock.now += t.retry_after("198.51.100.7")
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1
        assert "3 wrong operator credentials in a row from 198.51.100.7" in lines[0]
        caplog.clear()
        for i in range(500):  # 500 sources each get themselves throttled at once
            for _ in range(3):
                t.failure(f"source-{i}")
        assert len(caplog.records) == throttle.REPORT_BURST
        clock.now += throttle.REPORT_WINDOW
        t.failure("192.0.2.1")
        t.failure("192.0.2.1")
        t.failure("192.0.2.1")
        last = caplog.records[-1].getMessage()
        assert f"({500 - throttle.REPORT_BURST} more source(s)" in last


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # one client's /64 is one source
        ("fe80::1%eth0", "fe80::/64"),
        (None, "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_source_keys(remote: str | None, key: str) -> None:
    assert source_key(remote) == key


@pytest.fixture
def clock() -> Clock:
    return Clock()
