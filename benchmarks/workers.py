"""Issue 11: does `crawlguard run --workers 2` serve more requests per second than one process?

    .venv/bin/python benchmarks/workers.py [--seconds 5] [--rounds 3] [--client auto|wrk|python]

Starts, all on 127.0.0.1:

* a fast origin (asyncio, its own process): a fixed 200 with a 13-byte body, keep-alive, and
  `User-agent: * / Allow: /` as its robots.txt;
* two real proxies, `crawlguard run --workers 1` and `crawlguard run --workers 2`
  (subprocesses, each on its own ports), on the same config: Redis state (a private key
  prefix, deleted at the end), one tenant in `enforce` mode, no pacing delay
  (`pacing.default_min_interval: 0`, no Crawl-delay);
* a load generator: `wrk` when installed (`apt-get install -y wrk`; requests in proxy form
  through a Lua script) or else a Python asyncio client (keep-alive, one request in flight per
  connection).

Each round runs, for concurrency 16 and 64, `--workers 1` then `--workers 2` (the order flips
every round, so drift hits both alike), `--seconds` each, after a short warm-up. The client is
also run straight at the origin (no proxy) at the same concurrency: when that rate is far
above the proxied one, the client is not what limits the measurement. Printed: requests/s for
every run, the median over rounds, and the ratio workers 2 / workers 1. Every run is bounded
by time (--seconds; the Python client also by --max-requests); the whole benchmark takes
about (2 * 2 + 2) * rounds * seconds plus ~20 s of start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing as mp
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import yaml

REPO = Path(__file__).resolve().parents[1]
UA = "BenchBot/1.0 (+https://bench.example/bot)"
TOKEN = "bench-secret"
REDIS = "redis://127.0.0.1:6379/0"
CONCURRENCY = (16, 64)
BODY = b"hello, bench\n"
ROBOTS = b"User-agent: *\nAllow: /\n"


# -- the origin (its own process) ----------------------------------------------------------------


def _response(body: bytes, content_type: bytes = b"text/plain") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


class OriginProtocol(asyncio.Protocol):
    """GET-only HTTP/1.1 with keep-alive: answers each complete request head at once."""

    PAGE = _response(BODY)
    ROBOTS = _response(ROBOTS)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            out.append(self.ROBOTS if target.endswith(b"/robots.txt") else self.PAGE)
        if out:
            self.transport.write(b"".join(out))


def _serve_origin(sock: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(OriginProtocol, sock=sock)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- crawlguard -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Proxy:
    workers: int
    port: int
    admin_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def ready(self) -> bool:
        return "crawlguard ready" in self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def pids(self) -> list[int]:
        """The processes that proxy: the workers (children), or the one process itself."""
        if self.workers == 1:
            return [self.proc.pid]
        parent = str(self.proc.pid)
        return sorted(
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit()
            and (fields := proc_stat(int(entry.name))) is not None
            and fields[1] == parent
        )


def proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...


def cpu_seconds(pid: int) -> float:
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def bench_config(
    home: Path, port: int, admin_port: int, state_url: str, allowed_ports: list[int]
) -> dict[str, Any]:
    """The benchmarks' crawlguard: one tenant in `enforce` mode, no pacing delay, SQLite."""
    return {
        "proxy": {"listen_host": "127.0.0.1", "listen_port": port, "confdir": str(home / "ca")},
        "admin": {"listen_host": "127.0.0.1", "port": admin_port},
        "store": {"url": f"sqlite:///{home / 'crawlguard.db'}"},
        "state": {"url": state_url},
        "destinations": {"allow_private": True, "allowed_ports": allowed_ports},
        "pacing": {"default_min_interval": 0},
        # one origin at full speed: the site budget's grant runs on every request (shared
        # mode), uncapped, so the benchmark measures its cost, not its pace
        "platform": {"site_budget": {"max_rps": None, "max_concurrency": None}},
        "tenants": [
            {
                "id": "bench",
                "token_sha256": sha256_hex(TOKEN),
                "product_tokens": ["BenchBot"],
                "mode": "enforce",
                "pacing": "reject",
            }
        ],
    }


def start_proxy(tmp: Path, workers: int, origin_port: int, prefix: str) -> Proxy:
    home = tmp / f"workers-{workers}"
    home.mkdir()
    port, admin_port = free_port(), free_port()
    state_url = f"{REDIS}?prefix={prefix}-w{workers}"
    cfg = bench_config(home, port, admin_port, state_url, [origin_port])
    path = home / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = home / "crawlguard.log"
    cmd = [
        sys.executable,
        "-m",
        "crawlguard",
        "run",
        "--config",
        str(path),
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(
        cmd, cwd=home, stdout=subprocess.DEVNULL, stderr=log.open("ab"), stdin=subprocess.DEVNULL
    )
    proxy = Proxy(workers, port, admin_port, proc, log)
    deadline = time.monotonic() + 60
    while not proxy.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proxy.stop()
            raise SystemExit(f"crawlguard --workers {workers} did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proxy


# -- load generators -------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    errors: int  # non-200 answers and failed connections
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def proxy_auth() -> str:
    return "Basic " + base64.b64encode(f"bench:{TOKEN}".encode()).decode()


WRK_SCRIPT = """
wrk.method = "GET"
wrk.path = "{target}"
wrk.headers["Host"] = "{host}"
wrk.headers["User-Agent"] = "{ua}"
{auth}
"""


def wrk_output(
    script: Path, port: int, origin_port: int, conns: int, seconds: float, *, proxied: bool,
    auth: bool, latency: bool = False,
) -> str:  # fmt: skip
    """wrk's report of GET /page on the origin, through the proxy at `port` when `proxied`
    (absolute-form request lines; `auth`: with the tenant's Proxy-Authorization)."""
    host = f"127.0.0.1:{origin_port}"
    script.write_text(
        WRK_SCRIPT.format(
            target=f"http://{host}/page" if proxied else "/page",
            host=host,
            ua=UA,
            auth=f'wrk.headers["Proxy-Authorization"] = "{proxy_auth()}"' if auth else "",
        )
    )
    threads = max(1, min(os.cpu_count() or 1, conns))
    return subprocess.run(
        ["wrk", *(["--latency"] if latency else []), f"-t{threads}", f"-c{conns}",
         f"-d{seconds:g}s", "-s", str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip


def run_wrk(
    tmp: Path, port: int, origin_port: int, conns: int, seconds: float, via_proxy: bool
) -> Result:
    script = tmp / f"wrk-{via_proxy}.lua"
    out = wrk_output(script, port, origin_port, conns, seconds, proxied=via_proxy, auth=via_proxy)
    return Result(*wrk_totals(out))


def wrk_totals(out: str) -> tuple[int, int, float]:
    """(requests, errors, seconds) from wrk's summary: non-2xx/3xx answers and socket errors
    both count as errors."""
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if done is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    elapsed = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = (int(bad.group(1)) if bad else 0) + (
        sum(int(x) for x in sock_err.groups()) if sock_err else 0
    )
    return int(done.group(1)), errors, elapsed


async def _python_load(
    port: int, origin_port: int, conns: int, seconds: float, max_requests: int, via_proxy: bool
) -> Result:
    host = f"127.0.0.1:{origin_port}"
    target = f"http://{host}/page" if via_proxy else "/page"
    extra = f"Proxy-Authorization: {proxy_auth()}\r\n" if via_proxy else ""
    request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {UA}\r\n{extra}\r\n").encode()
    count = errors = 0
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal count, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at and count < max_requests:
                writer.write(request)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                count += 1
                if not status.startswith(b"HTTP/1.1 200"):
                    errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    return Result(count, errors, time.perf_counter() - started)


def run_python(
    port: int, origin_port: int, conns: int, seconds: float, max_requests: int, via_proxy: bool
) -> Result:
    return asyncio.run(_python_load(port, origin_port, conns, seconds, max_requests, via_proxy))


# -- the benchmark ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--max-requests", type=int, default=500_000, help="per run, Python client (a bound)"
    )
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use --client python")
    try:
        redis.Redis.from_url(REDIS, socket_timeout=2).ping()
    except redis.RedisError as exc:
        raise SystemExit(f"needs Redis at {REDIS}: {exc}") from None

    def load(tmp: Path, port: int, origin_port: int, conns: int, via_proxy: bool) -> Result:
        if client == "wrk":
            return run_wrk(tmp, port, origin_port, conns, args.seconds, via_proxy)
        return run_python(port, origin_port, conns, args.seconds, args.max_requests, via_proxy)

    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    origin_sock = socket.socket()
    origin_sock.bind(("127.0.0.1", 0))
    origin_sock.listen(1024)
    origin_port = origin_sock.getsockname()[1]
    origin = mp.get_context("spawn").Process(target=_serve_origin, args=(origin_sock,), daemon=True)
    origin.start()
    proxies: dict[int, Proxy] = {}
    rates: dict[tuple[int, int], list[float]] = {}
    direct: dict[int, list[float]] = {}
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"crawlguard --workers benchmark, {started}")
    print(f"host: {platform.node()}, nproc {os.cpu_count()}, Python {platform.python_version()}")
    levels = ", ".join(map(str, CONCURRENCY))
    print(
        f"client: {client}, {args.seconds:g} s per run, {args.rounds} rounds, concurrency {levels}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}\n")
    with tempfile.TemporaryDirectory(prefix="crawlguard-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            for workers in (1, 2):
                proxies[workers] = start_proxy(tmp, workers, origin_port, prefix)
            for workers, proxy in proxies.items():  # warm-up: robots.txt, connections, caches
                warm = load(tmp, proxy.port, origin_port, 16, True)
                if warm.requests == 0 or warm.errors:
                    raise SystemExit(f"warm-up through --workers {workers} failed: {warm}")
            print(
                f"{'round':>5} {'conc':>5} {'target':>12} {'req/s':>10} {'errors':>7}  proxy CPU %"
            )
            for rnd in range(1, args.rounds + 1):
                order = (1, 2) if rnd % 2 else (2, 1)
                for conns in CONCURRENCY:
                    res = load(tmp, origin_port, origin_port, conns, False)
                    direct.setdefault(conns, []).append(res.rate)
                    print(f"{rnd:>5} {conns:>5} {'origin':>12} {res.rate:>10.0f} {res.errors:>7}")
                    for workers in order:
                        pids = proxies[workers].pids()
                        cpu = [cpu_seconds(pid) for pid in pids]
                        res = load(tmp, proxies[workers].port, origin_port, conns, True)
                        busy = [
                            100 * (cpu_seconds(pid) - before) / res.seconds
                            for pid, before in zip(pids, cpu, strict=True)
                        ]
                        rates.setdefault((workers, conns), []).append(res.rate)
                        name = f"workers {workers}"
                        print(
                            f"{rnd:>5} {conns:>5} {name:>12} {res.rate:>10.0f} {res.errors:>7}  "
                            + " + ".join(f"{b:.0f}" for b in busy)
                        )
        finally:
            for proxy in proxies.values():
                proxy.stop()
            origin.terminate()
            origin.join(10)
            client_r = redis.Redis.from_url(REDIS)
            keys = list(client_r.scan_iter(match=f"crawlguard:{prefix}-*", count=500))
            if keys:
                client_r.delete(*keys)
    print(f"\nload average at end: {Path('/proc/loadavg').read_text().strip()}")
    print("median requests/s over rounds (through the proxy; origin = client straight at it)")
    print(f"{'conc':>5} {'origin':>10} {'workers 1':>10} {'workers 2':>10} {'ratio 2/1':>10}")
    for conns in CONCURRENCY:
        one = statistics.median(rates[(1, conns)])
        two = statistics.median(rates[(2, conns)])
        base = statistics.median(direct[conns])
        print(f"{conns:>5} {base:>10.0f} {one:>10.0f} {two:>10.0f} {two / one:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
