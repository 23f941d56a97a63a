"""Issue 18 item 13, the rules: identical refusals beyond `store.fold_after` per interval (and
beyond `store.fold_tenant_after` per tenant) fold into one record per interval carrying the
count, every refusal is in some record's count (crawlguard.store.fold on a fake clock), and
the default and every shipped config keep 30 days. Against the real proxy:
tests/e2e/test_records_folded.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import base_config

from crawlguard.config import parse_config
from crawlguard.policy.records import ViolationRecord
from crawlguard.store.fold import OVERFLOW_REASON, Folder

GENERIC_UA = "python-requests/2.31"  # refused ua-generic before any origin is contacted


REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(
    i: int, tenant: str = "acme", host: str = "a.example", action: str = "blocked", **kw: Any
) -> ViolationRecord:
    return ViolationRecord.from_dict(
        {
            "ts": f"2024-05-01T00:00:{i // 1000:02d}.{i % 1000:06d}Z",
            "tenant": tenant,
            "kind": "ua-generic",
            "action": action,
            "method": "GET",
            "url": f"http://{host}/p{i}",
            "user_agent": GENERIC_UA,
            "rule": "python-requests",
            **kw,
        }
    )


def folder(clock: FakeClock, after: int = 3, tenant_after: int = 50) -> Folder:
    return Folder(after=after, tenant_after=tenant_after, interval=60, clock=clock)


def test_first_n_per_key_are_recorded_then_one_folded_record_per_interval() -> None:
    clock = FakeClock()
    f = folder(clock)
    admitted = [f.one_by_one(refusal(i)) for i in range(100)]
    assert admitted == [True] * 3 + [False] * 97
    assert f.take_due() == []  # the interval has not ended
    clock.now += 60
    [(rec, body)] = f.take_due()
    assert body is None
    assert rec == refusal(3, count=97, ts=refusal(3).ts, first_ts=refusal(3).ts,
                          last_ts=refusal(99).ts)  # fmt: skip
    assert rec.url == "http://a.example/p3"  # the sample: the first folded refusal
    assert f.take_due() == []  # handed over once
    assert f.one_by_one(refusal(100))  # a new interval: recorded one by one again


def test_actions_hosts_and_rules_are_separate_keys() -> None:
    clock = FakeClock()
    f = folder(clock, after=1)
    assert f.one_by_one(refusal(0))
    assert f.one_by_one(refusal(1, action="logged"))  # logged and blocked do not mix
    assert f.one_by_one(refusal(2, host="b.example"))
    assert f.one_by_one(refusal(3, rule="other"))
    assert not f.one_by_one(refusal(4))
    assert not f.one_by_one(refusal(5, action="logged"))
    clock.now += 60
    due = sorted((r.action, r.count) for r, _ in f.take_due())
    assert due == [("blocked", 1), ("logged", 1)]


def test_a_tenant_cycling_through_hosts_is_bounded_and_every_refusal_counted() -> None:
    """10,000 distinct hosts: at most `tenant_after` individual records and `tenant_after`
    folds, then one overflow fold; memory stays bounded; another tenant keeps its own share."""
    clock = FakeClock()
    f = folder(clock, after=3, tenant_after=20)
    individual = sum(f.one_by_one(refusal(i, host=f"h{i}.example")) for i in range(10_000))
    assert individual == 20
    assert f.entries <= 20 + 20 + 1
    assert f.one_by_one(refusal(0, tenant="globex"))  # not spent by acme
    folded = f.drain()
    assert len(folded) == 21
    assert individual + sum(r.count for r, _ in folded) == 10_000
    overflow = [r for r, _ in folded if r.reason == OVERFLOW_REASON]
    assert len(overflow) == 1 and overflow[0].count == 10_000 - 40 and overflow[0].rule is None
    assert f.entries <= 41 and f.pending == 0


def test_drain_hands_over_the_current_interval_and_keeps_the_sample_body() -> None:
    clock = FakeClock()
    f = folder(clock, after=1)
    body = b"User-agent: *\nDisallow: /\n"
    f.one_by_one(refusal(0, robots_sha256="ab"), body)
    assert not f.one_by_one(refusal(1, robots_sha256="ab"), body)
    assert not f.one_by_one(refusal(2, robots_sha256="ab"), body)
    assert f.pending == 2
    [(rec, kept)] = f.drain()
    assert (rec.count, kept) == (2, body)
    assert f.drain() == [] and f.pending == 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"after": 0}, "after"), ({"tenant_after": 0}, "after"), ({"interval": 0}, "interval")],
)
def test_folder_refuses_nonsense(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"after": 1, "tenant_after": 1, "interval": 1.0, **kw}
    with pytest.raises(ValueError, match=message):
        Folder(**args)


def test_retention_is_set_by_default_and_in_every_shipped_config() -> None:
    cfg = parse_config(base_config(Path("/nonexistent")), "test")
    assert cfg.store.retention_days == 30
    assert (
        parse_config(
            base_config(Path("/nonexistent"), store={"retention_days": None}), "test"
        ).store.retention_days
        is None
    )  # keep forever, said explicitly
    for name in ("config/crawlguard.yaml", "config/example.yaml", "docker/crawlguard.yaml"):
        store = yaml.safe_load((REPO / name).read_text())["store"]
        assert isinstance(store.get("retention_days"), int), name
