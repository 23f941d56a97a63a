"""`crawlguard run` (the proxy in-process on the lean master of crawlguard.proxy.master) and
`crawlguard ca`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crawlguard.config import Config, ConfigError, load_config, with_overrides
from crawlguard.logs import setup_logging

log = logging.getLogger("crawlguard")


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="start the proxy and the admin server")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--listen-host", help="proxy listen address (overrides proxy.listen_host)")
    run.add_argument("--listen-port", type=int, help="proxy port (overrides proxy.listen_port)")
    run.add_argument("--admin-port", type=int, help="admin port (overrides admin.port)")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="proxy processes sharing one port (N > 1 needs a shared state.url: redis://)",
    )
    run.set_defaults(func=cmd_run)

    reload = sub.add_parser(
        "reload", help="make a running proxy re-read its config (same as SIGHUP)"
    )
    reload.add_argument("--config", required=True, help="the YAML config the proxy runs with")
    reload.set_defaults(func=cmd_reload)

    ca = sub.add_parser("ca", help="show (or export) the CA certificate crawlers must trust")
    ca.add_argument("--config", help="YAML config (for proxy.confdir); default var/mitmproxy")
    ca.add_argument("--export", metavar="PATH", help="write the CA certificate as PEM to PATH")
    ca.set_defaults(func=cmd_ca)


def load_with_flags(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    try:
        return with_overrides(
            cfg,
            **{
                "proxy.listen_host": args.listen_host,
                "proxy.listen_port": args.listen_port,
                "admin.port": args.admin_port,
            },
        )
    except ValueError as exc:
        raise ConfigError(f"command-line flags: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_with_flags(args)
    except ConfigError as exc:
        print(f"crawlguard: {exc}", file=sys.stderr)
        return 2
    if args.workers != 1:
        from crawlguard.cli.workers import run_workers

        return run_workers(cfg, args.workers, lambda: load_with_flags(args))
    for what, host, port, fix in (
        (
            "proxy",
            cfg.proxy.listen_host,
            cfg.proxy.listen_port,
            "--listen-port / proxy.listen_port",
        ),
        ("admin", cfg.admin.listen_host, cfg.admin.port, "--admin-port / admin.port"),
    ):
        if (problem := bind_problem(host, port)) is not None:
            print(f"crawlguard: cannot listen on {host}:{port} for the {what} server "
                  f"({problem}); choose another with {fix}", file=sys.stderr)  # fmt: skip
            return 2
    setup_logging()
    try:
        return asyncio.run(serve(cfg, lambda: load_with_flags(args)))
    except ConfigError as exc:
        print(f"crawlguard: {exc}", file=sys.stderr)
        return 2


def bind_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on (busy, bad address), checked before mitmproxy and
    aiohttp try and answer in their own words; None when it can (or port 0: any free one)."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"bad listen address: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def pid_path(cfg: Config) -> Path:
    """Where a running proxy leaves its pid for `crawlguard reload` (beside its CA)."""
    return Path(cfg.proxy.confdir).expanduser() / "crawlguard.pid"


SLOW_CALLBACK_ENV = "CRAWLGUARD_SLOW_CALLBACK"


def watch_slow_callbacks(loop: asyncio.AbstractEventLoop) -> None:
    """`CRAWLGUARD_SLOW_CALLBACK=0.05`: asyncio's debug mode, logging (logger `asyncio`,
    WARNING) every callback that holds the event loop longer than that many seconds. For
    operators chasing a stall, and for the test that nothing blocks the loop under load."""
    value = os.environ.get(SLOW_CALLBACK_ENV)
    if not value:
        return
    loop.set_debug(True)
    loop.slow_callback_duration = float(value)


_reloads: set[asyncio.Task[None]] = set()


def reload_config(guard: Any, load: Callable[[], Config]) -> None:
    """SIGHUP: re-read the config off the event loop (YAML parsing and validation take a
    while for a big file), then apply it; a bad one is logged and the running one kept."""
    task = asyncio.get_running_loop().create_task(_reload(guard, load))
    _reloads.add(task)  # the loop keeps only a weak reference to a task
    task.add_done_callback(_reloads.discard)


async def _reload(guard: Any, load: Callable[[], Config]) -> None:
    try:  # read and the tenant set built in a thread, applied on the loop
        kept = await guard.reload_async(load)
    except ConfigError as exc:
        log.error("reload refused, running config kept: %s", exc)
        return
    log.info(
        "config reloaded: %d tenant(s)%s",
        len(guard.tenants),
        f"; needs a restart, running values kept: {', '.join(kept)}" if kept else "",
    )


async def serve(
    cfg: Config,
    load: Callable[[], Config] | None = None,
    *,
    setup: Callable[[Any, Any], None] | None = None,
    pid_file: bool = True,
) -> int:
    """Run the proxy until SIGTERM/SIGINT. `setup(master, guard)` runs before the master starts
    (`crawlguard dev` adds its reporter there); `pid_file=False` leaves no pid file for
    `crawlguard reload` (dev mode, which shares the default confdir with `run`)."""
    from crawlguard.proxy.master import lean_master, open_runtime

    loop = asyncio.get_running_loop()
    watch_slow_callbacks(loop)
    master, guard = lean_master(cfg, runtime=await open_runtime(cfg))
    if setup is not None:
        setup(master, guard)
    stop = graceful_stop(loop, master)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if load is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_config, guard, load)
    pid = pid_path(cfg) if pid_file else None
    if pid is not None:
        pid.write_text(f"{os.getpid()}\n")
    # Everything built so far (modules, config, tenants' compiled policies) lives as long as the
    # process: out of the collector's sight, a full collection while serving scans only what
    # requests made, instead of pausing the loop ~50 ms to walk the startup heap again.
    gc.freeze()
    try:
        await master.run()
    finally:
        with contextlib.suppress(OSError):
            if pid is not None and pid.read_text().strip() == str(os.getpid()):
                pid.unlink()
        loop.set_exception_handler(quiet_cancellations)
    log.info("crawlguard stopped")
    return 0


def graceful_stop(loop: asyncio.AbstractEventLoop, master: Any) -> Callable[[], None]:
    """The SIGTERM/SIGINT handler of a proxy process (`run`, and each `--workers` worker):
    the first signal answers held requests, then closes the listener; a second stops now."""
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if stopping:
            master.shutdown()
            return
        stopping.append(loop.create_task(_stop(master)))

    return stop


async def _stop(master: Any) -> None:
    addon = master.addons.get("crawlguardaddon")
    try:
        if addon is not None:
            await addon.stop_holding()
    finally:
        master.shutdown()


def quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """At exit asyncio.run cancels the connections still open; asyncio's stream callback
    (Python 3.12.1) then reports each cancelled connection task as an error with a traceback.
    A cancellation at exit is the stop asked for, not an error; anything else is reported."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"crawlguard: {exc}", file=sys.stderr)
        return 2
    path = pid_path(cfg)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(
            f"crawlguard: no running proxy for this config ({path}: {exc}); "
            "start it with `crawlguard run --config ...`",
            file=sys.stderr,
        )
        return 1
    print(f"sent SIGHUP to crawlguard (pid {pid}); its log says whether the config was applied")
    return 0


def ca_path(confdir: str) -> Path:
    from crawlguard.proxy.ca import cert_file

    return cert_file(confdir)


def cmd_ca(args: argparse.Namespace) -> int:
    from crawlguard.config import ProxySection
    from crawlguard.proxy import ca

    confdir = ProxySection().confdir
    if args.config:
        try:
            confdir = load_config(args.config, secrets=False).proxy.confdir
        except ConfigError as exc:
            print(f"crawlguard: {exc}", file=sys.stderr)
            return 2
    path = ca_path(confdir)
    try:
        created = ca.ensure_ca(confdir)  # the one a proxy on this confdir will use
        cert = ca.load_cert(confdir)
        pem = path.read_bytes()
    except (OSError, ValueError) as exc:
        print(f"crawlguard: cannot read or create the CA in {confdir}: {exc}; to start over, "
              f"delete {Path(confdir).expanduser()}/mitmproxy-ca* and run this again",
              file=sys.stderr)  # fmt: skip
        return 2
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if x509.load_pem_x509_certificate(pem) != cert:
        print(f"crawlguard: {path} is not the certificate of the CA in "
              f"{ca.key_file(confdir)}; to start over, delete "
              f"{Path(confdir).expanduser()}/mitmproxy-ca* and run this again",
              file=sys.stderr)  # fmt: skip
        return 2
    fingerprint = hashlib.sha256(cert.public_bytes(encoding=Encoding.DER)).hexdigest()
    print(f"CA certificate: {path.resolve()}")
    print(f"Subject: {ca.subject(cert)}{' (created now)' if created else ''}")
    print(f"SHA-256 fingerprint: {':'.join(fingerprint[i : i + 2] for i in range(0, 64, 2))}")
    if ca.is_mitmproxy_default(cert):
        print("Note: this is mitmproxy's default CA, kept because crawlers may trust it. To "
              f"replace it with crawlguard's own, stop the proxy, delete "
              f"{Path(confdir).expanduser().resolve()}/mitmproxy-ca* and run `crawlguard ca` "
              "again (crawlers must then trust the new certificate).")  # fmt: skip
    if args.export:
        shutil.copyfile(path, args.export)
        print(f"exported to {args.export}")
    return 0
