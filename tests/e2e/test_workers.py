"""`crawlguard run --workers N`: N real proxy processes on one port, one admin server.

Which worker served a request is read from that worker's own prometheus-client multiprocess
file (`counter_<pid>.db` in the parent's private PROMETHEUS_MULTIPROC_DIR, found through the
worker's /proc/<pid>/environ): nothing in a response says which process made it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from harness import GOOD_UA, LocalOrigin, Proxy, Route, base_config, tenant, wait_for
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redisutil import redis_base, redis_url  # noqa: F401

from crawlguard.admin.metrics import Metrics
from crawlguard.state.sites import SiteAsk
from crawlguard.state.sites_redis import RedisSites

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")

HOOLI_UA = "HooliBot/2.0 (+https://hooli.example/bot)"
ALLOWED_LABELS = {"tenant", "kind", "decision", "result", "table", "version", "le", "reason"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class WorkersProxy(Proxy):
    """`crawlguard run --workers N` as a subprocess (the harness's Proxy, one flag more)."""

    def __init__(self, config: dict[str, Any], tmp: Path, workers: int = 2) -> None:
        self.workers = workers
        super().__init__(config, tmp)

    def _start(self, env: dict[str, str] | None) -> None:
        cmd = [
            sys.executable, "-m", "crawlguard", "run", "--config", str(self.config_path),
            "--listen-port", str(self.port), "--admin-port", str(self.admin_port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        self._err = self.log_path.open("ab")
        self._out = self.out_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.tmp, stdout=self._out, stderr=self._err, env={**os.environ, **(env or {})}
        )
        if not wait_for(
            lambda: self.proc.poll() is not None or "crawlguard ready" in self.log(), 60
        ):
            self.stop()
            raise RuntimeError(f"proxy did not become ready:\n{self.log()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited {self.proc.returncode}:\n{self.log()}")

    # -- the processes ---------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def multiproc_dir(self) -> Path:
        pid = self.worker_pids()[0]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for item in environ:
            if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(item.split(b"=", 1)[1].decode())
        raise AssertionError("a worker without PROMETHEUS_MULTIPROC_DIR")

    def served(self, pid: int, tid: str = "acme", decision: str | None = None) -> float:
        """Requests of tenant `tid` that worker `pid` decided (its own counter file)."""
        with tempfile.TemporaryDirectory() as tmp:
            src = self.multiproc_dir() / f"counter_{pid}.db"
            if not src.exists():
                return 0.0
            shutil.copy(src, tmp)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=tmp)
            samples = parse(registry_text(registry))
        return sum(
            v
            for (name, labels), v in samples.items()
            if name == "crawlguard_requests_total"
            and ("tenant", tid) in labels
            and (decision is None or ("decision", decision) in labels)
        )

    # -- the admin side --------------------------------------------------------------------

    def admin(self, path: str, **kw: Any) -> requests.Response:
        session = requests.Session()
        session.trust_env = False  # straight to the admin port
        return session.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5, **kw)

    def scrape(self) -> Samples:
        r = self.admin("/metrics")
        assert r.status_code == 200
        return parse(r.text)


def registry_text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # state, ppid, ...


def gone(pid: int) -> bool:
    fields = stat(pid)
    return fields is None or fields[0] in ("Z", "X")  # a zombie left to a reaper is gone too


def live(field: int, value: int) -> list[int]:
    """Live processes whose /proc stat `field` (1: ppid, 2: pgrp) is `value`, sorted."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat(int(entry.name))
            if fields is not None and fields[field] == str(value) and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return sorted(found)


def group(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (each worker leads its own)."""
    return live(2, pgid)


def children(pid: int) -> list[int]:
    return live(1, pid)


def fetch(proxy: Proxy, url: str, tid: str = "acme", ua: str = GOOD_UA) -> requests.Response:
    """One request on its own connection (so the kernel picks a worker for each)."""
    session = requests.Session()
    session.trust_env = False
    try:
        return session.get(
            url,
            proxies=proxy.proxies(tid),
            headers={"User-Agent": ua, "Connection": "close"},
            timeout=15,
        )
    finally:
        session.close()


def workers_config(tmp: Path, state_url: str, **sections: Any) -> dict[str, Any]:
    sections.setdefault("pacing", {"default_min_interval": 0, "max_hold": 5, "max_held": 7})
    return base_config(tmp, state={"url": state_url}, **sections)


@pytest.fixture
def workers_proxy(tmp_path: Path, redis_url: str) -> Iterator[WorkersProxy]:  # noqa: F811
    p = WorkersProxy(workers_config(tmp_path, redis_url), tmp_path)
    yield p
    p.stop()


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin()
    yield o
    o.close()


def until_both_served(
    proxy: WorkersProxy, send: Any, tid: str = "acme", limit: int = 300
) -> list[requests.Response]:
    """Send requests (each on a new connection) until every worker has decided one of them."""
    responses: list[requests.Response] = []
    pids = proxy.worker_pids()
    assert len(pids) == proxy.workers
    while len(responses) < limit:
        responses.append(send())
        if len(responses) % 5 == 0 and all(proxy.served(pid, tid) > 0 for pid in pids):
            return responses
    raise AssertionError(
        f"after {limit} requests: {[(pid, proxy.served(pid, tid)) for pid in pids]}"
    )


# -- one port, both workers, one pacing ------------------------------------------------------


def test_both_workers_serve_the_port_and_pace_one_tenant_as_one_proxy(
    workers_proxy: WorkersProxy,
) -> None:
    site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 60\nAllow: /\n")
    try:
        responses = until_both_served(workers_proxy, lambda: fetch(workers_proxy, site.url("/")))
        statuses = [r.status_code for r in responses]
        assert statuses[0] == 200
        # Every later request was too soon, whichever worker got it.
        assert statuses[1:] == [429] * (len(statuses) - 1)
        assert {r.headers["X-Crawlguard-Decision"] for r in responses[1:]} == {"crawl-delay"}
        assert all(int(r.headers["Retry-After"]) >= 1 for r in responses[1:])
        assert len(site.page_hits()) == 1

        pids = workers_proxy.worker_pids()
        allowed = {pid: workers_proxy.served(pid, decision="allowed") for pid in pids}
        paced = {pid: workers_proxy.served(pid, decision="crawl-delay") for pid in pids}
        assert sorted(allowed.values()) == [0, 1]
        # The worker that never forwarded a request refused some as too soon: it saw the
        # other worker's slot in the shared state.
        idle = next(pid for pid in pids if allowed[pid] == 0)
        assert paced[idle] > 0
        assert sum(paced.values()) == len(responses) - 1

        # One /metrics for all: the sums of the workers' counts.
        samples = workers_proxy.scrape()
        requests_total = "crawlguard_requests_total"
        assert total(samples, requests_total, tenant="acme", decision="allowed") == 1
        assert (
            total(samples, requests_total, tenant="acme", decision="crawl-delay")
            == len(responses) - 1
        )
        assert total(samples, "crawlguard_violations_total", tenant="acme", kind="crawl-delay") == (
            len(responses) - 1
        )
        assert workers_proxy.admin("/healthz").status_code == 200
    finally:
        site.close()


def test_concurrent_first_requests_through_both_workers_fetch_robots_txt_once(
    workers_proxy: WorkersProxy,
) -> None:
    """A new origin with a slow robots.txt and a burst of first requests on separate
    connections that both workers decide: the origin sees exactly one robots.txt fetch.
    (A burst the kernel gave to one worker only proves nothing: retried with a new origin.)"""
    pids = workers_proxy.worker_pids()
    for _ in range(10):
        site = LocalOrigin()
        site.routes["/robots.txt"] = Route(
            body=b"User-agent: *\nAllow: /\n", headers={"Content-Type": "text/plain"}, delay=1.0
        )
        try:
            before = {pid: workers_proxy.served(pid) for pid in pids}
            with ThreadPoolExecutor(max_workers=8) as pool:
                burst = [pool.submit(fetch, workers_proxy, site.url(f"/p{i}")) for i in range(8)]
                assert all(f.result().status_code == 200 for f in burst)
            if all(workers_proxy.served(pid) > before[pid] for pid in pids):
                assert [h.path for h in site.hits].count("/robots.txt") == 1
                assert len(site.page_hits()) == 8
                return
        finally:
            site.close()
    raise AssertionError("no burst of first requests reached both workers")


def test_the_shared_queue_keeps_its_length(workers_proxy: WorkersProxy) -> None:
    """asyncio calls listen() again on a socket it is given; in a worker that must not shrink
    the queue of connections waiting for any worker (the parent's listen(LISTEN_BACKLOG))."""
    from crawlguard.cli.workers import LISTEN_BACKLOG

    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2)")
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{workers_proxy.port}"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.split()  # fmt: skip
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert out[0] == "LISTEN"
    assert int(out[2]) == min(LISTEN_BACKLOG, somaxconn)  # Send-Q of a listener: its backlog


async def test_a_worker_accepts_one_connection_per_wake_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio accepts up to `backlog` (default 100) connections each time the socket is
    readable, so the first worker to wake would take a whole burst (a crawler's keep-alive
    pool opening 16 connections). A worker asks for one per wake-up: idle workers share a
    burst, and a busy one, back in its loop less often, takes fewer. Measured with 2 workers,
    25 bursts of 16 connections on an otherwise idle 2-CPU machine: one per wake-up split
    every burst (6..10 each); 100 per wake-up sent 9 of the 25 bursts to a single worker. How a
    burst splits is the scheduler's call, so this checks the wiring; benchmarks/workers.py
    shows each worker's CPU share under load."""
    from mitmproxy.proxy import mode_servers

    import crawlguard.cli.workers as workers
    import crawlguard.proxy.workers as worker_side

    monkeypatch.setattr(mode_servers.RegularInstance, "listen", mode_servers.RegularInstance.listen)
    calls: list[dict[str, Any]] = []

    async def start_server(cb: Any, **kw: Any) -> str:
        calls.append(kw)
        return "server"

    monkeypatch.setattr(workers.asyncio, "start_server", start_server)
    parent = workers.bind_listeners("127.0.0.1", 0)
    try:
        inherited = worker_side.InheritedSocket(fileno=os.dup(parent[0].fileno()))
        inherited.listen(1)  # a no-op: the parent's queue length stays
        worker_side.listen_on([inherited])
        instance = object.__new__(mode_servers.RegularInstance)
        assert await instance.listen("ignored", 1) == ["server"]
        assert calls == [{"sock": inherited, "backlog": worker_side.ACCEPT_BATCH}]
        assert worker_side.ACCEPT_BATCH == 1
        inherited.close()
    finally:
        for sock in parent:
            sock.close()


def test_metrics_aggregate_in_multiprocess_mode(workers_proxy: WorkersProxy, site: LocalOrigin):
    until_both_served(workers_proxy, lambda: fetch(workers_proxy, site.url("/")))
    generic = fetch(workers_proxy, site.url("/"), ua="python-requests/2.31")
    assert generic.status_code == 403
    assert fetch(workers_proxy, site.url("/"), tid="acme", ua="").status_code == 403

    # Every series has the type it has in one process, and no series is per process.
    own = {m.name: m.type for m in Metrics().registry.collect()}
    text = workers_proxy.admin("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in families.items():
        assert own.get(name) == family.type, name
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
    for name in (
        "crawlguard_requests", "crawlguard_violations", "crawlguard_robots_fetches",
        "crawlguard_decision_seconds", "crawlguard_delayed_requests",
        "crawlguard_auth_failures", "crawlguard_store_queue_depth",
        "crawlguard_store_write_seconds", "crawlguard_robots_cache_entries",
        "crawlguard_robots_cache_lookups", "crawlguard_held_requests_limit",
        "crawlguard_build_info",
    ):  # fmt: skip
        assert name in families, name

    samples = parse(text)
    sent = total(samples, "crawlguard_requests_total", tenant="acme")
    per_worker = sum(workers_proxy.served(pid) for pid in workers_proxy.worker_pids())
    assert sent == per_worker >= 4
    assert total(samples, "crawlguard_decision_seconds_count") == sent
    # gauges: livesum (what the workers hold together), livemax (what each has)
    assert total(samples, "crawlguard_held_requests_limit") == 2 * 7
    assert total(samples, "crawlguard_delayed_requests") == 0
    assert total(samples, "crawlguard_build_info") == 1
    # a set_function gauge, copied into the worker's file every second
    assert wait_for(
        lambda: total(workers_proxy.scrape(), "crawlguard_robots_cache_entries") >= 1, 10
    )
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert "error" not in (check.stdout + check.stderr).lower(), check.stdout + check.stderr


def test_the_parent_serves_health_api_and_explains_the_robots_endpoint(
    workers_proxy: WorkersProxy,
    site: LocalOrigin,
    redis_url: str,  # noqa: F811  (the workers' own)
) -> None:
    assert workers_proxy.admin("/healthz").text == "ok\n"
    assert fetch(workers_proxy, site.url("/x"), ua="curl/8.0").status_code == 403
    op = {"Authorization": "Bearer op"}
    assert workers_proxy.admin("/api/violations").status_code == 401
    records = workers_proxy.admin("/api/violations?kind=ua-generic", headers=op).json()
    assert [r["url"] for r in records] == [site.url("/x")]
    robots = workers_proxy.admin(f"/api/robots?origin={site.url('')}", headers=op)
    assert robots.status_code == 404
    assert "--workers" in robots.json()["error"]
    assert workers_proxy.admin("/api/robots?origin=http://x", headers={}).status_code == 401
    # the parent holds no site state: /api/sites reads the Redis every worker grants from
    asyncio.run(grant_in(redis_url, SiteAsk("shared.example", "acme", interval=1.0)))
    body = workers_proxy.admin("/api/sites?site=shared.example", headers=op).json()
    assert [s["site"] for s in body["sites"]] == ["shared.example"], body
    assert [t["tenant"] for t in body["sites"][0]["tenants"]] == ["acme"]


async def grant_in(url: str, ask: SiteAsk) -> None:
    sites = RedisSites.from_url(url)
    try:
        assert (await sites.grant(ask, 0.0)).granted
    finally:
        await sites.close()


# -- the workers' lives -----------------------------------------------------------------------


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    workers_proxy: WorkersProxy, site: LocalOrigin
) -> None:
    until_both_served(workers_proxy, lambda: fetch(workers_proxy, site.url("/")))
    before = total(workers_proxy.scrape(), "crawlguard_requests_total", tenant="acme")
    victim, survivor = workers_proxy.worker_pids()
    os.kill(victim, signal.SIGKILL)
    # The port serves while the worker is down and being restarted.
    during = [fetch(workers_proxy, site.url("/")).status_code for _ in range(10)]
    assert during == [200] * 10
    assert wait_for(
        lambda: len(pids := workers_proxy.worker_pids()) == 2 and victim not in pids, 30
    ), workers_proxy.log()
    assert survivor in workers_proxy.worker_pids()
    assert group(victim) == []  # nothing it had started (robots.txt parsers) is left behind
    assert wait_for(lambda: workers_proxy.admin("/healthz").status_code == 200, 30)
    log = workers_proxy.log()
    assert f"(pid {victim}) was killed by SIGKILL" in log
    assert "restarted (pid" in log
    # The new worker serves too, and the aggregated counts never went down.
    replacement = next(pid for pid in workers_proxy.worker_pids() if pid != survivor)
    sent = 0
    while workers_proxy.served(replacement) == 0:
        assert fetch(workers_proxy, site.url("/")).status_code == 200
        sent += 1
        assert sent < 300
    after = total(workers_proxy.scrape(), "crawlguard_requests_total", tenant="acme")
    assert after == before + 10 + sent


def test_sigterm_stops_every_worker_after_they_flush(
    workers_proxy: WorkersProxy, site: LocalOrigin
) -> None:
    responses = until_both_served(
        workers_proxy, lambda: fetch(workers_proxy, site.url("/"), ua="Wget/1.21")
    )
    assert {r.status_code for r in responses} == {403}
    pids = workers_proxy.worker_pids()
    private = workers_proxy.multiproc_dir().parent
    pid_file = Path(workers_proxy.config["proxy"]["confdir"]) / "crawlguard.pid"
    assert pid_file.read_text().strip() == str(workers_proxy.proc.pid)

    assert workers_proxy.stop() == 0, workers_proxy.log()
    assert all(gone(pid) for pid in pids)
    assert all(group(pid) == [] for pid in pids)
    assert not pid_file.exists()
    assert not private.exists()  # the metrics files and config snapshot are removed
    log = workers_proxy.log()
    assert "worker 1 stopped" in log and "worker 2 stopped" in log
    # Each worker committed its records and flushed its request counts before exiting.
    # every refusal is in a record's count (beyond store.fold_after a worker folds them)
    recorded = workers_proxy.violations("--kind", "ua-generic")
    assert sum(v["count"] for v in recorded) == len(responses)
    report = subprocess.run(
        [sys.executable, "-m", "crawlguard", "report", "--config",
         str(workers_proxy.config_path), "--format", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    counts = yaml.safe_load(report.stdout)["tenants"]["acme"]["requests"]
    assert counts == {"ua-generic": len(responses)}


def test_workers_stop_when_the_parent_is_killed(workers_proxy: WorkersProxy) -> None:
    pids = workers_proxy.worker_pids()
    private = workers_proxy.multiproc_dir().parent
    try:
        workers_proxy.proc.kill()
        workers_proxy.proc.wait(10)
        assert wait_for(lambda: all(gone(pid) for pid in pids), 30)
        assert wait_for(lambda: all(group(pid) == [] for pid in pids), 30)
    finally:
        shutil.rmtree(private, ignore_errors=True)  # a killed parent cannot clean up
    with socket.socket() as s:  # the port is free again: no worker holds it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", workers_proxy.port))


def test_reload_reaches_every_worker(workers_proxy: WorkersProxy, site: LocalOrigin) -> None:
    cfg = dict(workers_proxy.config)
    cfg["tenants"] = [*cfg["tenants"], tenant("hooli", ["HooliBot"])]
    workers_proxy.config_path.write_text(yaml.safe_dump(cfg))
    reload = subprocess.run(
        [sys.executable, "-m", "crawlguard", "reload", "--config", str(workers_proxy.config_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert reload.returncode == 0, reload.stderr
    assert str(workers_proxy.proc.pid) in reload.stdout  # the parent's pid
    for needle in (
        "crawlguard: config reloaded: 4 tenant(s), sent to 2 worker(s)",
        "[worker 1]: config reloaded: 4 tenant(s)",
        "[worker 2]: config reloaded: 4 tenant(s)",
    ):
        assert wait_for(lambda n=needle: n in workers_proxy.log(), 20), workers_proxy.log()
    responses = until_both_served(
        workers_proxy, lambda: fetch(workers_proxy, site.url("/"), "hooli", HOOLI_UA), "hooli"
    )
    assert {r.status_code for r in responses} == {200}

    workers_proxy.config_path.write_text("tenants: [{id: broken}]\n")
    os.kill(workers_proxy.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: "reload refused, running config kept" in workers_proxy.log(), 20)
    assert fetch(workers_proxy, site.url("/"), "hooli", HOOLI_UA).status_code == 200
    assert workers_proxy.log().count("config reloaded") == 3  # the bad one reached no worker


# -- refused configurations -------------------------------------------------------------------


def run_cli(tmp: Path, config: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(path), *flags],
        cwd=tmp, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_memory_state_with_several_workers_is_refused(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)  # state.url: memory://
    out = run_cli(tmp_path, cfg, "--workers", "2", "--listen-port", "0", "--admin-port", "0")
    assert out.returncode == 2, out.stderr
    assert "--workers 2 needs a shared state.url" in out.stderr
    assert "memory://" in out.stderr
    assert "crawlguard ready" not in out.stderr


def test_workers_must_be_positive(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    cfg = workers_config(tmp_path, redis_url)
    out = run_cli(tmp_path, cfg, "--workers", "0", "--listen-port", "0", "--admin-port", "0")
    assert out.returncode == 2
    assert "--workers must be at least 1" in out.stderr


# -- pieces, in process --------------------------------------------------------------------------


def test_one_free_port_for_every_address(tmp_path: Path) -> None:
    from crawlguard.cli.workers import bind_listeners

    socks = bind_listeners("localhost", 0)
    try:
        assert len({s.getsockname()[1] for s in socks}) == 1
    finally:
        for s in socks:
            s.close()


def test_a_worker_that_cannot_start_stops_the_proxy(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    # The parent cannot see this one: only a worker's Runtime reads the CA bundle.
    cfg = workers_config(tmp_path, redis_url, proxy={"upstream_ca_file": str(tmp_path / "no.pem")})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(path),
         "--workers", "2", "--listen-port", "0", "--admin-port", "0"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert re.search(r"crawlguard: worker \d: proxy.upstream_ca_file: cannot load .*no\.pem", err)
    assert "while starting (its message is above); stopping" in err
    assert "crawlguard ready" not in err
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", err)]
    assert pids and all(gone(pid) and group(pid) == [] for pid in pids)


def test_sigterm_answers_a_workers_held_requests_and_stops_quietly(tmp_path: Path) -> None:
    """Issue 21, `--workers`: a request delay pacing holds in a worker gets 503 proxy-busy +
    Retry-After when the parent is told to stop, and no worker logs a traceback."""
    cfg = base_config(
        tmp_path,
        tenants=[tenant("slowco", ["SlowBot"], pacing="delay")],
        pacing={"default_min_interval": 0, "max_hold": 60},
    )
    p = WorkersProxy(cfg, tmp_path, workers=1)
    site = LocalOrigin()
    site.routes["/robots.txt"] = Route(
        body=b"User-agent: *\nCrawl-delay: 30\nAllow: /\n", headers={"Content-Type": "text/plain"}
    )
    ua = "SlowBot/1.0 (+https://slow.example/bot)"
    held_gauge = re.compile(r"^crawlguard_delayed_requests(\{[^}]*\})? 1\.0$", re.M)
    try:
        assert p.get(site.url("/first"), tenant="slowco", ua=ua).status_code == 200
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(p.get, site.url("/held"), tenant="slowco", ua=ua, timeout=60)
            assert wait_for(lambda: held_gauge.search(p.metrics()) is not None, 20), p.metrics()
            assert p.stop() == 0, p.log()
            r = held.result(timeout=30)
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (503, "proxy-busy")
        assert 1 <= int(r.headers["Retry-After"]) <= 30
        assert site.paths() == ["/first"]  # the held request was never forwarded
        log = p.log()
        assert "crawlguard stopped" in log
        assert "Traceback" not in log and "CancelledError" not in log, log
    finally:
        p.stop()
        site.close()
