"""What a client can make the proxy hold before any tenant is known, as rules: ClientLimits
(connection count, idle sweep, unauthenticated connections per source, who is closed to make
room), the request-head caps and the tunnel sniffer. The real proxy holding them:
tests/e2e/test_client_limits.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard.proxy.client_limits import ClientLimits, source_key
from crawlguard.proxy.compat import HeadLimits, buffered_head_problem
from crawlguard.proxy.sniff import FirstBytes, classify


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_connection_cap_and_sweep_of_clients_without_a_request_in_flight():
    clock, closed = Clock(), []
    limits = ClientLimits(2, 30, closed.append, clock)
    assert limits.connected("a") is None and limits.connected("b") is None
    limits.authenticated("a")  # an unauthenticated one would be closed to make room instead
    limits.authenticated("b")
    assert "max_connections" in (limits.connected("c") or "")
    limits.request_started("a")  # a request in flight (held, uploading) is never swept
    clock.now += 31
    assert limits.sweep() == 1 and closed == ["b"]
    limits.request_done("a")
    clock.now += 29
    assert limits.sweep() == 0
    clock.now += 2
    assert limits.sweep() == 1 and closed == ["b", "a"]
    assert len(limits) == 0 and limits.connected("d") is None


def test_head_caps():
    assert buffered_head_problem(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    assert buffered_head_problem(b"GET /" + b"a" * HeadLimits.line)[0] == 414
    big = b"GET / HTTP/1.1\r\n" + b"X-A: " + b"b" * HeadLimits.head
    assert buffered_head_problem(big)[0] == 431
    done = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"body" * HeadLimits.head
    assert buffered_head_problem(done) is None  # a complete head followed by a body is not capped


def test_a_source_over_its_unauthenticated_cap_loses_its_oldest_first():
    closed: list[str] = []
    limits = ClientLimits(100, 30, closed.append, max_unauthenticated_per_source=2)
    for cid in ("a1", "a2", "b1", "a3"):
        assert limits.connected(cid, cid[0]) is None
    assert closed == ["a1"]  # the new one is kept, the oldest of its source goes
    limits.authenticated("a2")  # a tenant on it: no longer counted, never closed for the cap
    assert limits.connected("a4", "a") is None and limits.connected("a5", "a") is None
    assert closed == ["a1", "a3"]
    assert (limits.unauthenticated("a"), limits.unauthenticated("b"), len(limits)) == (2, 1, 4)


def test_at_the_global_cap_the_source_holding_the_most_unauthenticated_pays():
    closed: list[str] = []
    limits = ClientLimits(4, 30, print, max_unauthenticated_per_source=10, evicted=closed.append)
    for cid in ("a1", "b1", "b2", "a2"):
        assert limits.connected(cid, cid[0]) is None
    limits.authenticated("a1")
    assert limits.connected("c1", "c") is None  # at the cap: b holds the most unauthenticated
    assert closed == ["b1"]
    limits.authenticated("b2")
    limits.authenticated("a2")
    limits.authenticated("c1")
    assert "max_connections" in (limits.connected("d1", "d") or "")  # all authenticated: refused
    assert len(limits) == 4 and closed == ["b1"]


def test_a_closed_or_swept_connection_leaves_no_count_behind():
    clock, closed = Clock(), []
    limits = ClientLimits(10, 30, closed.append, clock, max_unauthenticated_per_source=3)
    for cid in ("a1", "a2", "a3"):
        limits.connected(cid, "a")
    limits.disconnected("a2")
    clock.now += 31
    assert limits.sweep() == 2 and limits.unauthenticated("a") == 0
    assert [limits.connected(c, "a") for c in ("a4", "a5", "a6")] == [None] * 3
    assert sorted(closed) == ["a1", "a3"]  # the sweep's, none for the cap


OPS = st.lists(  # mostly connects, so both caps are reached often
    st.tuples(
        st.sampled_from(["connect"] * 4 + ["auth", "leave"]), st.integers(0, 3), st.integers(0, 40)
    ),
    min_size=10,
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_what_is_closed_to_make_room_is_always_the_fairest_choice(ops: list[tuple[str, int, int]]):
    """Against a plain model: only unauthenticated connections are closed, the oldest of the new
    one's source when it is at its cap, then at the global cap the oldest of a source holding
    the most; with nothing unauthenticated open, the new one is refused."""
    closed: list[str] = []
    limits = ClientLimits(6, 30, print, max_unauthenticated_per_source=3, evicted=closed.append)
    order: list[str] = []  # open connections, oldest first
    source: dict[str, str] = {}
    anonymous: list[str] = []  # oldest first

    def held(s: str) -> list[str]:
        return [c for c in anonymous if source[c] == s]

    for n, (op, src, pick) in enumerate(ops):
        if op == "connect":
            cid, s = f"c{n}", f"s{src}"
            expected: list[str] = []
            if len(held(s)) >= 3:
                expected.append(held(s)[0])
            open_after = len(order) - len(expected)
            left: list[str] = []
            top: list[str] = []
            if open_after >= 6:
                left = [c for c in anonymous if c not in expected]
                counts = {source[c]: sum(source[x] == source[c] for x in left) for c in left}
                top = [x for x, k in counts.items() if k == max(counts.values(), default=0)]
            closed.clear()
            refused = limits.connected(cid, s)
            if open_after >= 6 and not top:
                assert refused and closed == expected
            else:
                assert refused is None
                if open_after >= 6:
                    assert closed[:-1] == expected
                    victim = closed[-1]
                    assert source[victim] in top
                    assert victim == next(c for c in left if source[c] == source[victim])
                else:
                    assert closed == expected
            for victim in closed:
                order.remove(victim)
                anonymous.remove(victim)
            if not refused:
                order.append(cid)
                source[cid] = s
                anonymous.append(cid)
        elif order:
            cid = order[pick % len(order)]
            if op == "auth":
                limits.authenticated(cid)
            else:
                limits.disconnected(cid)
                order.remove(cid)
            if cid in anonymous:
                anonymous.remove(cid)
        assert len(limits) == len(order) <= 6
        for x in (f"s{i}" for i in range(4)):
            assert limits.unauthenticated(x) == len(held(x)) <= 3


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
    ],
)
def test_sources_are_addresses_and_ipv6_64s(host: str, key: str):
    assert source_key(host) == key


def test_empty_lines_before_a_request_are_capped():
    assert buffered_head_problem(b"\r\n" * 100 + b"GET / HTTP/1.1\r\n") is None
    assert buffered_head_problem(b"\n" * HeadLimits.empty_lines) is None
    assert buffered_head_problem(b"\r\n" * HeadLimits.empty_lines)[0] == 400
    assert buffered_head_problem(b"\n" * (HeadLimits.empty_lines + 1))[0] == 400
    line = b"\r\n" * 10 + b"GET /" + b"a" * HeadLimits.line  # caps count after the empty lines
    assert buffered_head_problem(line)[0] == 414
    assert classify(b"\r\n" * 100) is FirstBytes.MORE
    assert classify(b"\r\n" * HeadLimits.empty_lines) is FirstBytes.OTHER


def test_the_tunnel_sniffer_reads_the_running_request_line_cap(monkeypatch: pytest.MonkeyPatch):
    assert classify(b"GET /" + b"a" * 2000) is FirstBytes.MORE
    monkeypatch.setattr(HeadLimits, "line", 1024)  # proxy.max_request_line: 1024
    assert classify(b"GET /" + b"a" * 2000) is FirstBytes.OTHER
