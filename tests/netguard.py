"""Network guard for tests: only 127.0.0.1 / ::1 may ever be reached.

`install(record)` wraps the ways Python code reaches the network (`socket.socket.connect`,
`connect_ex`, `sendto`, `socket.create_connection`, `socket.getaddrinfo`,
`gethostbyname[_ex]`, `gethostbyaddr`). A destination that is not a loopback literal (or a
loopback name, answered locally without any lookup) is refused BEFORE the real call: the
attempt is appended to `record` and a `NetguardRefused` (an OSError, like a firewall's
EACCES) is raised. No name lookup ever leaves the process either, so a test cannot leak a DNS
query. Returns `undo()`.

In-process::

    from netguard import netguard  # noqa: F401  (the fixture; fails the test on any attempt)

    async def test_x(netguard: list[str]) -> None:
        ...
        assert netguard == []  # optional: teardown fails the test anyway

Subprocesses: run them with ``PYTHONPATH=<tests>/netguard_site`` and
``CRAWLGUARD_NETGUARD_LOG=<file>``; `netguard_site/sitecustomize.py` installs the guard at
interpreter start and every refused attempt becomes one line in that file (assert it is
empty or missing). `subprocess_env(log_path)` builds such an environment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

LOG_ENV = "CRAWLGUARD_NETGUARD_LOG"
SITE_DIR = Path(__file__).resolve().parent / "netguard_site"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class Record(Protocol):
    def append(self, line: str, /) -> None: ...


class NetguardRefused(PermissionError):
    """A non-loopback network attempt under test; the socket never connected."""


class FileRecord:
    """`append` writes one line per refused attempt to a file (subprocess mode)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, line: str, /) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line.replace("\n", " ") + "\n")


def _host_text(host: Any) -> str | None:
    if host is None:
        return None
    if isinstance(host, bytes | bytearray):
        return bytes(host).decode("ascii", "replace")
    return str(host)


def is_loopback_literal(host: str) -> bool:
    h = host.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback_name(host: str) -> bool:
    h = host.lower().rstrip(".")
    return h in LOOPBACK_NAMES or h.endswith(".localhost")


def _loopback_for(family: int) -> str:
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def install(record: Record) -> Callable[[], None]:
    """Runtime this process's network calls; refused attempts go to `record`. Returns undo."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo
    real_gethostbyname = socket.gethostbyname
    real_gethostbyname_ex = socket.gethostbyname_ex
    real_gethostbyaddr = socket.gethostbyaddr

    def refuse(what: str, target: Any) -> NetguardRefused:
        line = f"netguard: refused {what} {target!r} (pid {os.getpid()})"
        with contextlib.suppress(Exception):  # refuse even when recording fails
            record.append(line)
        return NetguardRefused(13, line)

    def checked_address(sock: socket.socket, address: Any, what: str) -> Any:
        """The address to really use (loopback names made literal), or raise."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return address  # AF_UNIX and friends: not the network
        if not isinstance(address, tuple) or not address:
            raise refuse(what, address)
        host = _host_text(address[0]) or ""
        if is_loopback_literal(host):
            return address
        if is_loopback_name(host):  # never let the C library look a name up
            return (_loopback_for(sock.family), *address[1:])
        raise refuse(what, address)

    def connect(self: socket.socket, address: Any, /) -> None:
        return real_connect(self, checked_address(self, address, "connect"))

    def connect_ex(self: socket.socket, address: Any, /) -> int:
        return real_connect_ex(self, checked_address(self, address, "connect_ex"))

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        if args:
            args = (*args[:-1], checked_address(self, args[-1], "sendto"))
        return real_sendto(self, data, *args)  # type: ignore[call-overload,no-any-return]

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        h = _host_text(host)
        if not h or is_loopback_literal(h):  # None: wildcard for bind or loopback
            results = real_getaddrinfo(host, port, family, type, proto, flags)
        elif is_loopback_name(h):
            results = []
            for literal, fam in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
                if family in (0, fam):
                    flags_n = flags | socket.AI_NUMERICHOST
                    results += real_getaddrinfo(literal, port, fam, type, proto, flags_n)
        else:
            raise refuse("getaddrinfo", (h, port))
        for info in results:
            address = str(info[4][0])
            if h and not is_loopback_literal(address):
                raise refuse("getaddrinfo result", (h, address))
        return results

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        host = _host_text(address[0]) if isinstance(address, tuple) and address else None
        if host is None or not (is_loopback_literal(host) or is_loopback_name(host)):
            raise refuse("create_connection", address)
        return real_create_connection(address, *args, **kwargs)

    def gethostbyname(hostname: str) -> str:
        if is_loopback_literal(hostname):
            return real_gethostbyname(hostname)
        if is_loopback_name(hostname):
            return "127.0.0.1"
        raise refuse("gethostbyname", hostname)

    def gethostbyname_ex(hostname: str) -> tuple[str, list[str], list[str]]:
        if is_loopback_literal(hostname) or is_loopback_name(hostname):
            return (hostname, [], ["127.0.0.1"])
        raise refuse("gethostbyname_ex", hostname)

    def gethostbyaddr(ip_address: str) -> tuple[str, list[str], list[str]]:
        if is_loopback_literal(ip_address):
            return ("localhost", [], [ip_address])
        raise refuse("gethostbyaddr", ip_address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket.create_connection = create_connection  # type: ignore[assignment]
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex
    socket.gethostbyaddr = gethostbyaddr

    def undo() -> None:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.socket.sendto = real_sendto  # type: ignore[method-assign]
        socket.create_connection = real_create_connection
        socket.getaddrinfo = real_getaddrinfo
        socket.gethostbyname = real_gethostbyname
        socket.gethostbyname_ex = real_gethostbyname_ex
        socket.gethostbyaddr = real_gethostbyaddr

    return undo


def install_from_env() -> Callable[[], None] | None:
    """Subprocess mode: guard this interpreter when CRAWLGUARD_NETGUARD_LOG names a file."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return None
    return install(FileRecord(path))


def subprocess_env(
    log_path: str | os.PathLike[str], base: dict[str, str] | None = None
) -> dict[str, str]:
    """An environment for a guarded subprocess: sitecustomize on PYTHONPATH, log file set."""
    env = dict(os.environ if base is None else base)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SITE_DIR) + (os.pathsep + old if old else "")
    env[LOG_ENV] = str(log_path)
    return env


# Subprocess mode (sitecustomize, pytest not loaded) skips pytest: it only needs `install`.
if "pytest" in sys.modules or not os.environ.get(LOG_ENV):
    import pytest

    @pytest.fixture
    def netguard() -> Iterator[list[str]]:
        """Runtime the test; any refused attempt fails it (after the test body has run)."""
        record: list[str] = []
        undo = install(record)
        try:
            yield record
        finally:
            undo()
        if record:
            pytest.fail("non-loopback network attempts:\n  " + "\n  ".join(record))
