"""crawlguard.proxy.hook_dispatch: the lean master's hook dispatch calls what mitmproxy's would."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, http, options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

from crawlguard.proxy.hook_dispatch import HookDispatch, hook_args, install


class Recorder:
    def __init__(self, name: str, calls: list[tuple[str, str]], addons: list[Any] | None = None):
        self.name = name
        self.calls = calls
        if addons is not None:
            self.addons = addons

    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "request"))


class AsyncRecorder(Recorder):
    async def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "async request"))


class Failing(Recorder):
    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "request"))
        raise ValueError("addon bug")


class Halting(Recorder):
    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "request"))
        raise exceptions.AddonHalt


class Updating(Recorder):
    def update(self, flows: list[http.HTTPFlow]) -> None:
        self.calls.append((self.name, f"update {len(flows)}"))


def dispatch() -> HookDispatch:
    return install(Master(options.Options()))


async def both(addons: list[Any], event: hooks.Hook, lifecycle: bool = False) -> tuple[Any, Any]:
    """The calls mitmproxy's AddonManager makes, and the calls HookDispatch makes."""
    out = []
    for manager_type in (AddonManager, HookDispatch):
        calls: list[tuple[str, str]] = []
        master = Master(options.Options())
        if manager_type is HookDispatch:
            install(master)
        for addon in addons:
            copy = type(addon)(addon.name, calls)
            if hasattr(addon, "addons"):
                copy.addons = [type(a)(a.name, calls) for a in addon.addons]
            master.addons.add(copy)
        if lifecycle:
            await master.addons.handle_lifecycle(event)
        else:
            await master.addons.trigger_event(event)
        out.append(calls)
    return out[0], out[1]


async def test_same_calls_as_mitmproxy_in_chain_order_sub_addons_after_their_parent() -> None:
    none: list[tuple[str, str]] = []
    addons = [
        Recorder("a", none),
        AsyncRecorder("b", none, [Recorder("b1", none)]),
        Recorder("c", none),
    ]
    ours, theirs = await both(addons, HttpRequestHook(tflow.tflow()))
    expected = [("a", "request"), ("b", "async request"), ("b1", "request"), ("c", "request")]
    assert ours == theirs == expected


async def test_an_addon_error_is_logged_and_the_next_addon_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    none: list[tuple[str, str]] = []
    with caplog.at_level(logging.ERROR):
        ours, theirs = await both(
            [Failing("a", none), Recorder("b", none)], HttpRequestHook(tflow.tflow())
        )
    assert ours == theirs == [("a", "request"), ("b", "request")]
    assert caplog.text.count("Addon error: addon bug") == 2


async def test_addon_halt_stops_the_event() -> None:
    none: list[tuple[str, str]] = []
    ours, theirs = await both(
        [Halting("a", none), Recorder("b", none)], HttpRequestHook(tflow.tflow())
    )
    assert ours == theirs == [("a", "request")]


async def test_update_follows_a_flow_hook_only_for_addons_that_handle_it() -> None:
    none: list[tuple[str, str]] = []
    ours, theirs = await both(
        [Recorder("a", none), Updating("u", none)], HttpRequestHook(tflow.tflow()), lifecycle=True
    )
    assert ours == theirs == [("a", "request"), ("u", "request"), ("u", "update 1")]


async def test_the_handler_table_follows_add_and_remove() -> None:
    manager = dispatch()
    calls: list[tuple[str, str]] = []
    first = Recorder("first", calls)
    manager.add(first)
    flow = tflow.tflow()
    await manager.trigger_event(HttpRequestHook(flow))
    manager.add(Recorder("second", calls))
    await manager.trigger_event(HttpRequestHook(flow))
    manager.remove(first)
    await manager.trigger_event(HttpRequestHook(flow))
    assert calls == [
        ("first", "request"),
        ("first", "request"),
        ("second", "request"),
        ("second", "request"),
    ]
    assert manager.handlers("response") == ()  # no addon handles it: nothing is called
    await manager.trigger_event(HttpResponseHook(flow))


def test_hook_args_are_the_hook_fields() -> None:
    flow = tflow.tflow()
    assert hook_args(HttpRequestHook(flow)) == HttpRequestHook(flow).args() == [flow]
    assert hook_args(hooks.UpdateHook([flow])) == [[flow]]


def test_the_lean_master_dispatches_through_hook_dispatch(tmp_path: Any) -> None:
    """`crawlguard run` and `--workers` build their master here; every end-to-end test of
    the proxy runs through it."""
    import asyncio

    from harness import base_config

    from crawlguard.config import parse_config
    from crawlguard.proxy.master import lean_master

    async def build() -> None:
        cfg = parse_config(base_config(tmp_path))
        master, guard = lean_master(cfg)
        try:
            assert isinstance(master.addons, HookDispatch)
            assert [type(a).__name__ for a in master.addons.chain][-1] == "CrawlGuardAddon"
            handlers = master.addons.handlers("requestheaders")
            assert any(getattr(h, "__self__", None) is master.addons.chain[-1] for h in handlers)
            request = http.Request.make("GET", "http://example.com/")
            assert request.path == "/"
        finally:
            await guard.close()

    asyncio.run(build())
