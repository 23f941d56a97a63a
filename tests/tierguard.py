"""The unit tier's guard: no sockets, no subprocesses (installed for every test in tests/unit by
tests/unit/conftest.py). A connect, bind or sendto on any socket, a subprocess or a
multiprocessing process raises `TierViolation` naming what was tried, so the fast lane cannot
slowly grow a network or a process start. An event loop's own socketpair is neither and stays
allowed. A test that needs one belongs in tests/inprocess or tests/e2e."""

from __future__ import annotations

import multiprocessing.process
import socket
import subprocess
from typing import Any, NoReturn

import pytest

WHERE = "a unit test may not {}: move it to tests/inprocess (in-process servers, Redis, " \
    "PostgreSQL) or tests/e2e (subprocesses)"  # fmt: skip


class TierViolation(AssertionError):
    """A unit test reached for a socket or a process."""


def _refuse(what: str) -> NoReturn:
    raise TierViolation(WHERE.format(what))


def refuse_sockets_and_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patches the ways to a socket peer or a process; `monkeypatch` undoes it after the test."""

    def connect(self: socket.socket, address: Any) -> NoReturn:
        _refuse(f"connect a socket to {address!r}")

    def bind(self: socket.socket, address: Any) -> NoReturn:
        _refuse(f"bind a socket to {address!r}")

    def sendto(self: socket.socket, *args: Any) -> NoReturn:
        _refuse(f"send a datagram to {args[-1]!r}")

    def popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> NoReturn:
        _refuse(f"start a subprocess ({args!r})")

    def start(self: multiprocessing.process.BaseProcess) -> NoReturn:
        _refuse(f"start a process ({self.name})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
