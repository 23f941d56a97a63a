"""robots.txt parsing leaves the proxy's process (issue 9: a parse must not stall the loop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import wait_for

from crawlguard.robots import RobotsRules
from crawlguard.robots_parse_pool import RobotsParsePool

BODY = b"User-agent: *\nCrawl-delay: 3\nDisallow: /private/\nAllow: /private/ok$\n" + b"".join(
    b"Disallow: /p%d/*x\n" % i for i in range(500)
)


async def test_parse_runs_in_another_process_and_gives_the_same_rules() -> None:
    pool = RobotsParsePool()
    try:
        assert await pool.worker_pid() != os.getpid()
        rules = await pool.parse(BODY)
        local = RobotsRules.parse(BODY)
        assert rules.sha256 == local.sha256
        for path in ("/private/x", "/private/ok", "/p7/yx", "/public"):
            a, b = rules.decide("AnyBot", path), local.decide("AnyBot", path)
            assert (a.allowed, a.rule, a.crawl_delay) == (b.allowed, b.rule, b.crawl_delay)
    finally:
        pool.close()


async def test_a_dead_worker_is_replaced() -> None:
    pool = RobotsParsePool()
    try:
        os.kill(await pool.worker_pid(), signal.SIGKILL)
        rules = await pool.parse(BODY)  # the broken pool is rebuilt, the parse retried
        assert not rules.decide("AnyBot", "/private/x").allowed
        assert await pool.worker_pid() != os.getpid()
    finally:
        pool.close()


def test_the_parser_process_does_not_outlive_a_killed_proxy(tmp_path: Path) -> None:
    """SIGKILL the process that owns the pool: its parser worker exits too (no orphan)."""
    script = (
        "import asyncio, os, sys\n"
        "from crawlguard.robots_parse_pool import RobotsParsePool\n"
        "async def main():\n"
        "    pool = RobotsParsePool()\n"
        "    print(await pool.worker_pid(), flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        worker = int(owner.stdout.readline())
        assert _alive(worker)
    finally:
        owner.kill()
        owner.wait(timeout=30)
    assert wait_for(lambda: not _alive(worker), timeout=30), f"parser {worker} outlived its owner"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"
