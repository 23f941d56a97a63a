"""Issue 22: the cost of one site-budget `grant`, in memory and in Redis.

    .venv/bin/python benchmarks/site_budget.py [--grants 20000] [--sites 1000] [--tenants 10]
        [--redis redis://127.0.0.1:6379/0] [--concurrency 16]

Every grant asks for a slot with interval 0 and no cap (all granted: the full grant path,
tags, activity counters and, in Redis, one EVALSHA round trip on loopback), cycling over
`--sites` sites x `--tenants` tenants so each site's record holds that many tenants. Memory:
sequential calls. Redis: sequential (one call's latency) and `--concurrency` calls in flight
(throughput of one process, as a busy proxy would issue them). Printed: µs per grant. The keys
go under a fresh ``?prefix=`` and are deleted afterwards. Bounded: --grants per run (each
backend stops after 10 s anyway), well under 30 s in all.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from crawlguard.state.sites import SiteAsk, SiteState
from crawlguard.state.sites_memory import MemorySites
from crawlguard.state.sites_redis import RedisSites

MAX_SECONDS = 10.0  # per run


def asks(grants: int, sites: int, tenants: int) -> list[SiteAsk]:
    return [
        SiteAsk(f"site{i % sites}.example", f"tenant{(i // sites) % tenants}")
        for i in range(grants)
    ]


async def sequential(state: SiteState, batch: list[SiteAsk]) -> tuple[int, float]:
    started = time.perf_counter()
    done = 0
    for ask in batch:
        granted = await state.grant(ask, time.time())
        assert granted.granted, granted
        done += 1
        if done % 1000 == 0 and time.perf_counter() - started > MAX_SECONDS:
            break
    return done, time.perf_counter() - started


async def concurrent(state: SiteState, batch: list[SiteAsk], width: int) -> tuple[int, float]:
    started = time.perf_counter()
    done = 0
    for i in range(0, len(batch), width):
        results = await asyncio.gather(*(state.grant(a, time.time()) for a in batch[i : i + width]))
        assert all(r.granted for r in results)
        done += len(results)
        if time.perf_counter() - started > MAX_SECONDS:
            break
    return done, time.perf_counter() - started


def report(label: str, done: int, seconds: float) -> None:
    print(f"{label:<34} {done:>7} grants  {seconds * 1e6 / max(done, 1):8.1f} µs/grant")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=20_000)
    parser.add_argument("--sites", type=int, default=1_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    batch = asks(args.grants, args.sites, args.tenants)
    print(f"{args.grants} grants over {args.sites} sites x {args.tenants} tenants, interval 0")

    report("memory", *await sequential(MemorySites(), batch))

    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    url = f"{args.redis}?prefix={prefix}&max_connections={max(16, args.concurrency)}"
    state = RedisSites.from_url(url)
    try:
        report("redis, one at a time", *await sequential(state, batch))
        width = args.concurrency
        report(f"redis, {width} in flight", *await concurrent(state, batch, width))
    finally:
        keys = [k async for k in state.client.scan_iter(match=f"{state.namespace}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await state.client.delete(*keys[i : i + 1000])
        await state.close()


async def hot_path(n: int = 20_000) -> None:
    import hashlib
    import tempfile

    from mitmproxy.http import Headers

    from crawlguard.config import parse_config
    from crawlguard.policy.decisions import Decision, Kind
    from crawlguard.policy.identity import Target
    from crawlguard.policy.pacing import PacingOutcome
    from crawlguard.policy.pipeline import RequestInfo
    from crawlguard.policy.robots import RobotsRules
    from crawlguard.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp}/bench.db"},
                "platform": {"site_budget": {"max_rps": None, "max_concurrency": None}},
                "tenants": [
                    {
                        "id": "bench",
                        "token_sha256": hashlib.sha256(b"bench").hexdigest(),
                        "product_tokens": ["BenchBot"],
                    }
                ],
            },
            "bench",
        )
        runtime = Runtime(cfg)
        tenant = runtime.tenants["bench"]
        info = RequestInfo("GET", Target("https", "example.com", 443, "/page"), "BenchBot/1.0")
        allowed = Decision(Kind.ALLOWED)
        outcome = PacingOutcome(Kind.ALLOWED, True, 0.0, None, 0.0, "bench example.com")
        rules = RobotsRules.parse(b"User-agent: *\nAllow: /\n")
        headers = Headers(content_type="text/html", content_length="12", server="origin")
        started = time.perf_counter()
        for _ in range(n):
            await runtime.site_turn(tenant, info, allowed, outcome, rules)
        turn = (time.perf_counter() - started) / n * 1e6
        started = time.perf_counter()
        for _ in range(n):
            await runtime.observe_site("example.com", 200, None, 0.01, headers)
        observe = (time.perf_counter() - started) / n * 1e6
        await runtime.close()
    print(
        f"hot path per request (real Runtime, memory://): site_turn {turn:.1f} µs + "
        f"observe_site {observe:.1f} µs = {turn + observe:.1f} µs"
    )


if __name__ == "__main__":
    asyncio.run(main())
    asyncio.run(hot_path())
