"""`crawlguard run --workers N`: N proxy processes accepting on ONE port.

The parent process
  * validates the config and refuses `state.url: memory://` (each worker would pace alone);
  * binds the proxy's listening socket(s) once; every worker inherits the same socket
    (`pass_fds`) and accepts on it, so the kernel hands each new connection to one of them, no
    other process can take the port over (no SO_REUSEPORT) and a restarting worker never
    makes the port refuse connections (they wait in the shared accept queue);
  * starts the workers (`python -m crawlguard.cli.workers`, each in its own process group, so
    a terminal's Ctrl-C reaches the parent only and the stop stays orderly), restarts one
    that dies (with back-off), and forwards SIGHUP (`crawlguard reload`: the pid file names
    the parent) after checking the new config itself;
  * runs the ONE admin server: `/metrics` aggregates the workers' prometheus-client
    multiprocess files (a private directory, removed at exit), `/healthz` is 200 once every
    worker is ready, the API and dashboard read the store; `/api/robots` answers 404 (the
    robots.txt cache is in the workers' memory);
  * on SIGTERM/SIGINT stops every worker gracefully (each one commits its queued violation
    records and request counts) and exits 0.

A worker is today's proxy without an admin port: its own Runtime (store writer, robots.txt
cache, pacing through the shared state). It reads the config the parent validated (a
snapshot in the private directory, rewritten on each accepted reload, so a restarted worker
runs what its siblings run) and stops by itself if the parent disappears (the lifeline pipe
reaches end-of-file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crawlguard.config import Config, ConfigError, load_config
from crawlguard.files import write_atomic

log = logging.getLogger("crawlguard")

STOP_GRACE_SECONDS = 30.0
"""How long a stopping worker may take (closing connections, committing records) before it
is killed."""
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0
"""A worker that ran this long before it died is restarted after `BACKOFF_FIRST` again; one
that keeps dying sooner waits twice as long each time, up to `BACKOFF_MAX`."""
LISTEN_BACKLOG = 1024
"""The shared socket's queue of connections no worker accepted yet (capped by the kernel's
net.core.somaxconn)."""
RESTART_SECTIONS = ("proxy", "admin", "store", "state", "robots")
"""Config sections a reload cannot change (as crawlguard.runtime.Runtime.reload)."""
ROBOTS_UNAVAILABLE = (
    "not available with --workers N: each worker keeps its own robots.txt cache in memory, "
    "and this admin server runs in the parent process; run crawlguard with --workers 1 to "
    "inspect the cache (violation records keep the robots.txt in force: /api/evidence/<sha256>)"
)


def memory_state_refusal(workers: int) -> str:
    return (
        f"--workers {workers} needs a shared state.url (redis://host:6379/0): with "
        "state.url memory:// every worker would pace on its own, so a tenant could be let "
        f"through up to {workers} times as often as a Crawl-delay allows. Set state.url to a "
        "Redis URL, or run one process (--workers 1)"
    )


# -- the parent ------------------------------------------------------------------------------


def run_workers(cfg: Config, workers: int, load: Callable[[], Config]) -> int:
    """`crawlguard run --workers N` (N != 1) once the config loaded; the exit code."""
    from crawlguard.cli.run import bind_problem, setup_logging

    if workers < 1:
        print(f"crawlguard: --workers must be at least 1, not {workers}", file=sys.stderr)
        return 2
    if cfg.state.url == "memory://":
        print(f"crawlguard: {memory_state_refusal(workers)}", file=sys.stderr)
        return 2
    admin = (cfg.admin.listen_host, cfg.admin.port)
    if (problem := bind_problem(*admin)) is not None:
        print(f"crawlguard: cannot listen on {admin[0]}:{admin[1]} for the admin server "
              f"({problem}); choose another with --admin-port / admin.port",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        socks = bind_listeners(cfg.proxy.listen_host, cfg.proxy.listen_port)
    except OSError as exc:
        print(f"crawlguard: cannot listen on {cfg.proxy.listen_host}:{cfg.proxy.listen_port} "
              f"for the proxy server ({exc.strerror or exc}); choose another with "
              "--listen-port / proxy.listen_port", file=sys.stderr)  # fmt: skip
        return 2
    private = Path(tempfile.mkdtemp(prefix="crawlguard-workers-"))  # 0700
    try:
        from crawlguard.proxy.ca import ensure_ca

        try:  # once, here: N workers creating it at once could each make a different one
            ensure_ca(cfg.proxy.confdir)
        except OSError as exc:
            print(f"crawlguard: cannot create the CA in proxy.confdir {cfg.proxy.confdir}: "
                  f"{exc}", file=sys.stderr)  # fmt: skip
            return 2
        setup_logging()
        per_worker = [
            f"tenants[{t.id}].{key}"
            for t in cfg.tenants
            for key in ("max_concurrency", "max_rps")
            if getattr(t, key) is not None
        ]
        if per_worker:
            log.warning(
                "%s: enforced by each worker on its own: with --workers %d a tenant may reach "
                "up to %d times these caps",
                ", ".join(per_worker),
                workers,
                workers,
            )
        try:
            return asyncio.run(Supervisor(cfg, workers, load, socks, private).run())
        except ConfigError as exc:
            print(f"crawlguard: {exc}", file=sys.stderr)
            return 2
    finally:
        for sock in socks:
            sock.close()
        shutil.rmtree(private, ignore_errors=True)


def bind_listeners(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> list[socket.socket]:
    """Listening TCP sockets for host:port, as asyncio's `start_server` would make them (one
    per address `host` resolves to; "" is every address). Port 0: one free port for all."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                address = (address[0], socks[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def write_snapshot(cfg: Config, path: Path) -> None:
    """The validated config for the workers (paths already absolute), replaced atomically;
    it must read back as the same config."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=True)
    write_atomic(path, text.encode("utf-8"))
    if load_config(path, secrets=False) != cfg:
        raise ConfigError(f"internal error: the config snapshot {path} does not read back")


def reap_group(pgid: int) -> None:
    """End what a worker that exited left in its process group (each worker leads its own):
    a child it spawned (robots.txt parser processes) outlives a worker killed by SIGKILL.
    The group id cannot name another process meanwhile: Linux keeps a pid that is still a
    group id from being reused."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(eq=False)
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    generation: int = 0  # the config generation it runs
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class AdminStore:
    """The parent's read side of the store, for the API and dashboard. A store that is
    unreachable at start (PostgreSQL down; workers spool their records meanwhile) does not
    stop the parent: it is opened at first use instead, and until then each call raises the
    `StoreUnavailable` the API answers with a 503, as it does in one process."""

    def __init__(self, url: str) -> None:
        from crawlguard.store import StoreUnavailable

        self.url = url
        self._store: Any = None
        self._lock = threading.Lock()
        try:
            self._opened()
        except StoreUnavailable as exc:
            log.warning("store unavailable (%s); the admin API answers 503 until it is back", exc)

    def _opened(self) -> Any:
        from crawlguard.store import open_store

        with self._lock:
            if self._store is None:
                self._store = open_store(self.url)
            return self._store

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kw: Any) -> Any:
            return getattr(self._opened(), name)(*args, **kw)

        return call

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


@dataclass
class ParentAdminSource:
    """What the admin server reads in the parent, in place of a Runtime."""

    cfg: Config
    store: Any
    metrics: Any
    tenancy: Any = None  # tenancy.source: store: the TenantRegistry the API changes
    sites: Any = None  # the site budgets every worker shares (redis://): GET /api/sites

    def site_of(self, host: str) -> str:
        from crawlguard.policy.sites import site_key

        return site_key(host, self.cfg.platform.site_key)

    async def site_views(self, limit: int) -> list[Any]:
        return list(await self.sites.busy(time.monotonic(), limit)) if self.sites else []

    async def site_view(self, site: str) -> Any:
        return await self.sites.view(site, time.monotonic()) if self.sites else None


class Supervisor:
    def __init__(
        self,
        cfg: Config,
        workers: int,
        load: Callable[[], Config],
        socks: list[socket.socket],
        private: Path,
    ) -> None:
        self.started_cfg = cfg
        self.load = load
        self.socks = socks
        self.metrics_dir = private / "metrics"
        self.metrics_dir.mkdir(mode=0o700)
        self.snapshot = private / "config.yaml"
        self.workers = [Worker(i + 1) for i in range(workers)]
        self.generation = 0
        self.all_ready = False
        self.exit_code = 0
        self._stopping: asyncio.Event | None = None
        self._lifeline_r, self._lifeline_w = os.pipe()  # never written; EOF = parent gone
        self.source: ParentAdminSource | None = None
        self.admin: Any = None  # the AdminServer, once started
        self._tasks: set[asyncio.Task[None]] = set()  # status watchers (kept referenced)
        self._reloading: asyncio.Task[None] | None = None  # a SIGHUP being prepared
        self._reload_again = False  # a SIGHUP came meanwhile

    @property
    def stopping(self) -> asyncio.Event:
        assert self._stopping is not None
        return self._stopping

    def listen_addrs(self) -> str:
        names = []
        for sock in self.socks:
            host, port = sock.getsockname()[:2]
            names.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return ", ".join(names)

    # -- run and stop ------------------------------------------------------------------------

    async def run(self) -> int:
        from crawlguard.admin import AdminServer
        from crawlguard.admin.metrics import AggregatedMetrics
        from crawlguard.cli.run import pid_path
        from crawlguard.store import StoreError

        self._stopping = asyncio.Event()
        cfg = self.started_cfg
        write_snapshot(cfg, self.snapshot)
        try:
            store = AdminStore(cfg.store.url)
        except StoreError as exc:  # as a Runtime's store: a config problem
            raise ConfigError(str(exc)) from exc
        self.source = ParentAdminSource(cfg, store, AggregatedMetrics(self.metrics_dir))
        from crawlguard.state.sites_open import open_sites

        self.source.sites = open_sites(cfg.state.url, cfg.state.on_error)  # redis:// (checked)
        if cfg.tenancy.source == "store":  # each worker syncs its own tenants from it
            from crawlguard.tenancy import TenancyError, open_registry

            try:
                self.source.tenancy = open_registry(cfg)
            except TenancyError as exc:
                raise ConfigError(f"tenancy.source: store: {exc.message}") from None
        admin = AdminServer(self.source, health=self.health, robots_unavailable=ROBOTS_UNAVAILABLE)
        self.admin = admin
        loop = asyncio.get_running_loop()
        try:
            try:
                await admin.start()
            except OSError as exc:  # taken since bind_problem looked
                raise ConfigError(
                    f"cannot listen on {cfg.admin.listen_host}:{cfg.admin.port} for the admin "
                    f"server ({exc.strerror or exc}); choose another with --admin-port / "
                    "admin.port"
                ) from None
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            pid = pid_path(cfg)
            pid.write_text(f"{os.getpid()}\n")
            keepers = [loop.create_task(self._keep(w)) for w in self.workers]
            await self.stopping.wait()
            await self._stop_workers(keepers)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await admin.stop()
            await self.source.sites.close()
            await asyncio.to_thread(store.close)
            if self.source.tenancy is not None:
                await asyncio.to_thread(self.source.tenancy.close)
            with contextlib.suppress(OSError):
                if pid_path(cfg).read_text().strip() == str(os.getpid()):
                    pid_path(cfg).unlink()
            os.close(self._lifeline_r)
            os.close(self._lifeline_w)
        log.info("crawlguard stopped")
        return self.exit_code

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping %d worker(s)", sum(w.alive for w in self.workers))
            self.stopping.set()

    async def _stop_workers(self, keepers: list[asyncio.Task[None]]) -> None:
        for w in self.workers:
            self._signal(w, signal.SIGTERM)
        _, pending = await asyncio.wait(keepers, timeout=STOP_GRACE_SECONDS)
        if pending:
            for w in self.workers:
                if w.alive:
                    log.error(
                        "worker %d (pid %d) did not stop within %g s; killing it",
                        w.index,
                        w.proc.pid if w.proc else -1,
                        STOP_GRACE_SECONDS,
                    )
                    self._signal(w, signal.SIGKILL)
            await asyncio.wait(pending)

    def _signal(self, w: Worker, sig: signal.Signals) -> None:
        if w.alive and w.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(sig)

    def health(self) -> str | None:
        """None when every worker is ready (/healthz 200), else why not."""
        if self.stopping.is_set():
            return "stopping"
        ready = sum(w.ready for w in self.workers)
        if ready == len(self.workers):
            return None
        return f"{ready} of {len(self.workers)} workers ready"

    # -- one worker's life -------------------------------------------------------------------

    async def _keep(self, w: Worker) -> None:
        """Run worker `w`, and again whenever it dies, until the parent stops."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            try:
                proc = await self._spawn(w)
            except OSError as exc:
                log.error("cannot start worker %d: %s", w.index, exc)
                code = 1
                pid = None
            else:
                if self.stopping.is_set():  # stop() came while it was being started
                    self._signal(w, signal.SIGTERM)
                code = await proc.wait()
                pid = proc.pid
                w.ready = False
                reap_group(pid)
                assert self.source is not None
                self.source.metrics.process_dead(pid)
            if self.stopping.is_set():
                if code not in (0, -signal.SIGTERM):
                    log.warning("worker %d (pid %s) %s", w.index, pid, describe_exit(code))
                return
            if not self.all_ready:  # while starting: the config or the environment is wrong
                log.error(
                    "worker %d (pid %s) %s while starting (its message is above); stopping",
                    w.index,
                    pid,
                    describe_exit(code),
                )
                self.exit_code = 2 if code == 2 else 1
                self.stop()
                return
            ran = loop.time() - w.started
            if ran >= STABLE_SECONDS:
                w.backoff = BACKOFF_FIRST
            delay, w.backoff = w.backoff, min(w.backoff * 2, BACKOFF_MAX)
            log.warning(
                "worker %d (pid %s) %s after %.1f s; restarting it in %g s",
                w.index,
                pid,
                describe_exit(code),
                ran,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            w.restarts += 1

    async def _spawn(self, w: Worker) -> asyncio.subprocess.Process:
        from crawlguard.admin.metrics import MULTIPROC_ENV

        loop = asyncio.get_running_loop()
        status_r, status_w = os.pipe()
        fds = [s.fileno() for s in self.socks]
        cmd = [
            sys.executable, "-m", "crawlguard.cli.workers",
            "--config", str(self.snapshot), "--index", str(w.index),
            "--listen-fds", ",".join(map(str, fds)),
            "--status-fd", str(status_w), "--lifeline-fd", str(self._lifeline_r),
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(*fds, status_w, self._lifeline_r),
                process_group=0,  # not in the terminal's foreground group: the parent stops it
                env={**os.environ, MULTIPROC_ENV: str(self.metrics_dir)},
            )
        except OSError:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        w.proc, w.ready, w.generation, w.started = proc, False, self.generation, loop.time()
        task = loop.create_task(self._watch_status(w, proc, status_r))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return proc

    async def _watch_status(
        self, w: Worker, proc: asyncio.subprocess.Process, status_r: int
    ) -> None:
        """The worker writes "ready" once it accepts on the shared socket; EOF: it is gone."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(status_r, "rb", buffering=0)
        )
        try:
            line = await reader.readline()
        finally:
            transport.close()
        if line.strip() == b"ready" and proc.returncode is None and w.proc is proc:
            self._ready(w)

    def _ready(self, w: Worker) -> None:
        assert w.proc is not None and self.source is not None
        w.ready = True
        if w.restarts:
            log.info("worker %d restarted (pid %d)", w.index, w.proc.pid)
        if w.generation < self.generation:  # a reload came while it was starting
            self._signal(w, signal.SIGHUP)
            w.generation = self.generation
        if not self.all_ready and all(x.ready for x in self.workers):
            self.all_ready = True
            cfg = self.source.cfg
            log.info(
                "crawlguard ready: proxy on %s, admin on %s:%d, %d workers (pids %s), %d tenant(s)",
                self.listen_addrs(),
                cfg.admin.listen_host,
                self.admin.port,
                len(self.workers),
                " ".join(str(x.proc.pid) for x in self.workers if x.proc is not None),
                len(cfg.tenants),
            )

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: check the new config here, then have every worker apply it. Reading and
        checking the file and writing the snapshot run in a thread: at 100,000 tenants they
        take seconds, and this loop also serves the admin API."""
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True  # one more pass after this one: the newest file wins
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            cfg = await asyncio.to_thread(self._prepare_reload)
            if cfg is not None:
                self._apply_reload(cfg)
            if not self._reload_again:
                return

    def _prepare_reload(self) -> Config | None:
        """The new config with the sections that need a restart kept at their running
        values, written to the workers' snapshot; None (logged) if it is refused."""
        try:
            cfg = self.load()
        except ConfigError as exc:
            log.error("reload refused, running config kept: %s", exc)
            return None
        running = self.started_cfg
        kept = [name for name in RESTART_SECTIONS if getattr(cfg, name) != getattr(running, name)]
        listen = {"listen_host": running.admin.listen_host, "port": running.admin.port}
        if (cfg.admin.listen_host, cfg.admin.port) == tuple(listen.values()):
            kept = [name for name in kept if name != "admin"]  # only the token changed
        if cfg.tenancy.source != running.tenancy.source:  # where tenants come from
            kept.append("tenancy")
        update: dict[str, Any] = {name: getattr(running, name) for name in kept}
        update["admin"] = cfg.admin.model_copy(update=listen)
        cfg = cfg.model_copy(update=update)
        try:
            write_snapshot(cfg, self.snapshot)
        except (OSError, ConfigError) as exc:
            log.error("reload refused, running config kept: %s", exc)
            return None
        if kept:
            log.info("reload: needs a restart, running values kept: %s", ", ".join(kept))
        return cfg

    def _apply_reload(self, cfg: Config) -> None:
        """On the loop: the admin API reads `cfg` from now on, and every ready worker loads
        the snapshot."""
        assert self.source is not None
        self.source.cfg = cfg
        self.generation += 1
        sent = 0
        for w in self.workers:
            if w.ready:  # one still starting gets it once ready (see _ready)
                self._signal(w, signal.SIGHUP)
                w.generation = self.generation
                sent += 1
        log.info("config reloaded: %d tenant(s), sent to %d worker(s)", len(cfg.tenants), sent)


# -- a worker --------------------------------------------------------------------------------


class WorkerAddon:
    """Last addon of a worker: says "ready" to the parent once the proxy accepts, and keeps
    the set_function gauges in the multiprocess files."""

    def __init__(self, guard: Any, index: int, status_fd: int) -> None:
        self.guard = guard
        self.index = index
        self.status_fd: int | None = status_fd
        self._publisher: asyncio.Task[None] | None = None

    async def running(self) -> None:
        from crawlguard.proxy.master import listen_addrs

        self._publisher = asyncio.get_running_loop().create_task(self._publish())
        addrs = ", ".join(f"{a[0]}:{a[1]}" for a in listen_addrs()) or "?"
        log.info("worker %d (pid %d) accepting on %s", self.index, os.getpid(), addrs)
        if self.status_fd is not None:
            with contextlib.suppress(OSError):  # the parent left: the lifeline stops us
                os.write(self.status_fd, b"ready\n")
            os.close(self.status_fd)
            self.status_fd = None

    async def done(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            self._publisher = None

    async def _publish(self) -> None:
        from crawlguard.admin.metrics import FUNCTION_GAUGE_SECONDS

        while True:
            try:
                self.guard.metrics.publish_function_gauges()
            except Exception:
                log.exception("could not publish the function gauges")
            await asyncio.sleep(FUNCTION_GAUGE_SECONDS)


def setup_worker_logging(index: int) -> None:
    from crawlguard.cli.run import setup_logging

    setup_logging(name=f"%(name)s[worker {index}]")


async def serve_worker(cfg: Config, args: argparse.Namespace) -> int:
    from crawlguard.cli.run import graceful_stop, quiet_cancellations, reload_config
    from crawlguard.proxy.master import lean_master, open_runtime

    master, guard = lean_master(cfg, serve_admin=False, runtime=await open_runtime(cfg))
    master.addons.add(WorkerAddon(guard, args.index, args.status_fd))
    loop = asyncio.get_running_loop()
    stop = graceful_stop(loop, master)  # held requests answered (503 + Retry-After) first
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, reload_config, guard, lambda: load_config(args.config))

    lifeline = args.lifeline_fd
    os.set_blocking(lifeline, False)

    def parent_gone() -> None:
        try:
            if os.read(lifeline, 1):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(lifeline)
        log.warning("worker %d: the parent process is gone; stopping", args.index)
        master.shutdown()

    loop.add_reader(lifeline, parent_gone)
    try:
        await master.run()
    finally:
        loop.set_exception_handler(quiet_cancellations)
    log.info("worker %d stopped", args.index)
    return 0


def worker_main(argv: list[str] | None = None) -> int:
    # Until its handler is installed, a SIGHUP forwarded by the parent must not end us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="crawlguard worker", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument(
        "--listen-fds", required=True, type=lambda v: [int(x) for x in v.split(",")]
    )
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    args = parser.parse_args(argv)
    setup_worker_logging(args.index)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"crawlguard: worker {args.index}: {exc}", file=sys.stderr)
        return 2
    from crawlguard.proxy.workers import InheritedSocket, listen_on

    listen_on([InheritedSocket(fileno=fd) for fd in args.listen_fds])
    try:
        return asyncio.run(serve_worker(cfg, args))
    except ConfigError as exc:
        print(f"crawlguard: worker {args.index}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(worker_main())
