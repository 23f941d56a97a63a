"""`crawlguard run`: from process start to "crawlguard ready", as the tests' harness starts it.

    .venv/bin/python benchmarks/startup.py [--runs 10] [--fresh-ca] [--importtime]

Each run starts `python -m crawlguard run` on the tests' base config (tests/harness.py:
SQLite store, memory:// state, three tenants, free ports) in a temporary directory and times
the first "crawlguard ready" line on stderr, then stops it with SIGTERM. The CA is made once
and reused (as an operator's proxy does) unless --fresh-ca (every test proxy has its own
confdir, so it makes one each time). Prints every run, the median and the best.
`--importtime` prints the 25 slowest imports of one run (python -X importtime) instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import base_config, free_port


def start_to_ready(tmp: Path, confdir: Path, extra: list[str]) -> float:
    cfg = base_config(tmp)
    cfg["proxy"]["confdir"] = str(confdir)
    path = tmp / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = tmp / "stderr.log"
    cmd = [sys.executable, *extra, "-m", "crawlguard", "run", "--config", str(path),
           "--listen-port", str(free_port()), "--admin-port", str(free_port())]  # fmt: skip
    with err.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=sink)
        try:
            while b"crawlguard ready" not in err.read_bytes():
                if proc.poll() is not None:
                    raise RuntimeError(err.read_text())
                time.sleep(0.002)
            return time.perf_counter() - start
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--fresh-ca", action="store_true", help="a new confdir (CA) every run")
    parser.add_argument("--importtime", action="store_true", help="slowest imports of one run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        if args.importtime:
            start_to_ready(root, root / "ca", ["-X", "importtime"])
            rows = [
                line.split("|")
                for line in (root / "stderr.log").read_text().splitlines()
                if line.startswith("import time:") and "|" in line
            ]
            rows = [r for r in rows if r[1].strip().isdigit()]
            for _self_us, total_us, name in sorted(rows, key=lambda r: -int(r[1]))[:25]:
                print(f"{int(total_us) / 1000:8.1f} ms  {name.rstrip()}")
            return 0
        times = []
        for i in range(args.runs):
            run = root / f"run{i}"
            run.mkdir()
            confdir = run / "ca" if args.fresh_ca else root / "ca"
            times.append(start_to_ready(run, confdir, []))
            print(f"run {i + 1}: {times[-1] * 1000:.0f} ms")
    how = "fresh CA each run" if args.fresh_ca else "CA reused"
    print(f"median {statistics.median(times) * 1000:.0f} ms, best {min(times) * 1000:.0f} ms "
          f"({how}; load {os.getloadavg()[0]:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
