"""Hook dispatch for the lean master: mitmproxy's `AddonManager`, with less work per event.

A py-spy profile of the proxy under load (issue 12) showed mitmproxy's `AddonManager` at
~15% of the CPU: for each of the ~8 hooks a request fires it walks every addon through
`traverse` (a generator), enters a `contextlib` context manager per addon and calls
`Hook.args()` (which calls `dataclasses.fields`) per handler. `HookDispatch` makes the same
walk without them: per event, per addon, one `getattr` of the hook name and one of `addons`,
the hook's arguments looked up once per hook class, and the `update` hook that follows a flow
hook dispatched without building it.

What it calls, and when, is exactly what `AddonManager` calls (tests/test_hook_dispatch.py
sends the same events through both): every addon and sub-addon is asked for the hook at each
event, so a sub-addon registered later, a hook replaced on an instance or added later are
called as mitmproxy would; a hook name bound to something neither callable nor a module is
logged as an addon error; an exception in a handler is logged as an addon error and skips the
rest of that addon's tree (its sub-addons) but not the next addon; `AddonHalt` stops the
event; `OptionsError` propagates.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from mitmproxy import exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

from crawlguard.proxy import compat

log = logging.getLogger("mitmproxy.addonmanager")  # where mitmproxy logs addon errors

Handler = Callable[..., Any]
_ARG_NAMES: dict[type, tuple[str, ...]] = {}
_UPDATE = hooks.UpdateHook.name


def hook_args(event: hooks.Hook) -> list[Any]:
    """`Hook.args()` with the dataclass field names looked up once per hook class."""
    names = _ARG_NAMES.get(type(event))
    if names is None:
        names = _ARG_NAMES[type(event)] = tuple(f.name for f in fields(event))  # type: ignore[arg-type]
    return [getattr(event, name) for name in names]


class HookDispatch(AddonManager):
    """An `AddonManager` whose `trigger_event` / `handle_lifecycle` do the same walk faster."""

    def handlers(self, name: str) -> tuple[Handler, ...]:
        """The handlers of hook `name` as of now, addon chain order, sub-addons after their
        parent (what an event would call, if no handler changed anything on the way)."""
        return tuple(
            func
            for addon in self.chain
            for a in traverse([addon])
            if (func := getattr(a, name, None))
            and callable(func)
            and not isinstance(func, types.ModuleType)
        )

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = hook_args(event)
        message = args[0]
        await self._dispatch(
            event.name, args, [[message]] if isinstance(message, flow.Flow) else None
        )

    async def trigger_event(self, event: hooks.Hook) -> None:
        await self._dispatch(event.name, hook_args(event), None)

    async def _dispatch(self, name: str, args: list[Any], update: list[Any] | None) -> None:
        """mitmproxy's `trigger_event`, then (`update` given: the arguments of an `update`
        hook) again for `update`, as its `handle_lifecycle` does: each addon of the chain and
        its sub-addons in a `safecall`; the common case, an addon without sub-addons, inline."""
        while True:
            for addon in self.chain:
                try:
                    func = getattr(addon, name, None)
                    if func:
                        if callable(func):
                            res = func(*args)
                            if res is not None and inspect.isawaitable(res):
                                await res
                        elif not isinstance(func, types.ModuleType):
                            raise exceptions.AddonManagerError(
                                f"Addon handler {name} ({addon}) not callable"
                            )
                    if hasattr(addon, "addons"):
                        await _dispatch_tree(addon.addons, name, args)
                except exceptions.AddonHalt:
                    break
                except exceptions.OptionsError:
                    raise
                except Exception as exc:
                    log.error(f"Addon error: {exc}", exc_info=True)
            if update is None:
                return
            name, args, update = _UPDATE, update, None


async def _dispatch_tree(addons: Any, name: str, args: list[Any]) -> None:
    """mitmproxy's `traverse` of sub-addons: each is asked for the hook when its turn comes,
    its own sub-addons right after it."""
    for addon in addons:
        func = getattr(addon, name, None)
        if func:
            if callable(func):
                res = func(*args)
                if res is not None and inspect.isawaitable(res):
                    await res
            elif not isinstance(func, types.ModuleType):
                raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
        if hasattr(addon, "addons"):
            await _dispatch_tree(addon.addons, name, args)


def install(master: Any) -> HookDispatch:
    """Give a freshly made master (no addons yet) a HookDispatch in place of its manager."""
    return compat.replace_addon_manager(master, HookDispatch)
