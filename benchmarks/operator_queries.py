"""Issue 20: operator queries at platform scale, on a SQLite store of N violation records.

    .venv/bin/python benchmarks/operator_queries.py [--records 10000000] [--calls 20]

1. Generates N records as JSON lines (`crawlguard store export` format), cached under /tmp
   (``crawlguard-opq-<N>.jsonl``, reused while younger than a day: the windows below are
   relative to now): 100 tenants of Zipf-skewed activity over the last 30 days, each with its
   own Zipf-skewed pool of 100 hosts, a mix of kinds and actions (robots-disallow, crawl-delay
   held or refused, ua-generic logged, tenant-limit, origin-backoff, ...), and 3% folded
   records (count 2-500, first_ts/last_ts within a minute).
2. Imports them into a new SQLite store through the import path
   (`crawlguard.cli.store.import_lines`, what `crawlguard store import` runs) and prints the
   rate; adds hourly request counts for every tenant (what the proxy flushes).
3. Starts the real proxy (`crawlguard run`) on that store and measures through its admin API,
   over `--calls` calls each: `/api/violations?limit=100`, `/api/summary` (its default 24 h
   window, and the dashboard's 7-day and 30-day windows), `/api/tenants` (24 h, 30 d, all
   time), and the dashboard's first paint (the three calls dashboard.js makes on load,
   concurrently, wall time until all three answered) for its 24 h and 30 d ranges, and
   `since=7d`. Also, for the record, a 7-day summary with explicit `since`/`until` off the
   hour: exact, but the hours its bucket edges cut are read raw (docs/operators/store.md).

Prints p50/p95 per call against the target (p95 <= 200 ms) and the import rate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crawlguard.cli.store import import_lines  # noqa: E402
from crawlguard.store import open_store  # noqa: E402

TOKEN = "bench-operator"
TENANTS = 100
HOSTS_PER_TENANT = 100
DAYS = 30
TARGET_MS = 200.0
# kind, action, weight
MIX = (
    ("robots-disallow", "blocked", 40),
    ("crawl-delay", "delayed", 15),
    ("crawl-delay", "blocked", 10),
    ("ua-generic", "logged", 10),
    ("tenant-limit", "blocked", 10),
    ("origin-backoff", "blocked", 8),
    ("robots-unreachable", "blocked", 4),
    ("ua-mismatch", "logged", 3),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _uid7(base: datetime, off: int, rnd: random.Random) -> str:
    """A UUIDv7 for a record at `base` + `off` µs, as a store assigns it (time-ordered)."""
    ms = int(base.timestamp() * 1000) + off // 1000
    value = ms << 80 | 0x7 << 76 | rnd.getrandbits(76)
    return f"{value & ~(0b11 << 62) | 0b10 << 62:032x}"


def _letters(i: int) -> str:
    """A tenant number as letters (product tokens are letters, '_' and '-')."""
    return "".join(chr(ord("a") + int(d)) for d in f"{i:03d}")


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1 / (i + 1) ** s for i in range(n)]


def generate(path: Path, n: int, end: datetime, seed: int = 20) -> None:
    """N JSON lines, oldest first, over the DAYS before `end`."""
    rnd = random.Random(seed)
    tenants = [f"tenant{i:03d}" for i in range(TENANTS)]
    tenant_w = _zipf_weights(TENANTS, 0.8)
    pools = [
        [f"site{rnd.randrange(20_000)}.example" for _ in range(HOSTS_PER_TENANT)]
        for _ in range(TENANTS)
    ]
    host_w = _zipf_weights(HOSTS_PER_TENANT, 1.1)
    kinds = [(k, a) for k, a, _ in MIX]
    kind_w = [w for _, _, w in MIX]
    start = end - timedelta(days=DAYS)
    hours = DAYS * 24
    per_hour = [n // hours + (1 if h < n % hours else 0) for h in range(hours)]
    tmp = path.with_suffix(".part")
    with tmp.open("w") as out:
        for h in range(hours):
            base = start + timedelta(hours=h)
            k = per_hour[h]
            offsets = sorted(rnd.randrange(3_600_000_000) for _ in range(k))
            ts_list = rnd.choices(range(TENANTS), tenant_w, k=k)
            ks = rnd.choices(kinds, kind_w, k=k)
            lines = []
            for off, t, (kind, action) in zip(offsets, ts_list, ks, strict=True):
                ts = (base + timedelta(microseconds=off)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                host = rnd.choices(pools[t], host_w)[0]
                folded = rnd.random() < 0.03
                if folded:
                    count = rnd.randint(2, 500)
                    last = base + timedelta(microseconds=off + rnd.randrange(60_000_000))
                    lts = last.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    times = f'"count":{count},"first_ts":"{ts}","last_ts":"{lts}"'
                else:
                    times = '"count":1,"first_ts":null,"last_ts":null'
                rule = '"Disallow: /p/"' if kind == "robots-disallow" else "null"
                delay = "2.5" if kind == "crawl-delay" else "null"
                lines.append(
                    f'{{"ts":"{ts}","tenant":"{tenants[t]}","kind":"{kind}","action":"{action}",'
                    f'"method":"GET","url":"https://{host}/p/{rnd.randrange(1_000_000)}",'
                    f'"user_agent":"Bot{_letters(t)}/1.0 (+https://bot{t}.example)","rule":{rule},'
                    f'"crawl_delay":{delay},"retry_after":null,"robots_sha256":null,'
                    f'"delay_seconds":null,"reason":null,{times},'
                    f'"uid":"{_uid7(base, off, rnd)}"}}\n'
                )
            out.writelines(lines)
    tmp.rename(path)


def cached_records(n: int) -> tuple[Path, datetime]:
    path = Path(tempfile.gettempdir()) / f"crawlguard-opq-{n}.jsonl"
    if path.exists() and time.time() - path.stat().st_mtime < 86_400:
        end = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        print(f"records: reusing {path}")
        return path, end
    end = datetime.now(UTC)
    t0 = time.monotonic()
    generate(path, n, end)
    print(f"records: generated {n:,} into {path} in {time.monotonic() - t0:.0f} s")
    return path, end


def lines_of(path: Path) -> Iterator[str]:
    with path.open() as f:
        yield from f


def build_store(db: Path, records: Path, end: datetime) -> float:
    """Import; returns records per second. Then a month of hourly request counts."""
    store = open_store(f"sqlite:///{db}")
    try:
        load0 = os.getloadavg()[0]
        t0, times0 = time.monotonic(), os.times()
        result = import_lines(store, lines_of(records))
        elapsed, times1 = time.monotonic() - t0, os.times()
        user, system = times1.user - times0.user, times1.system - times0.system
        rate = result.read / elapsed
        # CPU of this process (both import threads): on a shared machine the wall rate says
        # how much CPU the others left; records per CPU second is the import's own cost
        print(
            f"import: read {result.read:,}, inserted {result.inserted:,} in {elapsed:.1f} s "
            f"= {rate:,.0f} records/s; CPU {user:.1f} s user + {system:.1f} s system = "
            f"{result.read / (user + system):,.0f} records per CPU second (load average "
            f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs)"
        )
        start = end - timedelta(days=DAYS)
        for h in range(DAYS * 24 + 1):
            counts = {}
            for t in range(TENANTS):
                counts[(f"tenant{t:03d}", "allowed")] = 1000 + t
                counts[(f"tenant{t:03d}", "blocked")] = 10 + t % 7
                counts[(f"tenant{t:03d}", "held")] = 5 + t % 3
            store.add_request_counts(counts, (start + timedelta(hours=h)).isoformat())
    finally:
        store.close()
    return rate


def dashboard_window(step_s: int, n: int, now: datetime) -> tuple[str, str]:
    """dashboard.js's windowFor in UTC: `n` buckets of `step_s`, the current one last."""
    step = step_s * 1000
    ms = int(now.timestamp() * 1000)
    until = ms // step * step + step
    since = until - n * step

    def iso(v: int) -> str:
        return datetime.fromtimestamp(v / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    return iso(since), iso(until)


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in ms (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def measure(base: str, calls: int, pid: int) -> list[tuple[str, list[float], float]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    now = datetime.now(UTC)
    d24 = dashboard_window(3600, 24, now)
    d7 = dashboard_window(6 * 3600, 28, now)
    d30 = dashboard_window(86_400, 30, now)
    # for the record: explicit since/until off the hour (every bucket edge cuts an hour)
    off = tuple(t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in (now - timedelta(days=7), now))

    def summary(w: tuple[str, str], n: int) -> str:
        return f"/api/summary?since={w[0]}&until={w[1]}&buckets={n}"

    single = [
        ("/api/violations?limit=100", "/api/violations?limit=100"),
        ("/api/summary (24 h, default)", "/api/summary"),
        ("/api/summary (7 d, dashboard)", summary(d7, 28)),
        ("/api/summary (30 d, dashboard)", summary(d30, 30)),
        ("/api/tenants?since=24h", "/api/tenants?since=24h"),
        ("/api/tenants?since=30d", "/api/tenants?since=30d"),
        ("/api/tenants (all time)", "/api/tenants"),
        ("/api/summary?since=7d", "/api/summary?since=7d"),
        ("/api/summary 7 d off the hour", f"/api/summary?since={off[0]}&until={off[1]}"),
    ]
    paints = [
        (
            "first paint, 24 h (3 calls)",
            [
                summary(d24, 24),
                f"/api/tenants?since={d24[0]}",
                f"/api/violations?since={d24[0]}&limit=50",
            ],
        ),
        (
            "first paint, 30 d (3 calls)",
            [
                summary(d30, 30),
                f"/api/tenants?since={d30[0]}",
                f"/api/violations?since={d30[0]}&limit=50",
            ],
        ),
    ]
    out: list[tuple[str, list[float], float]] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def get(path: str) -> None:
            async with session.get(base + path) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{path}: {r.status} {await r.text()}")

        for label, path in single:
            await get(path)  # warm-up
            times = []
            cpu0 = cpu_ms(pid)
            for _ in range(calls):
                t0 = time.perf_counter()
                await get(path)
                times.append((time.perf_counter() - t0) * 1000)
            out.append((label, times, (cpu_ms(pid) - cpu0) / calls))
        for label, paths in paints:
            await asyncio.gather(*(get(p) for p in paths))
            times = []
            cpu0 = cpu_ms(pid)
            for _ in range(calls):
                t0 = time.perf_counter()
                await asyncio.gather(*(get(p) for p in paths))
                times.append((time.perf_counter() - t0) * 1000)
            out.append((label, times, (cpu_ms(pid) - cpu0) / calls))
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def run_proxy(home: Path, db: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    admin_port = free_port()
    cfg: dict[str, Any] = {
        "proxy": {"listen_host": "127.0.0.1", "listen_port": free_port(), "confdir": str(home)},
        "admin": {
            "listen_host": "127.0.0.1",
            "port": admin_port,
            "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
        },
        "store": {"url": f"sqlite:///{db}", "retention_days": 3650},
        "state": {"url": "memory://"},
        "robots": {"user_agent": "crawlguard-bench/1.0 (+https://ops.example)"},
        "tenants": [
            {
                "id": f"tenant{i:03d}",
                "token_sha256": hashlib.sha256(f"t{i}".encode()).hexdigest(),
                "product_tokens": [f"Bot{_letters(i)}"],
                "mode": "enforce",
                "pacing": "reject",
            }
            for i in range(TENANTS)
        ],
    }
    config = home / "crawlguard.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = home / "proxy.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(config)],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited {proc.returncode}:\n{log.read_text()}")
        if "crawlguard ready" in log.read_text(errors="replace"):
            return proc, admin_port, log
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"proxy did not become ready:\n{log.read_text()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument(
        "--db",
        help="the SQLite file to build (kept), or to reuse when it exists (no import then)",
    )
    ap.add_argument("--build-only", action="store_true", help="import, then stop")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="crawlguard-opq-") as tmp:
        home = Path(tmp)
        rate = None
        db = Path(args.db) if args.db else home / "crawlguard.db"
        if not db.exists():
            records, end = cached_records(args.records)
            rate = build_store(db, records, end)
        if args.build_only:
            return 0
        proc, port, _ = run_proxy(home, db)
        try:
            load = os.getloadavg()[0]
            results = asyncio.run(measure(f"http://127.0.0.1:{port}", args.calls, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{args.records:,} records, SQLite, {TENANTS} tenants, {DAYS} days; {args.calls} calls")
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs when the calls began")
    print(
        f"{'call':<36} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms':>8}  "
        f"target p95 <= {TARGET_MS:.0f} ms (CPU ms: the proxy's CPU time per call)"
    )
    for label, times, cpu in results:
        ok = "ok" if p95(times) <= TARGET_MS else "MISSED"
        print(f"{label:<36} {statistics.median(times):8.1f} {p95(times):8.1f} {cpu:8.1f}  {ok}")
    if rate is not None:
        print(f"import: {rate:,.0f} records/s (target >= 20,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
