"""The lean master `crawlguard run`, `crawlguard dev` and each `--workers N` worker run.

A mitmdump master walks ~35 stock addons on every hook; this one has only the four the proxy
needs (proxy server, next-layer, TLS config, error check) and crawlguard's two, dispatched by
`HookDispatch`. It is the only place crawlguard's own process installs the patches of
`compat` (mitmdump's entry point, `addons/crawlguard_addon.py`, installs the HTTP/1 ones).
"""

from __future__ import annotations

from typing import Any

from crawlguard.config import Config, ConfigError


def build_runtime(cfg: Config) -> Any:
    """The Runtime of `cfg`; it opens the store (a SQLite file, a PostgreSQL connection) and
    starts its writer thread: blocking work, so `open_runtime` runs it off the event loop."""
    from crawlguard.runtime import Runtime

    try:
        return Runtime(cfg)
    except Exception as exc:  # store or robots setup: report as a config problem
        raise ConfigError(str(exc)) from exc


async def open_runtime(cfg: Config) -> Any:
    """`build_runtime` in a worker thread: nothing that connects blocks the loop."""
    import asyncio

    return await asyncio.to_thread(build_runtime, cfg)


def lean_master(
    cfg: Config, *, serve_admin: bool = True, runtime: Any | None = None
) -> tuple[Any, Any]:
    """A master with only the addons the proxy needs, and the Runtime it runs (`runtime`, built
    with `open_runtime`; else built here, on the loop). `serve_admin=False`: a `--workers N`
    worker (no admin port). Call in a running loop."""
    from mitmproxy import options
    from mitmproxy.addons import errorcheck, next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

    from crawlguard.proxy import compat, hook_dispatch
    from crawlguard.proxy.addon import CrawlGuardAddon, apply_mitmproxy_options
    from crawlguard.proxy.ca import ensure_ca
    from crawlguard.proxy.client_limits import ClientLimitsAddon

    opts = options.Options()
    try:  # crawlguard's CA, before the confdir option reaches TlsConfig (which would create
        # mitmproxy's own); an existing CA is kept
        ensure_ca(cfg.proxy.confdir, opts.key_size)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the CA in proxy.confdir {cfg.proxy.confdir}: {exc}"
        ) from None
    compat.install()
    compat.install_lean()
    master = Master(opts)
    hook_dispatch.install(master)
    guard = runtime if runtime is not None else build_runtime(cfg)
    master.addons.add(
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(),
    )
    # Before our addon (added last, so its next_layer runs after mitmproxy's): its configure
    # keeps the options crawlguard's guarantees rest on.
    apply_mitmproxy_options(opts, cfg, listen=True)
    master.addons.add(
        ClientLimitsAddon(lambda: guard.cfg.proxy, lambda: guard.metrics),
        CrawlGuardAddon(guard, serve_admin=serve_admin),
    )
    return master, guard


def listen_addrs() -> list[tuple[Any, ...]]:
    """The addresses the running master's proxy server listens on (for a ready message)."""
    from mitmproxy import ctx

    proxy = ctx.master.addons.get("proxyserver")
    return list(proxy.listen_addrs()) if proxy is not None else []


def format_address(address: tuple[Any, ...] | None) -> str:
    """host:port as mitmproxy writes it ([v6]:port)."""
    from mitmproxy.utils import human

    return human.format_address(address)
