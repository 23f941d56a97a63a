"""robots.txt parsing leaves the proxy's process (issue 9), queued fairly per tenant, with a
deadline on the wait, and a dead parser pool rebuilt, never replaced by in-thread parsing
(issue 18 item 12).

Real worker processes throughout: a worker is paused with SIGSTOP (so a parse is held in flight
for as long as the test needs, without timing) and killed with SIGKILL. The proxy's parser
processes are its children running `spawn_main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import LocalOrigin, Proxy, base_config, tenant, wait_for
from origins import RecordingOrigin, respond, routes
from prometheus_client.parser import text_string_to_metric_families

from crawlguard.policy.robots import RobotsRules
from crawlguard.robots.cache import RobotsCache
from crawlguard.robots.parse_pool import ParserUnavailable, RobotsParsePool

BODY = b"User-agent: *\nCrawl-delay: 3\nDisallow: /private/\nAllow: /private/ok$\n" + b"".join(
    b"Disallow: /p%d/*x\n" % i for i in range(500)
)


def big_robots(first: bytes = b"Disallow: /private\n") -> bytes:
    """Just under 500 KiB of plain rules: a few tenths of a second of parsing in a worker."""
    body = b"User-agent: *\n" + first + b"".join(b"Disallow: /p%d/x\n" % i for i in range(40000))
    body = body[: 500 * 1024]
    return body[: body.rfind(b"\n") + 1]


BIG = big_robots()


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parser_pids(parent: int) -> set[int]:
    """Live parser processes of `parent`: its children running multiprocessing's spawn_main
    (the resource tracker, also a child, runs another entry point)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or fields[1] != str(parent) or fields[0] in ("Z", "X"):
            continue
        try:
            if b"spawn_main" in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            pass
    return found


async def poll(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """`harness.wait_for` for async tests: the event loop keeps running while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


def pause(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # killed meanwhile
        os.kill(pid, signal.SIGCONT)


# -- the pool ---------------------------------------------------------------------------------


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


async def test_tenants_are_served_round_robin_not_first_come() -> None:
    """A queued 4 parses before B's one; B's runs right after A's parse in flight."""
    pool = RobotsParsePool(1)
    worker = await pool.worker_pid()
    done: list[str] = []
    pause(worker)
    try:
        jobs = {f"a{i}": pool.submit(BODY, ("a",)) for i in range(4)}
        jobs["b0"] = pool.submit(BODY, ("b",))
        for name, job in jobs.items():
            job.future.add_done_callback(lambda _, name=name: done.append(name))
        assert (pool.running, pool.queued("a"), pool.queued("b")) == (1, 3, 1)
        assert pool.queued(total=True) == 4
    finally:
        resume(worker)
    await asyncio.gather(*(pool.result(job) for job in jobs.values()))
    assert done == ["a0", "b0", "a1", "a2", "a3"]
    pool.close()


async def test_a_parse_two_tenants_wait_for_runs_at_the_earlier_turn() -> None:
    """One origin, one parse: B waiting for a site at the end of A's queue is not parked there."""
    pool = RobotsParsePool(1)
    worker = await pool.worker_pid()
    done: list[str] = []
    pause(worker)
    try:
        jobs = {f"a{i}": pool.submit(BODY, ("a",)) for i in range(4)}
        jobs["shared"] = pool.submit(BODY, ("a",))
        pool.queue_for(jobs["shared"], "b")
        for name, job in jobs.items():
            job.future.add_done_callback(lambda _, name=name: done.append(name))
        assert (pool.queued("a"), pool.queued("b"), pool.queued(total=True)) == (4, 1, 4)
    finally:
        resume(worker)
    await asyncio.gather(*(pool.result(job) for job in jobs.values()))
    assert done == ["a0", "shared", "a1", "a2", "a3"]
    pool.close()


async def test_a_waiter_past_its_deadline_leaves_the_parse_running() -> None:
    pool = RobotsParsePool(1)
    worker = await pool.worker_pid()
    pause(worker)
    try:
        job = pool.submit(BODY, ("a",))
        with pytest.raises(TimeoutError):
            await pool.result(job, 0.05)
        assert pool.running == 1 and not job.future.done()
    finally:
        resume(worker)
    rules = await pool.result(job)  # landed all the same
    assert not rules.decide("AnyBot", "/private/x").allowed
    pool.close()


async def test_workers_killed_again_and_again_are_replaced_never_parsing_in_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two deaths during one parse (the old pool then parsed in the proxy's thread for good),
    then a third: that parse fails closed, every later one still runs in a worker."""
    pool = RobotsParsePool(1, backoff_base=0.05)
    try:
        first = await pool.worker_pid()
        known = parser_pids(os.getpid())
        pause(first)
        parse = asyncio.ensure_future(pool.parse(BIG, "a"))
        await asyncio.sleep(0)  # the parse is handed to the paused worker
        os.kill(first, signal.SIGKILL)
        # its retry starts a new worker: pause that one before it can parse, and kill it too
        assert await poll(lambda: bool(parser_pids(os.getpid()) - known))
        [second] = parser_pids(os.getpid()) - known
        pause(second)
        os.kill(second, signal.SIGKILL)
        with pytest.raises(ParserUnavailable):
            await parse

        # From here, a parse in this process raises: only a worker process can parse.
        def in_this_process(body: bytes) -> RobotsRules:
            raise AssertionError("parsed in the proxy's process")

        monkeypatch.setattr(RobotsRules, "parse", in_this_process)
        rules = await pool.parse(BODY, "a")
        assert not rules.decide("AnyBot", "/private/x").allowed
        third = await pool.worker_pid()
        assert third not in (first, second, os.getpid())
        os.kill(third, signal.SIGKILL)
        rules = await pool.parse(BODY, "b")
        assert rules.decide("AnyBot", "/public").allowed
        fourth = await pool.worker_pid()
        assert fourth not in (first, second, third, os.getpid())
        deaths = [r for r in caplog.records if "robots.txt parser process died" in r.message]
        assert len(deaths) == 3
        assert pool.failures == 0  # reset by the parse that landed
    finally:
        pool.close()


POOL_THAT_CANNOT_START = """
import asyncio, logging, multiprocessing, os, sys
from multiprocessing import resource_tracker
from crawlguard.policy.robots import RobotsRules
from crawlguard.robots.parse_pool import ParserUnavailable, RobotsParsePool

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
BODY = b"User-agent: *\\nDisallow: /private\\n"

async def main():
    resource_tracker.ensure_running()  # started as usual: only the parser workers fail
    pool = RobotsParsePool(1, backoff_base=0.05)
    multiprocessing.set_executable("/bin/false")  # the interpreter is gone (mid-upgrade)
    try:
        await pool.parse(BODY)
        print("parsed anyway")
    except ParserUnavailable:
        print("unavailable", pool.failures)
    multiprocessing.set_executable(sys.executable)  # back
    def in_this_process(body):
        raise AssertionError("parsed in the proxy's process")
    RobotsRules.parse = in_this_process
    rules = await pool.parse(BODY)
    print("worker", rules.decide("AnyBot", "/private").allowed, pool.failures)
    pool.close()

asyncio.run(main())
"""


def test_a_pool_that_cannot_start_fails_closed_then_is_rebuilt_after_the_back_off() -> None:
    """No worker can start: the parse fails (the site fails closed), the failures are logged,
    and the pool is rebuilt after the back-off, still in a worker, never in-thread."""
    out = subprocess.run(
        [sys.executable, "-c", POOL_THAT_CANNOT_START],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["unavailable 2", "worker False 0"], out.stderr
    assert "the parser pool is rebuilt now" in out.stderr
    assert "the parser pool is rebuilt in 0.05 s" in out.stderr


def test_the_parser_process_does_not_outlive_a_killed_proxy(tmp_path: Path) -> None:
    """SIGKILL the process that owns the pool: its parser worker exits too (no orphan)."""
    script = (
        "import asyncio, os, sys\n"
        "from crawlguard.robots.parse_pool import RobotsParsePool\n"
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


# -- the robots cache's deadline and tenants --------------------------------------------------

ROBOTS = b"User-agent: *\nDisallow: /private\n"


def robots_site(body: bytes = ROBOTS) -> RecordingOrigin:
    return RecordingOrigin(routes({"/robots.txt": respond(body=body)}))


async def test_a_parse_past_parse_timeout_answers_now_and_its_rules_land_for_the_next_get() -> None:
    pool = RobotsParsePool(1)
    cache = RobotsCache(user_agent="t", parse_timeout=0.2, parse_pool=pool)
    try:
        async with robots_site() as site, robots_site() as other:
            worker = await pool.worker_pid()  # started outside any deadline
            # warm: on a loaded machine even this parse may pass 0.2 s; it lands all the same
            await cache.get(other.origin, tenant="a")
            assert await poll(lambda: getattr(cache.peek(other.origin), "result", "") == "ok")
            pause(worker)
            try:
                late = await cache.get(site.origin, tenant="a")
                assert (late.result, late.available) == ("parse-timeout", False)
                assert late.retry_after(time.monotonic()) >= 1
                assert "robots.parse_timeout" in late.detail
                assert (await cache.get(site.origin, tenant="b")) is late  # no second fetch
                assert cache.peek(other.origin) is not None  # that site alone
            finally:
                resume(worker)
            assert await poll(lambda: getattr(cache.peek(site.origin), "result", "") == "ok")
            entry = cache.peek(site.origin)
            assert entry is not None and not entry.rules.decide("AnyBot", "/private/x").allowed
            assert len(site.hits_for("/robots.txt")) == 1
    finally:
        await cache.close()


async def test_a_parse_nobody_waits_for_any_more_still_lands_in_the_cache() -> None:
    pool = RobotsParsePool(1)
    cache = RobotsCache(user_agent="t", parse_timeout=None, parse_pool=pool)
    try:
        async with robots_site() as site:
            worker = await pool.worker_pid()
            pause(worker)
            try:
                waiter = asyncio.ensure_future(cache.get(site.origin, tenant="a"))
                assert await poll(lambda: pool.running == 1)  # fetched; its parse is held
                waiter.cancel()  # the client left
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            finally:
                resume(worker)
            assert await poll(lambda: cache.peek(site.origin) is not None)
            assert len(site.hits_for("/robots.txt")) == 1
    finally:
        await cache.close()


async def test_a_tenant_joining_a_fetch_gets_its_parse_queued_at_its_own_turn() -> None:
    """A has parses queued; A's request starts a fetch whose parse queues behind them; B asks
    for the same site: the parse runs at B's turn, before A's others."""
    pool = RobotsParsePool(1)
    cache = RobotsCache(user_agent="t", parse_timeout=None, parse_pool=pool)
    try:
        async with robots_site() as site:
            worker = await pool.worker_pid()
            pause(worker)
            try:
                mine = [pool.submit(BODY, ("a",)) for _ in range(3)]  # 1 in flight, 2 queued
                for_a = asyncio.ensure_future(cache.get(site.origin, tenant="a"))
                assert await poll(lambda: pool.queued("a") == 3)  # fetched, queued behind
                for_b = asyncio.ensure_future(cache.get(site.origin, tenant="b"))
                assert await poll(lambda: pool.queued("b") == 1)
            finally:
                resume(worker)
            entry = await for_b
            assert entry.result == "ok" and not mine[2].future.done()
            assert (await for_a) is entry
            await asyncio.gather(*(pool.result(job) for job in mine))
    finally:
        await cache.close()


# -- the real proxy ---------------------------------------------------------------------------

HOOLI_UA = "HooliBot/2.0 (+https://hooli.example/bot)"


def parse_config(tmp: Path, **robots: Any) -> dict[str, Any]:
    return base_config(
        tmp,
        robots={"fetch_timeout": 10, **robots},
        tenants=[tenant("acme", ["AcmeBot"]), tenant("hooli", ["HooliBot"])],
    )


@pytest.fixture
def sites() -> Iterator[Callable[..., LocalOrigin]]:
    made: list[LocalOrigin] = []

    def make(robots: bytes = b"User-agent: *\nDisallow: /private\n") -> LocalOrigin:
        made.append(LocalOrigin(robots=robots))
        return made[-1]

    yield make
    for site in made:
        site.close()


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(proxy.metrics()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def robots_fetches(site: LocalOrigin) -> int:
    return sum(1 for h in site.hits if h.path == "/robots.txt")


def in_background(proxy: Proxy, urls: list[str], **kw: Any) -> tuple[list[Any], threading.Thread]:
    """GET every URL at once (one thread each); the replies (or errors) land in the list."""
    replies: list[Any] = []

    def one(url: str) -> None:
        try:
            replies.append(proxy.get(url, timeout=120, **kw))
        except requests.RequestException as exc:
            replies.append(exc)

    threads = [threading.Thread(target=one, args=(url,)) for url in urls]
    for t in threads:
        t.start()

    def join() -> None:
        for t in threads:
            t.join()

    joiner = threading.Thread(target=join)
    joiner.start()
    return replies, joiner


def test_one_tenants_many_big_parses_do_not_hold_up_another_tenants_first_request(
    tmp_path: Path, sites: Callable[..., LocalOrigin]
) -> None:
    """acme asks for 12 sites with 500 KiB robots.txt at once; hooli's first request to a new
    site is answered while most of acme's parses still wait (one parser process)."""
    proxy = Proxy(parse_config(tmp_path, parse_workers=1, parse_timeout=120), tmp_path)
    try:
        heavy = [sites(BIG) for _ in range(12)]
        replies, joiner = in_background(proxy, [s.url("/page") for s in heavy])
        queued = "crawlguard_robots_parse_queued"
        assert wait_for(lambda: metric(proxy, queued, tenant="acme") >= 6, 60), proxy.log()
        light = sites()
        r = proxy.get(light.url("/first"), tenant="hooli", ua=HOOLI_UA)
        assert r.status_code == 200 and light.paths() == ["/first"]
        # answered with acme's parses still waiting (they were queued first)
        assert metric(proxy, queued, tenant="acme") > 0
        assert len(replies) < len(heavy)
        joiner.join(180)
        assert sorted(getattr(r, "status_code", r) for r in replies) == [200] * len(heavy)
        assert len(parser_pids(proxy.proc.pid)) == 1  # robots.parse_workers
        assert metric(proxy, "crawlguard_robots_parse_queue_depth") == 0
    finally:
        proxy.stop()


def test_a_parse_past_parse_timeout_fails_that_site_closed_then_its_rules_apply_unfetched(
    tmp_path: Path, sites: Callable[..., LocalOrigin]
) -> None:
    proxy = Proxy(parse_config(tmp_path, parse_workers=1, parse_timeout=0.5), tmp_path)
    warm, slow = sites(), sites()
    worker = None
    try:
        # the parser process is up (its first parse may pass the deadline on a loaded machine)
        assert wait_for(lambda: proxy.get(warm.url("/warm")).status_code == 200, 30)
        timeouts = metric(proxy, "crawlguard_robots_parse_timeouts_total")
        [worker] = parser_pids(proxy.proc.pid)
        pause(worker)
        r = proxy.get(slow.url("/public"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (503, "robots-unreachable")
        assert int(r.headers["Retry-After"]) >= 1
        assert "parse-timeout" in r.text
        # that site alone: another site's cached rules still decide
        assert proxy.get(warm.url("/again")).status_code == 200
        assert proxy.get(slow.url("/meanwhile")).status_code == 503  # no second fetch either
        resume(worker)
        # the parse lands; the next request is decided by its rules, from that one fetch
        assert wait_for(lambda: proxy.get(slow.url("/public")).status_code == 200, 30)
        r = proxy.get(slow.url("/private/x"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (403, "robots-disallow")
        assert robots_fetches(slow) == 1
        assert slow.paths() == ["/public"]
        assert metric(proxy, "crawlguard_robots_parse_timeouts_total") == timeouts + 1
    finally:
        if worker is not None:
            resume(worker)
        proxy.stop()


def test_killed_parser_processes_are_replaced_and_parsing_never_moves_into_the_proxy(
    tmp_path: Path, sites: Callable[..., LocalOrigin]
) -> None:
    proxy = Proxy(parse_config(tmp_path, parse_workers=1, parse_timeout=120), tmp_path)
    try:
        assert proxy.get(sites().url("/warm")).status_code == 200
        [first] = parser_pids(proxy.proc.pid)
        pause(first)
        doomed = sites(BIG)
        replies, joiner = in_background(proxy, [doomed.url("/page")])
        assert wait_for(lambda: robots_fetches(doomed) == 1)
        os.kill(first, signal.SIGKILL)  # during its parse
        assert wait_for(lambda: bool(parser_pids(proxy.proc.pid) - {first}))
        [second] = parser_pids(proxy.proc.pid) - {first}
        pause(second)  # before it can parse the retried body
        os.kill(second, signal.SIGKILL)
        joiner.join(60)
        [r] = replies
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (503, "robots-unreachable")
        # The pool is rebuilt: later sites are parsed, in a new parser process.
        r = proxy.get(sites().url("/private/x"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (403, "robots-disallow")
        [third] = parser_pids(proxy.proc.pid)
        assert third not in (first, second)
        os.kill(third, signal.SIGKILL)  # a third death, between parses
        r = proxy.get(sites().url("/private/y"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (403, "robots-disallow")
        [fourth] = parser_pids(proxy.proc.pid)
        assert fourth not in (first, second, third)
        assert proxy.log().count("a robots.txt parser process died") == 3
        assert metric(proxy, "crawlguard_robots_parse_pool_failures_total") == 3
    finally:
        proxy.stop()


def test_parse_workers_is_the_number_of_parser_processes(
    tmp_path: Path, sites: Callable[..., LocalOrigin]
) -> None:
    proxy = Proxy(parse_config(tmp_path, parse_workers=2, parse_timeout=120), tmp_path)
    try:
        heavy = [sites(BIG) for _ in range(4)]
        replies, joiner = in_background(proxy, [s.url("/page") for s in heavy])
        joiner.join(120)
        assert sorted(getattr(r, "status_code", r) for r in replies) == [200] * len(heavy)
        assert len(parser_pids(proxy.proc.pid)) == 2
    finally:
        proxy.stop()
