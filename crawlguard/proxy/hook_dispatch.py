"""Hook dispatch for the lean master: what mitmproxy spends most of its per-request CPU on.

A py-spy profile of the proxy under load (issue 12) showed mitmproxy's `AddonManager` at
~15% of the CPU: each of the ~8 hooks a request fires walks every addon through `traverse`,
a generator of `getattr` probes, a `contextlib` context manager and `Hook.args()` (which
calls `dataclasses.fields`), and every flow hook is followed by an `UpdateHook` that no
addon of the lean master handles. `HookDispatch` resolves, once per hook name, the handlers
the addons define and calls just those. The addons are fixed after start-up (`add`,
`remove` and `clear` rebuild the table), so what it calls is what mitmproxy would call.

Error handling is mitmproxy's: an exception in a handler is logged as an addon error and
the next addon still runs; `AddonHalt` stops the event; `OptionsError` propagates.
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

log = logging.getLogger("mitmproxy.addonmanager")

Handler = Callable[..., Any]
_ARG_NAMES: dict[type, tuple[str, ...]] = {}


def hook_args(event: hooks.Hook) -> list[Any]:
    """`Hook.args()` with the dataclass field names looked up once per hook class."""
    names = _ARG_NAMES.get(type(event))
    if names is None:
        names = _ARG_NAMES[type(event)] = tuple(f.name for f in fields(event))  # type: ignore[arg-type]
    return [getattr(event, name) for name in names]


class HookDispatch(AddonManager):
    """An `AddonManager` that dispatches each hook through a per-name table of handlers."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._handlers: dict[str, tuple[Handler, ...]] = {}

    def handlers(self, name: str) -> tuple[Handler, ...]:
        """The handlers of hook `name`, addon chain order, sub-addons after their parent."""
        found = self._handlers.get(name)
        if found is None:
            found = tuple(
                func
                for addon in self.chain
                for a in traverse([addon])
                if (func := getattr(a, name, None))
                and callable(func)
                and not isinstance(func, types.ModuleType)
            )
            self._handlers[name] = found
        return found

    def add(self, *addons: Any) -> None:
        try:
            super().add(*addons)
        finally:  # also when it failed part-way, or a hook during it built a table
            self._handlers.clear()

    def remove(self, addon: Any) -> None:
        try:
            super().remove(addon)
        finally:  # also when it failed part-way, or a hook during it built a table
            self._handlers.clear()

    def clear(self) -> None:
        try:
            super().clear()
        finally:  # also when it failed part-way, or a hook during it built a table
            self._handlers.clear()

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event.name)
        args = hook_args(event)
        if handlers:
            await self._call(handlers, args)
        if (update := self.handlers(hooks.UpdateHook.name)) and isinstance(args[0], flow.Flow):
            await self._call(update, [[args[0]]])

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event.name)
        if handlers:
            await self._call(handlers, hook_args(event))

    @staticmethod
    async def _call(handlers: tuple[Handler, ...], args: list[Any]) -> None:
        for func in handlers:
            try:
                res = func(*args)
                if res is not None and inspect.isawaitable(res):
                    await res
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as exc:
                log.error(f"Addon error: {exc}", exc_info=True)


def install(master: Any) -> HookDispatch:
    """Give a freshly made master (no addons yet) a HookDispatch in place of its manager."""
    return compat.replace_addon_manager(master, HookDispatch)
