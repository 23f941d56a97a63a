"""Hook dispatch cost per request: mitmproxy's AddonManager against crawlguard's HookDispatch.

    .venv/bin/python benchmarks/hook_dispatch.py [--number 20000]

Builds two masters with the lean master's addon chain (proxyserver, next_layer, tlsconfig,
errorcheck, ClientLimitsAddon, CrawlGuardAddon) as stand-ins that define the same hook
methods as the real addons, each a no-op, so only the dispatch is timed. One "request" is the
hooks a plain HTTP keep-alive request fires: requestheaders, request, responseheaders and
response through `handle_lifecycle` (each followed by `update`, as mitmproxy does). The
handlers never suspend, so each dispatch runs to completion with `coro.send(None)`, no event
loop. Prints CPU µs per request (process time: other processes on the machine count less;
median of 7 batches, and the best).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import timeit
from collections.abc import Coroutine
from typing import Any


def stand_ins() -> list[Any]:
    """No-op addons with the hooks (and names) of the lean master's real addons."""
    from mitmproxy import hooks
    from mitmproxy.addons import errorcheck, next_layer, proxyserver, tlsconfig

    from crawlguard.proxy.addon import CrawlGuardAddon
    from crawlguard.proxy.client_limits import ClientLimitsAddon

    def noop(self: Any, *args: Any) -> None:
        return None

    out = []
    for cls in (
        proxyserver.Proxyserver,
        next_layer.NextLayer,
        tlsconfig.TlsConfig,
        errorcheck.ErrorCheck,
        ClientLimitsAddon,
        CrawlGuardAddon,
    ):
        names = {name: noop for name in hooks.all_hooks if callable(getattr(cls, name, None))}
        names.update(load=noop, configure=noop, running=noop, done=noop)
        out.append(type(cls.__name__, (), names)())
    return out


def run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("a stand-in handler suspended")


async def _build(manager: str) -> Any:
    from mitmproxy import options
    from mitmproxy.master import Master

    from crawlguard.proxy import hook_dispatch

    master = Master(options.Options())
    if manager == "HookDispatch":
        hook_dispatch.install(master)
    master.addons.add(*stand_ins())
    return master


def main() -> int:
    from mitmproxy.proxy.layers.http import (
        HttpRequestHeadersHook,
        HttpRequestHook,
        HttpResponseHeadersHook,
        HttpResponseHook,
    )
    from mitmproxy.test import tflow

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="requests per batch")
    args = parser.parse_args()
    flow = tflow.tflow(resp=True)
    events = [
        HttpRequestHeadersHook(flow),
        HttpRequestHook(flow),
        HttpResponseHeadersHook(flow),
        HttpResponseHook(flow),
    ]
    loop = asyncio.new_event_loop()  # Master wants a running loop only to be built
    results = {}
    for manager in ("AddonManager", "HookDispatch"):
        master = loop.run_until_complete(_build(manager))
        dispatch = master.addons

        def one(dispatch: Any = dispatch) -> None:
            for event in events:
                run(dispatch.handle_lifecycle(event))

        times = timeit.repeat(one, number=args.number, repeat=7, timer=time.process_time)
        per = sorted(1e6 * t / args.number for t in times)
        results[manager] = (statistics.median(per), per[0])
    loop.close()
    for manager, (med, best) in results.items():
        print(f"{manager:>13}: {med:6.2f} µs per request (best {best:.2f})")
    ratio = results["HookDispatch"][0] / results["AddonManager"][0]
    print(f"HookDispatch / AddonManager: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
