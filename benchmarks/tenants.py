"""`crawlguard run` with N generated tenants: time to ready, memory, and a reload.

    .venv/bin/python benchmarks/tenants.py [--tenants 0,1,1000,10000,100000] [--no-reload]

For each N, a config with N tenants (one tenant, one product token each; memory:// state,
SQLite store; in a temporary directory) and a local origin on 127.0.0.1. The real proxy starts
as a subprocess (`python -m crawlguard run`, as benchmarks/startup.py starts it); "ready" is
the first moment a request authenticated as the *last* tenant, with its product token in the
User-Agent, gets through to the origin (N = 0: the "crawlguard ready" line). RSS is the
process's VmRSS from /proc after ready. Prints a table.

Then, for the largest N, two reloads (SIGHUP, as `crawlguard reload` sends): one tenant's mode
changed (the token index and every other tenant's objects are reused), and one tenant's
product token changed (the index is rebuilt). Each is timed from the signal to the "config
reloaded" log line, while a client sends requests through the proxy as the last tenant: the
slowest of them, and the slow-callback warnings the proxy logged (CRAWLGUARD_SLOW_CALLBACK),
show whether the event loop stalled.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import LocalOrigin, base_config, free_port

SLOW = 0.1  # seconds: CRAWLGUARD_SLOW_CALLBACK, a callback holding the loop longer is logged
LETTERS = "jkqvwxyz"  # no well-known crawler's name can be spelt with these


def product_token(i: int) -> str:
    """A valid, unique product token for tenant `i` (letters only, no crawler's name)."""
    digits = ""
    while True:
        digits = LETTERS[i % 8] + digits
        i //= 8
        if not i:
            return "Qz" + digits.rjust(6, LETTERS[0])


def tenant_id(i: int) -> str:
    return f"t{i:06d}"


def secret(i: int) -> str:
    return f"{tenant_id(i)}-secret"


def tenants(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": tenant_id(i),
            "token_sha256": hashlib.sha256(secret(i).encode()).hexdigest(),
            "product_tokens": [product_token(i)],
        }
        for i in range(n)
    ]


def write_config(tmp: Path, cfg: dict[str, Any]) -> Path:
    path = tmp / "crawlguard.yaml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(cfg, Dumper=dumper, sort_keys=False))
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far: what "ready after" would be on an
    otherwise idle machine (start-up is one thread's work), whatever else competes for it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Run:
    """One proxy process on a generated config."""

    def __init__(self, tmp: Path, n: int, origin: LocalOrigin) -> None:
        self.tmp, self.n, self.origin = tmp, n, origin
        self.cfg = base_config(tmp, tenants=tenants(n))
        self.path = write_config(tmp, self.cfg)
        self.port = free_port()
        self.err = tmp / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        cmd = [sys.executable, "-m", "crawlguard", "run", "--config", str(self.path),
               "--listen-port", str(self.port), "--admin-port", str(free_port())]  # fmt: skip
        env = {**os.environ, "CRAWLGUARD_SLOW_CALLBACK": str(SLOW)}
        with self.err.open("wb") as sink:
            start = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=sink, env=env
            )
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(self.err.read_text())
            time.sleep(0.01)
        return time.perf_counter() - start

    def ready(self) -> bool:
        if self.n == 0:
            return b"crawlguard ready" in self.err.read_bytes()
        try:
            return self.get().status_code == 200
        except requests.RequestException:
            return False

    def get(self, timeout: float = 5.0) -> requests.Response:
        last = self.n - 1
        proxy = f"http://{tenant_id(last)}:{secret(last)}@127.0.0.1:{self.port}"
        ua = f"{product_token(last)}/1.0 (+https://crawler.example/bot)"
        return requests.get(
            self.origin.url("/page"),
            proxies={"http": proxy},
            headers={"User-Agent": ua},
            timeout=timeout,
        )

    def reload(self, change: str) -> tuple[float, float, float, int]:
        """(seconds to "config reloaded", slowest request in the second before the signal,
        slowest request during the reload, slow callbacks the proxy logged meanwhile)."""
        assert self.proc is not None
        first = self.cfg["tenants"][0]
        if change == "mode":
            first["mode"] = "monitor" if first.get("mode") != "monitor" else "enforce"
        else:
            first["product_tokens"] = [first["product_tokens"][0] + "x"]
        write_config(self.tmp, self.cfg)
        log = self.err.read_text()
        before, slow_before = log.count("config reloaded"), log.count("Executing")
        timings: list[tuple[float, float]] = []  # (started, seconds)
        done = threading.Event()

        def client() -> None:
            while not done.is_set():
                started = time.perf_counter()
                assert self.get(timeout=30).status_code == 200
                timings.append((started, time.perf_counter() - started))

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(1.0)  # a second of requests before the signal: the baseline
        start = time.perf_counter()
        self.proc.send_signal(signal.SIGHUP)
        while self.err.read_text().count("config reloaded") == before:
            if time.perf_counter() - start > 120:
                raise RuntimeError("no reload:\n" + self.err.read_text()[-3000:])
            time.sleep(0.005)
        took = time.perf_counter() - start
        time.sleep(0.2)
        done.set()
        thread.join()
        baseline = max((d for t, d in timings if start - 1.0 <= t < start), default=0.0)
        during = max((d for t, d in timings if t + d >= start and t <= start + took), default=0.0)
        lines = [line for line in self.err.read_text().splitlines() if "Executing" in line]
        for line in lines[slow_before:][:3]:
            print("  slow callback:", line[:300])
        return took, baseline, during, len(lines) - slow_before

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="0,1,1000,10000,100000")
    parser.add_argument("--no-reload", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.tenants.split(",")]
    origin = LocalOrigin()
    rows = []
    try:
        for n in counts:
            with tempfile.TemporaryDirectory() as d:
                run = Run(Path(d), n, origin)
                try:
                    ready = run.start()
                    assert run.proc is not None
                    rows.append((n, ready, cpu_seconds(run.proc.pid), rss_mb(run.proc.pid)))
                    print(f"{n:>7} tenants: ready {ready:6.2f} s (CPU {rows[-1][2]:.2f} s), "
                          f"RSS {rows[-1][3]:7.1f} MB", flush=True)  # fmt: skip
                    if n == max(counts) and n > 0 and not args.no_reload:
                        for change in ("mode", "token"):
                            took, baseline, during, slow = run.reload(change)
                            print(f"reload of {n:,} tenants, one tenant's {change} changed: "
                                  f"{took:.2f} s; slowest request before {baseline * 1000:.0f} "
                                  f"ms, during {during * 1000:.0f} ms; callbacks over "
                                  f"{SLOW * 1000:.0f} ms: {slow}", flush=True)  # fmt: skip
                finally:
                    run.stop()
    finally:
        origin.close()
    base = next((rss for n, _, _, rss in rows if n == 0), None)
    print("\n| tenants | ready after | CPU time to ready | RSS | RSS over an empty config |")
    print("|---|---|---|---|---|")
    for n, ready, cpu, rss in rows:
        over = f"{rss - base:.0f} MB" if base is not None else "-"
        print(f"| {n:,} | {ready:.2f} s | {cpu:.2f} s | {rss:.0f} MB | {over} |")
    print(f"(load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
