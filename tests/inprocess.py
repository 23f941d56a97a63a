"""The addon in-process: a real Runtime and CrawlGuardAddon inside mitmproxy's test context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import base_config
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons

from crawlguard.config import parse_config
from crawlguard.proxy.addon import CrawlGuardAddon, apply_mitmproxy_options
from crawlguard.runtime import Runtime


@dataclass
class Env:
    guard: Runtime
    addon: CrawlGuardAddon
    tctx: taddons.context


@asynccontextmanager
async def running(tmp_path: Path, **sections: Any) -> AsyncIterator[Env]:
    cfg = parse_config(base_config(tmp_path, **sections))
    guard = Runtime(cfg)
    addon = CrawlGuardAddon(guard)
    # Proxyserver declares connection_strategy; the options are applied as `crawlguard run` does.
    with taddons.context(proxyserver.Proxyserver()) as tctx:
        apply_mitmproxy_options(tctx.options, cfg, listen=False)
        tctx.master.addons.add(addon)
        guard.start()
        try:
            yield Env(guard, addon, tctx)
        finally:
            await guard.close()
