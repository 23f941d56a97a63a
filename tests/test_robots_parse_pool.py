"""robots.txt parsing leaves the proxy's process (issue 9: a parse must not stall the loop)."""

from __future__ import annotations

import os
import signal

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
