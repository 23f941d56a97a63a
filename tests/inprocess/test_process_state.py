"""Process-wide state does not leak from one test to the next (tests/processstate.py, applied
to every test by the `process_state` fixture): the entry points' `compat.install()` patches
mitmproxy's HTTP/1 server and running the addon sets the head caps, and the next test finds
neither."""

from __future__ import annotations

from pathlib import Path

from harness import base_config
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons
from processstate import Snapshot

from crawlguard.config import parse_config
from crawlguard.proxy import compat
from crawlguard.proxy.addon import CrawlGuardAddon, apply_mitmproxy_options
from crawlguard.runtime import Runtime

AT_COLLECTION = Snapshot.take()  # before any test of this session ran the addon


def changed_since_collection() -> list[str]:
    now = Snapshot.take()
    return [
        f"{getattr(b.obj, '__qualname__', None) or b.obj.__name__}.{key}"
        for a, b in zip(AT_COLLECTION.owners, now.owners, strict=True)
        for key in set(a.attrs) | set(b.attrs)
        if a.attrs.get(key) is not b.attrs.get(key)
    ]


async def test_running_the_addon_patches_mitmproxy_and_sets_the_head_caps(tmp_path: Path) -> None:
    compat.install()  # as `crawlguard run` and the mitmdump script do before the addon runs
    caps = {"max_request_line": 2048, "max_request_head": 8192}
    cfg = parse_config(base_config(tmp_path, proxy=caps))
    guard = Runtime(cfg)
    addon = CrawlGuardAddon(guard, serve_admin=False)  # a worker's addon: no admin port
    with taddons.context(proxyserver.Proxyserver()) as tctx:
        apply_mitmproxy_options(tctx.options, cfg, listen=False)
        tctx.master.addons.add(addon)
        try:
            await addon.running()  # the hook that sets the running head caps
            assert (compat.HeadLimits.line, compat.HeadLimits.head) == (2048, 8192)
            assert "Http1Server.read_headers" in changed_since_collection()
        finally:
            await guard.close()


def test_the_next_test_finds_mitmproxy_and_the_caps_as_they_were() -> None:
    assert changed_since_collection() == []
    assert (compat.HeadLimits.line, compat.HeadLimits.head) == (16 * 1024, 64 * 1024)
