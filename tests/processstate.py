"""Process-wide state a test may change in the pytest process, put back after every test.

Running crawlguard in-process changes more than the objects a test holds: constructing the
addon installs crawlguard's patches of mitmproxy's HTTP/1 server (crawlguard.proxy.compat),
the lean master turns off mitmproxy's debug type checks and wraps its connection handler,
the addon's `configure` sets the running request-head caps on `compat.HeadLimits`, and every
mitmproxy master adds its log handler to the root logger. Left in place, they reach every
later test: a test of mitmproxy's own behaviour, of HookDispatch against AddonManager, or of
the head caps would pass or fail by test order. `Snapshot.take()` records the attributes of
the modules (and the classes they define) crawlguard patches; `restore()` puts back what
changed, removes what was added, and drops root-logger handlers a test left behind.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# Where crawlguard changes mitmproxy, h11 or itself for the whole process (imported here once,
# so a patch made on first import inside a test is undone too).
PATCHED_MODULES = (
    "mitmproxy.http",
    "mitmproxy.addonmanager",
    "mitmproxy.proxy.server",
    "mitmproxy.proxy.mode_servers",
    "mitmproxy.proxy.layers.http",
    "mitmproxy.proxy.layers.http._http1",
    "mitmproxy.addons.next_layer",
    "mitmproxy.addons.proxyserver",
    "h11._receivebuffer",
    "crawlguard.proxy.compat",
)
_MISSING = object()


@dataclass
class _Owner:
    obj: ModuleType | type
    attrs: dict[str, Any]


def _owners() -> list[ModuleType | type]:
    found: list[ModuleType | type] = []
    for name in PATCHED_MODULES:
        module = importlib.import_module(name)
        found.append(module)
        found += [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == name]
    return found


class Snapshot:
    def __init__(self, owners: list[_Owner], root_handlers: list[logging.Handler]) -> None:
        self.owners = owners
        self.root_handlers = root_handlers

    @classmethod
    def take(cls) -> Snapshot:
        owners = [_Owner(o, dict(vars(o))) for o in _owners()]
        return cls(owners, list(logging.getLogger().handlers))

    def restore(self) -> list[str]:
        """Puts back what changed since `take`; returns what that was (for a report)."""
        undone: list[str] = []
        for owner in self.owners:
            now = vars(owner.obj)
            name = getattr(owner.obj, "__qualname__", None) or owner.obj.__name__
            for key in [k for k in now if k not in owner.attrs]:
                delattr(owner.obj, key)
                undone.append(f"{name}.{key} (added)")
            for key, value in owner.attrs.items():
                if now.get(key, _MISSING) is not value:
                    setattr(owner.obj, key, value)
                    undone.append(f"{name}.{key}")
        root = logging.getLogger()
        for handler in list(root.handlers):
            # pytest swaps its own capture handlers per test phase: those are not ours to touch
            if handler not in self.root_handlers and not type(handler).__module__.startswith(
                "_pytest"
            ):
                root.removeHandler(handler)
                undone.append(f"root logger handler {type(handler).__name__}")
        return undone
