"""Work counted instead of timed: where a cost bound matters, a test asserts how many lines of
crawlguard's own code ran and how many calls that code made (Python 3.12's sys.monitoring), a
count no busy machine changes. What the same work takes in milliseconds is measured in
benchmarks/ (see benchmarks/decide_worst_case.py), never asserted by a test.

    result, work = measure(lambda: rules.decide("AcmeBot", url))
    assert work.lines <= 400, work

A loop's lines count once per pass, so trying 1,000 patterns instead of 5 shows as ~200 times
the lines; a call into C counts once, and the string it is called on counts in `octets`
(`path.find(part)` over a 200 KB path: 200 KB), an upper bound of what it may scan.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

import crawlguard

PACKAGE = str(Path(crawlguard.__file__).resolve().parent)
mon = sys.monitoring


@dataclass(frozen=True)
class Work:
    lines: int  # lines of crawlguard/ executed (each pass of a loop counts)
    calls: int  # calls made from crawlguard/ code, to Python or C
    octets: int  # length of the str/bytes receivers of those calls (`path.find(...)`: len(path))

    def __str__(self) -> str:
        return (
            f"{self.lines} lines, {self.calls} calls of crawlguard code "
            f"(on {self.octets} octets of strings)"
        )


def _free_tool_id() -> int:
    for tool in range(6):  # ids 0-5 are for tools; 0 debugger, 1 coverage, 2 profiler...
        if mon.get_tool(tool) is None:
            return tool
    raise RuntimeError("no free sys.monitoring tool id")


def measure[T](fn: Callable[[], T]) -> tuple[T, Work]:
    """Runs `fn` once and counts the lines and calls of crawlguard code it caused."""
    tool = _free_tool_id()
    ours: dict[CodeType, bool] = {}
    lines = calls = octets = 0

    def mine(code: CodeType) -> bool:
        found = ours.get(code)
        if found is None:
            found = ours[code] = code.co_filename.startswith(PACKAGE)
        return found

    def on_line(code: CodeType, line: int) -> Any:
        nonlocal lines
        if not mine(code):
            return mon.DISABLE
        lines += 1
        return None

    def on_call(code: CodeType, offset: int, callable_: object, arg0: object) -> Any:
        nonlocal calls, octets
        if not mine(code):
            return mon.DISABLE
        calls += 1
        if isinstance(arg0, str | bytes):  # a method call's receiver: what it may scan
            octets += len(arg0)
        return None

    mon.use_tool_id(tool, "crawlguard-tests-costs")
    try:
        mon.register_callback(tool, mon.events.LINE, on_line)
        mon.register_callback(tool, mon.events.CALL, on_call)
        mon.set_events(tool, mon.events.LINE | mon.events.CALL)
        mon.restart_events()  # locations disabled by an earlier measure count again
        result = fn()
    finally:
        mon.set_events(tool, 0)
        mon.register_callback(tool, mon.events.LINE, None)
        mon.register_callback(tool, mon.events.CALL, None)
        mon.free_tool_id(tool)
    return result, Work(lines, calls, octets)
