"""Issue 12: crawlguard's cost measured against plain mitmproxy, in the same run.

    .venv/bin/python benchmarks/compare.py [--seconds 4] [--rounds 3] [--workers-too]
                                           [--held] [--skip-micro] [--site-budget]

Starts, all on 127.0.0.1:

* a fast HTTP origin and a fast HTTPS origin (the asyncio origin of benchmarks/workers.py, the
  second wrapped in TLS with a `trustme` certificate for 127.0.0.1), each in its own process;
* plain `mitmdump -q` (no addons; its own confdir, trusting the origin's CA through
  `ssl_verify_upstream_trusted_ca`);
* `crawlguard run --config <generated>`: one tenant in `enforce` mode, the origin's robots.txt
  allows everything, no pacing delay, `allow_private`, memory:// state, SQLite store in a temp
  dir, `proxy.upstream_ca_file` = the origin's CA.

Then, in interleaved A/B rounds (the order flips every round), it drives both proxies:

* HTTP keep-alive with wrk (absolute-form request lines from a Lua script; crawlguard also gets
  `Proxy-Authorization`) at concurrency 1, 16 and 64;
* intercepted HTTPS with a Python asyncio client (N keep-alive CONNECT tunnels, TLS through the
  proxy trusting the proxy's CA, one request in flight per tunnel) at concurrency 16; the same
  client is also run straight at the HTTPS origin to show it is not the bottleneck.

For every run: requests/s, p50/p99 latency, proxy CPU µs per request (utime+stime of the proxy
process tree, before/after the run) and peak RSS (VmHWM). Medians over rounds, and the ratio
crawlguard / mitmdump. Then in-process micro-benchmarks (timeit): RobotsRules.decide on a
20-rule and a 3,000-rule file, the whole decision pipeline (`pipeline.decide`) on a cached
robots.txt, and the RSS of 100k cached origins in a real RobotsCache. `--held`: proxy CPU
while 1,000 requests are held by `delay` pacing. `--workers-too`: runs benchmarks/workers.py
(Redis) afterwards. `--site-budget`: a third proxy, crawlguard with `platform.crawl_delay:
per-tenant` (the path before issue 22: no site-budget call), so the cost of the site budget's
grant on the cached-robots hot path is the ratio crawlguard / crawlguard-pt. Bounded: about
2 * (3 + 1) * rounds * seconds + 40 s (+ ~40 s for --held, + ~110 s for --workers-too with the
default --seconds/--rounds; x 1.5 with --site-budget).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import (
    TOKEN,
    UA,
    OriginProtocol,
    _serve_origin,
    bench_config,
    free_port,
    proc_stat,
    proxy_auth,
    sha256_hex,
    wrk_output,
    wrk_totals,
)

REPO = Path(__file__).resolve().parents[1]
HTTP_CONCURRENCY = (1, 16, 64)
TLS_CONCURRENCY = (16,)
CLK = os.sysconf("SC_CLK_TCK")
ORIGIN_PORTS: list[int] = []  # the origins' ports: crawlguard's destinations.allowed_ports


# -- origins ----------------------------------------------------------------------------------


def _serve_tls_origin(sock: socket.socket, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(OriginProtocol, sock=sock, ssl=ctx)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


# -- process accounting -------------------------------------------------------------------------


def tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))) is not None:
            children.setdefault(fields[1], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(str(pid), []))
    return out


def tree_cpu(root: int) -> float:
    """utime+stime (and reaped children's) of the process tree, seconds."""
    total = 0
    for pid in tree(root):
        fields = proc_stat(pid)
        if fields is not None:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK


def tree_hwm_mb(root: int) -> float:
    total = 0
    for pid in tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if m := re.search(r"VmHWM:\s+(\d+) kB", status):
            total += int(m.group(1))
    return total / 1024


# -- proxies ------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    ca: Path  # the proxy's CA certificate (what clients trust for interception)
    auth: bool  # needs Proxy-Authorization

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_port(p: Proc, ready_text: str | None) -> Proc:
    deadline = time.monotonic() + 60
    while True:
        if p.proc.poll() is not None or time.monotonic() > deadline:
            p.stop()
            raise SystemExit(f"{p.name} did not start:\n{p.log.read_text(errors='replace')}")
        ok = ready_text is None or ready_text in p.log.read_text(errors="replace")
        if ok:
            try:
                socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
                if p.ca.exists():
                    return p
            except OSError:
                pass
        time.sleep(0.1)


def start_mitmdump(tmp: Path, origin_ca: Path) -> Proc:
    home = tmp / "mitmdump"
    home.mkdir()
    port = free_port()
    log = home / "mitmdump.log"
    cmd = [
        str(Path(sys.executable).parent / "mitmdump"),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--set",
        f"confdir={home / 'ca'}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={origin_ca}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=home, stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    return wait_port(
        Proc("mitmdump", port, proc, log, home / "ca" / "mitmproxy-ca-cert.pem", False), None
    )


def crawlguard_config(home: Path, port: int, origin_ca: Path, **extra: Any) -> dict[str, Any]:
    cfg = bench_config(home, port, free_port(), "memory://", list(ORIGIN_PORTS))
    cfg["proxy"]["upstream_ca_file"] = str(origin_ca)
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(
            key, value
        )
    return cfg


def start_crawlguard(tmp: Path, origin_ca: Path, name: str = "crawlguard", **extra: Any) -> Proc:
    home = tmp / name
    home.mkdir()
    port = free_port()
    path = home / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(crawlguard_config(home, port, origin_ca, **extra)))
    log = home / "crawlguard.log"
    cmd = [sys.executable, "-m", "crawlguard", "run", "--config", str(path)]
    proc = subprocess.Popen(
        cmd, cwd=home, stdout=subprocess.DEVNULL, stderr=log.open("ab"), stdin=subprocess.DEVNULL
    )
    return wait_port(
        Proc(name, port, proc, log, home / "ca" / "mitmproxy-ca-cert.pem", True), "crawlguard ready"
    )


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Run:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # proxy CPU per request
    rss_mb: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(tmp: Path, proxy: Proc | None, origin_port: int, conns: int, seconds: float) -> Run:
    script = tmp / f"wrk-{proxy.name if proxy else 'origin'}.lua"
    port = proxy.port if proxy else origin_port
    out = wrk_output(
        script,
        port,
        origin_port,
        conns,
        seconds,
        proxied=proxy is not None,
        auth=proxy is not None and proxy.auth,
        latency=True,
    )
    requests, errors, elapsed = wrk_totals(out)
    pct = {
        m.group(1): _ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    return Run(requests, errors, elapsed, pct.get("50", 0.0), pct.get("99", 0.0))


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _tls_load(
    proxy_port: int | None, auth: bool, ca: str, origin_port: int, conns: int, seconds: float
) -> Run:
    ctx = ssl.create_default_context(cafile=ca)
    host = f"127.0.0.1:{origin_port}"
    request = f"GET /page HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {UA}\r\n\r\n".encode()
    extra = f"Proxy-Authorization: {proxy_auth()}\r\n" if auth else ""
    connect = f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {UA}\r\n{extra}\r\n".encode()
    latencies: list[float] = []
    errors = 0
    started = stop_at = 0.0
    ready = asyncio.Event()
    opened = 0  # tunnels set up (or failed)

    async def one() -> None:
        nonlocal errors, opened
        try:
            if proxy_port is None:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", origin_port, ssl=ctx, server_hostname="127.0.0.1"
                )
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                writer.write(connect)
                status = await _read_response(reader)
                if b" 200" not in status:
                    raise OSError(f"CONNECT answered {status!r}")
                await writer.start_tls(ctx, server_hostname="127.0.0.1")
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            errors += 1
            opened += 1
            print(f"    tunnel failed: {exc!r}", file=sys.stderr)
            return
        opened += 1
        await ready.wait()  # the clock starts once every tunnel is up (setup is not timed)
        try:
            while (t0 := time.perf_counter()) < stop_at:
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                if not status.startswith(b"HTTP/1.1 2"):
                    errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(conns)]
    for _ in range(1000):  # let the tunnels open (bounded: 10 s), then time the requests only
        if opened == conns:
            break
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    stop_at = started + seconds
    ready.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    lat = sorted(latencies) or [0.0]
    return Run(
        len(latencies),
        errors,
        elapsed,
        1e3 * lat[len(lat) // 2],
        1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    )


def run_tls(
    proxy: Proc | None, origin_ca: Path, origin_port: int, conns: int, seconds: float
) -> Run:
    ca = str(proxy.ca if proxy else origin_ca)
    return asyncio.run(
        _tls_load(
            proxy.port if proxy else None,
            bool(proxy and proxy.auth),
            ca,
            origin_port,
            conns,
            seconds,
        )
    )


def measured(proxy: Proc, fn: Any) -> Run:
    before = tree_cpu(proxy.proc.pid)
    res: Run = fn()
    spent = tree_cpu(proxy.proc.pid) - before
    res.cpu_us = 1e6 * spent / res.requests if res.requests else float("nan")
    res.rss_mb = tree_hwm_mb(proxy.proc.pid)
    return res


# -- micro-benchmarks ----------------------------------------------------------------------------


def rules_20() -> bytes:
    return (
        b"User-agent: *\n"
        b"Disallow: /admin/\nDisallow: /cart\nDisallow: /checkout/\nDisallow: /login\n"
        b"Disallow: /*?sessionid=\nDisallow: /*.pdf$\nAllow: /\n"
        b"Crawl-delay: 1\n\n"
        b"User-agent: BenchBot\n"
        b"Disallow: /private/\nDisallow: /tmp/\nDisallow: /search\nDisallow: /*?sort=\n"
        b"Disallow: /user/*/settings\nAllow: /search/about\nAllow: /private/public/\n"
        b"Disallow: /api/\nAllow: /api/docs\nDisallow: /*/print$\nAllow: /products/\n"
        b"Disallow: /old/\n"
    )


def _plain_rules(rnd: random.Random) -> list[bytes]:
    """The group line and 2,100 plain prefix rules (every 7th an Allow)."""
    lines = [b"User-agent: BenchBot"]
    for i in range(2100):
        verb = b"Allow" if i % 7 == 0 else b"Disallow"
        lines.append(b"%s: /section%d/%x/" % (verb, i, rnd.randrange(1 << 24)))
    return lines


def rules_3000() -> bytes:
    """3,000 rules for BenchBot: 2,100 plain prefixes and 900 "*" patterns (the parser's cap is
    1,000 distinct "*" patterns per merged group, beyond which a file is "too complex")."""
    rnd = random.Random(12)
    lines = _plain_rules(rnd)
    for i in range(900):
        lines.append(b"Disallow: /*/%x*/item%d$" % (rnd.randrange(1 << 20), i))
    return b"\n".join(lines) + b"\n"


def rules_3000_mixed() -> bytes:
    """3,000 rules for BenchBot, the 900 "*" patterns in the three shapes the matcher indexes
    differently: "$"-anchored (by tail), a literal head (by prefix), "/*..." (by trigram;
    these 300 share the literal "?param", so only their digits tell them apart)."""
    rnd = random.Random(13)
    lines = _plain_rules(rnd)
    for i in range(300):
        lines.append(b"Disallow: /*/%x*/item%d$" % (rnd.randrange(1 << 20), i))
        lines.append(b"Disallow: /section%d/*/print" % i)
        lines.append(b"Disallow: /*?param%d=" % i)
    return b"\n".join(lines) + b"\n"


PATHS = ("/products/item/12345?ref=home", "/section5/abc/def", "/search?q=robots&sort=asc")


def time_per_call(fn: Any, number: int, repeat: int = 7) -> tuple[float, float]:
    """(median, min) µs per call over `repeat` batches of `number` calls."""
    times = timeit.repeat(fn, number=number, repeat=repeat)
    per = sorted(1e6 * t / number for t in times)
    return statistics.median(per), per[0]


def micro_decide() -> list[tuple[str, float, float]]:
    from crawlguard.policy.robots import RobotsRules

    out = []
    files = (
        ("20 rules", rules_20()),
        ("3,000 rules (900 with *)", rules_3000()),
        ("3,000 rules (900 with *, mixed shapes)", rules_3000_mixed()),
    )
    for name, body in files:
        rules = RobotsRules.parse(body)
        for path in PATHS:
            v = rules.decide("BenchBot", path)
            assert "complex" not in (v.rule or ""), v
        calls = 0

        def one(rules: Any = rules) -> None:
            nonlocal calls
            rules.decide("BenchBot", PATHS[calls % 3])
            calls += 1

        n = 20_000 if len(body) < 4096 else 2_000
        med, best = time_per_call(one, n)
        out.append((f"RobotsRules.decide, {name}", med, best))
    return out


def micro_guard(tmp: Path, origin_ca: Path) -> list[tuple[str, float, float]]:
    """The decision pipeline on a cached robots.txt, driven without sockets or an event loop:
    with the name in `destinations.hosts`, the entry cached and memory pacing state, nothing
    in `pipeline.decide` suspends, so `coro.send(None)` runs the whole coroutine (head check,
    canonical target, host globs, destination, UA policy, limits, cache lookup, robots match,
    pacing) and ends it."""
    from crawlguard.config import parse_config
    from crawlguard.policy import pipeline
    from crawlguard.policy.robots import RobotsRules
    from crawlguard.robots.cache import RobotsEntry, _Origin
    from crawlguard.runtime import Runtime

    home = tmp / "guard"
    home.mkdir()
    cfg = parse_config(
        crawlguard_config(
            home,
            free_port(),
            origin_ca,
            destinations={"hosts": {"example.com": ["127.0.0.1"]}, "allowed_ports": [80]},
        )
    )
    guard = Runtime(cfg)
    out = []
    header = proxy_auth()
    fields = ((b"Host", b"example.com"), (b"User-Agent", UA.encode()))
    try:
        for name, body in (("20 rules", rules_20()), ("3,000 rules", rules_3000())):
            rules = RobotsRules.parse(body)
            entry = RobotsEntry(
                rules,
                True,
                hashlib.sha256(body).hexdigest(),
                body,
                "ok",
                time.monotonic(),
                time.monotonic() + 1e9,
            )
            guard.robots._slots[("http", "example.com", 80)] = _Origin(entry=entry)
            calls = 0

            def drive(with_auth: bool) -> Any:
                nonlocal calls
                path = PATHS[calls % 3]
                calls += 1
                tenant = guard.authenticate(header) if with_auth else guard.tenants["bench"]
                facts = pipeline.Facts("GET", "http", "example.com", 80, path, fields)
                coro = pipeline.decide(facts, tenant, guard)
                try:
                    coro.send(None)
                except StopIteration as stop:
                    return stop.value.decision
                coro.close()
                raise RuntimeError("pipeline.decide suspended: robots.txt not cached?")

            assert drive(False).kind.value in ("allowed", "robots-disallow"), drive(False)
            n = 20_000 if len(body) < 4096 else 2_000
            med, best = time_per_call(lambda: drive(False), n)
            out.append((f"pipeline.decide (the whole decision), {name}", med, best))
            med, best = time_per_call(lambda: drive(True), n)
            out.append((f"  + authenticate (Proxy-Authorization), {name}", med, best))
    finally:
        guard.store.close()
        guard._writer.shutdown(wait=False)
    return out


def _rss_kb() -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def _cache_memory(n: int, conn: Any) -> None:
    """In a fresh process: RSS delta of `n` origins in a real RobotsCache (each its own parsed
    RobotsRules and body, as after a fetch), inserted the way `_settle` leaves them."""
    from crawlguard.policy.robots import RobotsRules
    from crawlguard.robots.cache import RobotsCache, RobotsEntry, _Origin

    gc.collect()
    cache = RobotsCache(user_agent="bench", max_origins=n * 2)
    base = _rss_kb()
    now = time.monotonic()
    for i in range(n):
        body = b"User-agent: *\nDisallow: /private%d/\nAllow: /\n" % i
        rules = RobotsRules.parse(body)
        entry = RobotsEntry(
            rules, True, hashlib.sha256(body).hexdigest(), body, "ok", now, now + 86400
        )
        cache._slots[("https", f"site{i}.example", 443)] = _Origin(
            entry=entry, good=rules, good_at=now, size=len(body)
        )
    gc.collect()
    assert len(cache) == n and cache.peek(("https", "site7.example", 443)) is not None
    conn.send((_rss_kb() - base) / 1024)


def micro_cache_memory(n: int = 100_000) -> float:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_cache_memory, args=(n, child))
    proc.start()
    mb: float = parent.recv()
    proc.join(30)
    return mb


# -- held requests ---------------------------------------------------------------------------


def held_phase(
    tmp: Path, origin_ca: Path, origin_port: int, n: int = 1000, wait_s: float = 8.0
) -> dict[str, float]:
    """`delay` pacing with a long interval: 1 request per origin is let through, then `n`
    requests (one per origin, n origins = n host names mapped to 127.0.0.1) are held. Proxy
    CPU is measured over `wait_s` seconds while they all wait."""
    hosts = [f"h{i}.bench.test" for i in range(n)]
    proxy = start_crawlguard(
        tmp,
        origin_ca,
        "crawlguard-held",
        destinations={
            "allow_private": True,
            "allowed_ports": list(ORIGIN_PORTS),
            "hosts": {h: ["127.0.0.1"] for h in hosts},
        },
        pacing={"default_min_interval": 25, "max_hold": 30, "max_held": n + 10},
        tenants=[
            {
                "id": "bench",
                "token_sha256": sha256_hex(TOKEN),
                "product_tokens": ["BenchBot"],
                "mode": "enforce",
                "pacing": "delay",
            }
        ],
    )
    auth = proxy_auth()

    def req(host: str) -> bytes:
        url = f"http://{host}:{origin_port}/page"
        return (
            f"GET {url} HTTP/1.1\r\nHost: {host}:{origin_port}\r\nUser-Agent: {UA}\r\n"
            f"Proxy-Authorization: {auth}\r\n\r\n"
        ).encode()

    async def main() -> dict[str, float]:
        sem = asyncio.Semaphore(50)

        async def first(host: str) -> bytes:  # fetch robots.txt, take the first slot
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
                w.write(req(host))
                status = await _read_response(r)
                w.close()
                return status

        firsts = await asyncio.gather(*(first(h) for h in hosts))
        ok_first = sum(s.startswith(b"HTTP/1.1 200") for s in firsts)
        conns = []
        for h in hosts:
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            w.write(req(h))
            conns.append((r, w))
        await asyncio.sleep(2.0)  # all requests arrive and are decided (held)
        early = sum(1 for r, _ in conns if r.at_eof() or len(getattr(r, "_buffer", b"")) > 0)
        before, t0 = tree_cpu(proxy.proc.pid), time.monotonic()
        await asyncio.sleep(wait_s)
        spent, elapsed = tree_cpu(proxy.proc.pid) - before, time.monotonic() - t0
        for _, w in conns:
            w.close()
        return {
            "held": n - early,
            "answered_early": early,
            "first_ok": ok_first,
            "cpu_pct": 100 * spent / elapsed,
            "seconds": elapsed,
        }

    try:
        return asyncio.run(main())
    finally:
        proxy.stop()


# -- main --------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    runs: dict[str, list[Run]] = field(default_factory=dict)
    direct: list[Run] = field(default_factory=list)


def med(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved A/B rounds (default 3)")
    parser.add_argument(
        "--workers-too",
        action="store_true",
        help="also run benchmarks/workers.py (--workers 1 vs 2; needs Redis)",
    )
    parser.add_argument(
        "--held",
        action="store_true",
        help="also measure proxy CPU while 1,000 requests are held by pacing",
    )
    parser.add_argument("--skip-micro", action="store_true", help="no in-process micro-benchmarks")
    parser.add_argument(
        "--site-budget",
        action="store_true",
        help="also run crawlguard without the site budget's grant (platform.crawl_delay: "
        "per-tenant) and print crawlguard / that",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk (apt-get install -y wrk)")
    import trustme

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"crawlguard vs plain mitmproxy, {started}")
    import mitmproxy.version

    print(
        f"host: {platform.node()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"mitmproxy {mitmproxy.version.VERSION}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{args.seconds:g} s per run, {args.rounds} rounds, A/B order flips every round")
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}\n")

    ctx = mp.get_context("spawn")
    rows: dict[tuple[str, int], Row] = {}
    with tempfile.TemporaryDirectory(prefix="crawlguard-compare-") as tmpdir:
        tmp = Path(tmpdir)
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1")
        origin_ca = tmp / "origin-ca.pem"
        ca.cert_pem.write_to_path(str(origin_ca))
        cert, key = tmp / "origin-cert.pem", tmp / "origin-key.pem"
        server_cert.cert_chain_pems[0].write_to_path(str(cert))
        server_cert.private_key_pem.write_to_path(str(key))
        http_sock, tls_sock = listening_socket(), listening_socket()
        http_port, tls_port = http_sock.getsockname()[1], tls_sock.getsockname()[1]
        ORIGIN_PORTS[:] = [http_port, tls_port]
        origins = [
            ctx.Process(target=_serve_origin, args=(http_sock,), daemon=True),
            ctx.Process(
                target=_serve_tls_origin, args=(tls_sock, str(cert), str(key)), daemon=True
            ),
        ]
        for o in origins:
            o.start()
        proxies: list[Proc] = []
        try:
            proxies = [start_mitmdump(tmp, origin_ca), start_crawlguard(tmp, origin_ca)]
            if args.site_budget:
                proxies.append(
                    start_crawlguard(
                        tmp, origin_ca, "crawlguard-pt", platform={"crawl_delay": "per-tenant"}
                    )
                )
            names = [p.name for p in proxies]
            by_name = {p.name: p for p in proxies}
            for p in proxies:  # warm-up: robots.txt (both schemes), connections, certificates
                w = run_wrk(tmp, p, http_port, 16, 1)
                t = run_tls(p, origin_ca, tls_port, 16, 1)
                if w.requests == 0 or w.errors or t.requests == 0 or t.errors:
                    raise SystemExit(
                        f"warm-up through {p.name} failed: http {w}, https {t}\n"
                        + p.log.read_text(errors="replace")[-3000:]
                    )
            cases = [("http", c) for c in HTTP_CONCURRENCY] + [
                ("https", c) for c in TLS_CONCURRENCY
            ]
            for case in cases:
                rows[case] = Row(f"{case[0].upper()} keep-alive, c={case[1]}")

            def load(kind: str, proxy: Proc | None, conns: int) -> Run:
                if kind == "http":
                    return run_wrk(tmp, proxy, http_port, conns, args.seconds)
                return run_tls(proxy, origin_ca, tls_port, conns, args.seconds)

            print(
                f"{'round':>5} {'case':>10} {'target':>11} {'req/s':>9} {'errors':>6} "
                f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'VmHWM MB':>8}"
            )
            for rnd in range(1, args.rounds + 1):
                order = names if rnd % 2 else names[::-1]
                for kind, conns in cases:
                    row = rows[(kind, conns)]
                    runs: list[tuple[str, Run]] = []
                    if rnd == 1:  # the client straight at the origin: its own ceiling
                        res = load(kind, None, conns)
                        row.direct.append(res)
                        runs.append(("origin", res))
                    for name in order:
                        res = measured(
                            by_name[name], lambda n=name, k=kind, c=conns: load(k, by_name[n], c)
                        )
                        row.runs.setdefault(name, []).append(res)
                        runs.append((name, res))
                    for name, res in runs:
                        print(
                            f"{rnd:>5} {kind + ' c=' + str(conns):>10} {name:>11} "
                            f"{res.rate:>9.0f} {res.errors:>6} {res.p50_ms:>7.2f} "
                            f"{res.p99_ms:>7.2f} {res.cpu_us:>10.0f} {res.rss_mb:>8.0f}"
                        )
        finally:
            for p in proxies:
                p.stop()

        held: dict[str, float] | None = None
        if args.held:
            print("\nheld requests: 1,000 requests held by `delay` pacing ...", flush=True)
            held = held_phase(tmp, origin_ca, http_port)

        micro: list[tuple[str, float, float]] = []
        cache_mb = None
        if not args.skip_micro:
            print("micro-benchmarks ...", flush=True)
            micro = micro_decide() + micro_guard(tmp, origin_ca)
            cache_mb = micro_cache_memory()
        for o in origins:
            o.terminate()
            o.join(10)

    print(f"\nload average at end: {Path('/proc/loadavg').read_text().strip()}")
    print("\nmedians over rounds (ratio = crawlguard / mitmdump; for CPU and RSS lower is better)")
    print(
        f"{'case':<22} {'origin req/s':>12} {'mitmdump req/s':>14} {'crawlguard req/s':>16} "
        f"{'ratio':>6} {'p50 ms m/c':>12} {'p99 ms m/c':>12} {'CPU us/req m/c':>15} "
        f"{'ratio':>6} {'VmHWM MB m/c':>13} {'non-2xx m/c':>12}"
    )
    for row in rows.values():
        m, c = row.runs["mitmdump"], row.runs["crawlguard"]
        print(
            f"{row.label:<22} {med(row.direct, 'rate'):>12.0f} {med(m, 'rate'):>14.0f} "
            f"{med(c, 'rate'):>16.0f} {med(c, 'rate') / med(m, 'rate'):>6.2f} "
            f"{med(m, 'p50_ms'):>5.2f}/{med(c, 'p50_ms'):<6.2f} "
            f"{med(m, 'p99_ms'):>5.2f}/{med(c, 'p99_ms'):<6.2f} "
            f"{med(m, 'cpu_us'):>7.0f}/{med(c, 'cpu_us'):<7.0f} "
            f"{med(c, 'cpu_us') / med(m, 'cpu_us'):>6.2f} "
            f"{max(r.rss_mb for r in m):>6.0f}/{max(r.rss_mb for r in c):<6.0f} "
            f"{sum(r.errors for r in m):>5}/{sum(r.errors for r in c):<6}"
        )
    if args.site_budget:
        print("\nthe site budget's grant on the hot path (ratio = crawlguard / crawlguard-pt)")
        for row in rows.values():
            c, pt = row.runs["crawlguard"], row.runs["crawlguard-pt"]
            print(
                f"  {row.label:<22} req/s {med(c, 'rate'):>8.0f} / {med(pt, 'rate'):<8.0f} "
                f"{med(c, 'rate') / med(pt, 'rate'):>5.3f}   CPU us/req {med(c, 'cpu_us'):>5.0f} / "
                f"{med(pt, 'cpu_us'):<5.0f} {med(c, 'cpu_us') / med(pt, 'cpu_us'):>5.3f}"
            )
    if micro:
        print("\nin-process micro-benchmarks (timeit, µs per call: median of 7 batches / best)")
        for name, m_us, best in micro:
            print(f"  {name:<58} {m_us:>8.2f} / {best:.2f}")
    if cache_mb is not None:
        print(
            f"  RSS for 100,000 cached origins (real RobotsCache, parsed rules + body): "
            f"{cache_mb:.0f} MB"
        )
    if held is not None:
        print(
            f"\nheld requests: {held['held']:.0f} held ({held['answered_early']:.0f} answered "
            f"early; {held['first_ok']:.0f}/1000 first requests 200), proxy CPU while they "
            f"wait: {held['cpu_pct']:.1f} % over {held['seconds']:.1f} s"
        )
    sys.stdout.flush()
    if args.workers_too:
        print("\n--workers 1 vs --workers 2 (benchmarks/workers.py):", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(REPO / "benchmarks" / "workers.py"),
                "--seconds",
                f"{args.seconds:g}",
                "--rounds",
                str(args.rounds),
            ],
            check=True,
            timeout=600,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
