"""A plain reference for what the violation store answers (summary, report, latest) and for
what its roll-up tables hold, computed in Python from the records themselves: the store's
answers from roll-ups must equal these (tests/inprocess/test_store_rollups.py)."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import psycopg

from crawlguard.policy.records import ViolationRecord
from crawlguard.store import (
    Report,
    Summary,
    TenantReport,
    ViolationFilter,
    bucket_width_us,
    canonical_ts,
    epoch_us,
    normalize_ts,
    url_host,
)

SPANS = (86_400, 21_600, 3_600)


def _matches(r: ViolationRecord, flt: ViolationFilter) -> bool:
    for name in ("tenant", "kind", "action"):
        value = getattr(flt, name)
        if value is not None and getattr(r, name) != value:
            return False
    if flt.host is not None and url_host(r.url) != flt.host:
        return False
    ts = normalize_ts(r.ts)
    if flt.since is not None and ts < normalize_ts(flt.since):
        return False
    if flt.until is not None and ts >= normalize_ts(flt.until):
        return False
    return flt.action is not None or r.action != "delayed"


def summary(
    records: Iterable[ViolationRecord], flt: ViolationFilter, buckets: int, top: int
) -> Summary:
    assert flt.since is not None and flt.until is not None
    since, until = normalize_ts(flt.since), normalize_ts(flt.until)
    width = bucket_width_us(since, until, buckets)
    start = epoch_us(since)
    series: dict[str, list[int]] = {}
    kinds: dict[str, int] = defaultdict(int)
    hosts: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        if not _matches(r, flt):
            continue
        b = (epoch_us(r.ts) - start) // width
        series.setdefault(r.tenant, [0] * buckets)[b] += r.count
        kinds[r.kind] += r.count
        host = url_host(r.url)
        if host is not None:
            hosts[(r.tenant, host)] += r.count
    by_kind = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    per_tenant: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for (tid, host), n in sorted(hosts.items(), key=lambda kv: (-kv[1], kv[0][1])):
        if len(per_tenant[tid]) < top:
            per_tenant[tid].append((tid, host, n))
    top_hosts = sorted(
        (row for rows in per_tenant.values() for row in rows),
        key=lambda t: (-t[2], t[0], t[1]),
    )
    return Summary(
        since=since,
        until=until,
        bucket_us=width,
        buckets=buckets,
        series=dict(sorted(series.items())),
        by_kind=by_kind,
        top_hosts=top_hosts,
        total=sum(kinds.values()),
    )


def report(records: Iterable[ViolationRecord], since: str | None) -> Report:
    bound = normalize_ts(since) if since is not None else None
    violations: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    held: dict[str, int] = defaultdict(int)
    for r in records:
        if bound is not None and normalize_ts(r.ts) < bound:
            continue
        if r.action == "delayed":
            held[r.tenant] += r.count
        else:
            violations[r.tenant][r.kind] += r.count
    tenants = {
        tid: TenantReport({}, dict(violations.get(tid, {})), held.get(tid, 0))
        for tid in set(violations) | set(held)
    }
    return Report(since=bound, tenants=tenants)


def latest(records: Iterable[ViolationRecord], since: str | None) -> dict[str, str]:
    bound = normalize_ts(since) if since is not None else None
    out: dict[str, str] = {}
    for r in records:
        ts = normalize_ts(r.ts)
        if r.action == "delayed" or (bound is not None and ts < bound):
            continue
        last = normalize_ts(r.last_ts or r.ts)
        out[r.tenant] = max(out.get(r.tenant, last), last)
    return out


def rollups(records: Iterable[ViolationRecord]) -> tuple[dict[Any, Any], dict[Any, int]]:
    """What the roll-up tables must hold for `records`: kinds -> (n, last), hosts -> n."""
    kinds: dict[Any, Any] = {}
    hosts: dict[Any, int] = defaultdict(int)
    for r in records:
        second = epoch_us(r.ts) // 1_000_000
        last = normalize_ts(r.last_ts or r.ts)
        host = url_host(r.url)
        for span in SPANS:
            start = second - second % span
            key = (span, start, r.tenant, r.kind, r.action)
            n, old = kinds.get(key, (0, last))
            kinds[key] = (n + r.count, max(old, last))
            if host is not None:
                hosts[(span, start, r.tenant, host, r.kind, r.action)] += r.count
                if r.action != "delayed":  # the per-host sums of every violation
                    hosts[(span, start, r.tenant, host, "*", "*")] += r.count
        if host is not None:
            hosts[(0, 0, r.tenant, host, r.kind, r.action)] += r.count
            if r.action != "delayed":
                hosts[(0, 0, r.tenant, host, "*", "*")] += r.count
    return kinds, dict(hosts)


def stored_rollups(url: str) -> tuple[dict[Any, Any], dict[Any, int]]:
    """The roll-up tables of the store at `url`, read behind its back."""
    kinds_sql = "SELECT span, start, tenant, kind, action, n, last FROM rollup_kinds"
    hosts_sql = "SELECT span, start, tenant, host, kind, action, n FROM rollup_hosts"
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///") :])
        try:
            k = db.execute(kinds_sql).fetchall()
            h = db.execute(hosts_sql).fetchall()
        finally:
            db.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            k = conn.execute(kinds_sql).fetchall()
            h = conn.execute(hosts_sql).fetchall()
    kinds = {
        (int(s), int(st), t, kd, a): (int(n), last if isinstance(last, str) else canonical_ts(last))
        for s, st, t, kd, a, n, last in k
    }
    hosts = {(int(s), int(st), t, hs, kd, a): int(n) for s, st, t, hs, kd, a, n in h}
    return kinds, hosts
