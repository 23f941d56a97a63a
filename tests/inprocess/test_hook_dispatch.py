"""crawlguard.proxy.hook_dispatch: the lean master's hook dispatch calls what mitmproxy's would.

Every behaviour is checked the same way: one scenario (addons, events, changes between them)
runs once on mitmproxy's own `AddonManager` and once on `HookDispatch`, and the calls made and
the log records written must be the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, http, options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

from crawlguard.proxy.hook_dispatch import HookDispatch, hook_args, install

Calls = list[tuple[str, str]]


class Recorder:
    def __init__(self, name: str, calls: Calls, addons: list[Any] | None = None):
        self.name = name
        self.calls = calls
        if addons is not None:
            self.addons = addons

    def __str__(self) -> str:  # mitmproxy names the addon in some errors: the same in both runs
        return f"<{self.name}>"

    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "request"))


class AsyncRecorder(Recorder):
    async def request(self, flow: http.HTTPFlow) -> None:
        await asyncio.sleep(0)
        self.calls.append((self.name, "async request"))


class Failing(Recorder):
    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "request"))
        raise ValueError(f"bug in {self.name}")


class Halting(Recorder):
    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "request"))
        raise exceptions.AddonHalt


class Updating(Recorder):
    def update(self, flows: list[http.HTTPFlow]) -> None:
        self.calls.append((self.name, f"update {len(flows)}"))


class NotCallable(Recorder):
    request = "not a handler"  # type: ignore[assignment]


class Bare:
    """An addon with no hooks at first."""

    def __init__(self, name: str, calls: Calls):
        self.name = name
        self.calls = calls


Scenario = Callable[[Master, Calls], Awaitable[None]]


async def both(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> tuple[Any, Any]:
    """(calls, log records) of `scenario` run on mitmproxy's AddonManager, then on
    HookDispatch; each run gets its own master."""
    out = []
    for manager_type in (AddonManager, HookDispatch):
        calls: Calls = []
        master = Master(options.Options())
        if manager_type is HookDispatch:
            install(master)
        assert type(master.addons) is manager_type
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            await scenario(master, calls)
        logged = [(r.levelname, r.name, r.getMessage()) for r in caplog.records]
        out.append((calls, logged))
    return out[0], out[1]


async def same(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> tuple[Calls, Any]:
    theirs, ours = await both(scenario, caplog)
    assert ours == theirs
    return theirs


def request(master: Master) -> Awaitable[None]:
    return master.addons.trigger_event(HttpRequestHook(tflow.tflow()))


# -- the five cases where the table-driven HookDispatch differed (issue 19) -----------------------


async def test_a_hook_name_bound_to_a_non_callable_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(
            Recorder("a", calls, [NotCallable("a1", calls), Recorder("a2", calls)]),
            Recorder("b", calls),
        )
        await request(master)

    calls, logged = await same(scenario, caplog)
    assert calls == [("a", "request"), ("b", "request")]  # a2 is skipped after a1's error
    assert ("ERROR", "mitmproxy.addonmanager", "Addon error: Addon handler request (<a1>) "
            "not callable") in logged  # fmt: skip


async def test_a_failing_sub_addon_skips_its_siblings_not_the_next_addon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(
            Recorder("a", calls, [Failing("a1", calls, [Recorder("a11", calls)])]),
            Recorder("b", calls, [Recorder("b1", calls)]),
        )
        master.addons.chain[0].addons.append(Recorder("a2", calls))
        await request(master)
        master.addons.add(Failing("c", calls, [Recorder("c1", calls)]), Recorder("d", calls))
        await request(master)

    calls, logged = await same(scenario, caplog)
    assert calls == [
        ("a", "request"), ("a1", "request"), ("b", "request"), ("b1", "request"),
        ("a", "request"), ("a1", "request"), ("b", "request"), ("b1", "request"),
        ("c", "request"), ("d", "request"),
    ]  # fmt: skip
    errors = [m for level, _, m in logged if level == "ERROR"]
    assert errors == ["Addon error: bug in a1", "Addon error: bug in a1", "Addon error: bug in c"]


async def test_a_sub_addon_registered_after_the_first_event_is_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        parent = Recorder("parent", calls, [])
        master.addons.add(parent)
        await request(master)
        child = Recorder("child", calls)
        master.addons.register(child)  # what mitmproxy asks of an addon managing addons
        parent.addons.append(child)
        await request(master)
        assert master.addons.get("child") is child  # registered under its name

    calls, _ = await same(scenario, caplog)
    assert calls == [("parent", "request"), ("parent", "request"), ("child", "request")]


async def test_a_hook_replaced_on_an_instance_is_the_one_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        addon = Recorder("a", calls)
        master.addons.add(addon)
        await request(master)
        addon.request = lambda flow: calls.append(("a", "replaced"))  # type: ignore[method-assign]
        await request(master)
        del addon.request  # the class's again
        await request(master)

    calls, _ = await same(scenario, caplog)
    assert calls == [("a", "request"), ("a", "replaced"), ("a", "request")]


async def test_a_hook_added_later_is_called(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        addon = Bare("a", calls)
        master.addons.add(addon)
        flow = tflow.tflow(resp=True)
        await master.addons.trigger_event(HttpResponseHook(flow))
        addon.response = lambda flow: calls.append(("a", "response"))  # type: ignore[attr-defined]
        await master.addons.trigger_event(HttpResponseHook(flow))
        Bare.update = lambda self, flows: calls.append((self.name, "update"))  # type: ignore[attr-defined]
        try:
            await master.addons.handle_lifecycle(HttpResponseHook(flow))
        finally:
            del Bare.update  # type: ignore[attr-defined]

    calls, _ = await same(scenario, caplog)
    assert calls == [("a", "response"), ("a", "response"), ("a", "update")]


# -- what both always did alike ------------------------------------------------------------------


async def test_same_calls_as_mitmproxy_in_chain_order_sub_addons_after_their_parent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(
            Recorder("a", calls),
            AsyncRecorder("b", calls, [Recorder("b1", calls, [Recorder("b11", calls)])]),
            Recorder("c", calls),
        )
        await request(master)

    calls, _ = await same(scenario, caplog)
    assert calls == [
        ("a", "request"), ("b", "async request"), ("b1", "request"), ("b11", "request"),
        ("c", "request"),
    ]  # fmt: skip


async def test_an_addon_error_is_logged_and_the_next_addon_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(Failing("a", calls), Recorder("b", calls))
        await request(master)

    calls, logged = await same(scenario, caplog)
    assert calls == [("a", "request"), ("b", "request")]
    assert [m for level, _, m in logged if level == "ERROR"] == ["Addon error: bug in a"]


async def test_addon_halt_stops_the_event_but_not_the_update_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(Halting("a", calls), Updating("u", calls))
        await master.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        await request(master)

    calls, _ = await same(scenario, caplog)
    assert calls == [("a", "request"), ("u", "update 1"), ("a", "request")]


async def test_options_error_propagates(caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(Recorder):
        def request(self, flow: http.HTTPFlow) -> None:
            self.calls.append((self.name, "request"))
            raise exceptions.OptionsError("no")

    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(Refusing("a", calls), Recorder("b", calls))
        with pytest.raises(exceptions.OptionsError):
            await request(master)

    calls, _ = await same(scenario, caplog)
    assert calls == [("a", "request")]


async def test_update_follows_a_flow_hook_only_for_addons_that_handle_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(Recorder("a", calls), Updating("u", calls))
        await master.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        await master.addons.handle_lifecycle(hooks.ConfigureHook({"x"}))  # not a flow: no update

    calls, _ = await same(scenario, caplog)
    assert calls == [("a", "request"), ("u", "request"), ("u", "update 1")]


async def test_add_and_remove_between_events(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(master: Master, calls: Calls) -> None:
        first = Recorder("first", calls)
        master.addons.add(first)
        await request(master)
        master.addons.add(Updating("second", calls))
        await request(master)
        master.addons.remove(first)
        await request(master)
        await master.addons.trigger_event(HttpResponseHook(tflow.tflow()))  # no handler

    calls, _ = await same(scenario, caplog)
    assert calls == [
        ("first", "request"),
        ("first", "request"),
        ("second", "request"),
        ("second", "request"),
    ]


async def test_a_sub_addon_added_by_its_parent_during_the_event_is_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Growing(Recorder):
        def request(self, flow: http.HTTPFlow) -> None:
            self.calls.append((self.name, "request"))
            self.addons = [Recorder(f"{self.name}-child", self.calls)]

    async def scenario(master: Master, calls: Calls) -> None:
        master.addons.add(Growing("g", calls), Recorder("h", calls))
        await request(master)

    calls, _ = await same(scenario, caplog)
    assert calls == [("g", "request"), ("g-child", "request"), ("h", "request")]


def test_handlers_lists_what_an_event_would_call() -> None:
    async def build() -> None:
        manager = install(Master(options.Options()))
        calls: Calls = []
        parent = Recorder("a", calls, [Recorder("a1", calls), NotCallable("a2", calls)])
        manager.add(parent, Bare("b", calls))
        assert [h.__self__.name for h in manager.handlers("request")] == ["a", "a1"]
        assert manager.handlers("response") == ()

    asyncio.run(build())


def test_the_replaced_manager_no_longer_receives_option_changes() -> None:
    """mitmproxy's Master connects its own AddonManager to `options.changed`, by a weak
    reference: once replaced and dropped, only HookDispatch configures the addons."""

    class Configured:
        def __init__(self) -> None:
            self.updates: list[set[str]] = []

        def configure(self, updated: set[str]) -> None:
            self.updates.append(updated)

    async def build() -> None:
        master = Master(options.Options())
        install(master)
        addon = Configured()
        master.addons.add(addon)
        addon.updates.clear()
        master.options.update(listen_port=8123)
        assert addon.updates == [{"listen_port"}]
        live = [r() for r in master.options.changed.receivers if r() is not None]
        managers = [
            r.__self__ for r in live if isinstance(getattr(r, "__self__", None), AddonManager)
        ]
        assert managers == [master.addons]

    asyncio.run(build())


def test_install_refuses_a_master_with_addons() -> None:
    async def build() -> None:
        master = Master(options.Options())
        master.addons.add(Bare("a", []))
        with pytest.raises(RuntimeError, match="before adding addons"):
            install(master)

    asyncio.run(build())


def test_hook_args_are_the_hook_fields() -> None:
    flow = tflow.tflow()
    assert hook_args(HttpRequestHook(flow)) == HttpRequestHook(flow).args() == [flow]
    assert hook_args(hooks.UpdateHook([flow])) == [[flow]]


def test_the_lean_master_dispatches_through_hook_dispatch(tmp_path: Any) -> None:
    """`crawlguard run` and `--workers` build their master here; every end-to-end test of
    the proxy runs through it."""
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
        finally:
            await guard.close()

    asyncio.run(build())
