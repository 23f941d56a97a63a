"""Egress against real sockets: the aiohttp adapter connects only to the pinned address of a real
loopback origin, and the network guard lets loopback through, in this process and installed
in a subprocess by netguard_site. The classification, resolver and policy:
tests/unit/test_egress.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from netguard import install, netguard, subprocess_env  # noqa: F401
from origins import RecordingOrigin, closed_port, respond

from crawlguard.config import DestinationsSection
from crawlguard.egress import EgressPolicy, SafeResolver

pytestmark = [pytest.mark.usefixtures("netguard"), pytest.mark.timeout(20)]


def dest(**kw: Any) -> DestinationsSection:
    return DestinationsSection.model_validate(kw)


async def test_aiohttp_connects_only_to_the_pinned_address() -> None:
    async with RecordingOrigin(respond(body=b"hi")) as origin:
        cfg = dest(allow_private=True, allowed_ports=[origin.port])
        resolver = SafeResolver({"site.test": ["127.0.0.1"]}, allow_private=True)
        policy = EgressPolicy(cfg, resolver)
        connector = aiohttp.TCPConnector(resolver=policy.aiohttp_resolver(), use_dns_cache=False)
        session = aiohttp.ClientSession(connector=connector, trust_env=False)
        async with session, session.get(f"http://site.test:{origin.port}/x") as resp:
            assert resp.status == 200 and await resp.read() == b"hi"
        [hit] = origin.hits
        assert hit.headers["Host"] == f"site.test:{origin.port}"


def test_guard_lets_loopback_through() -> None:
    record: list[str] = []
    undo = install(record)
    try:
        port = closed_port()
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
        infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
        assert {i[4][0] for i in infos} <= {"127.0.0.1", "::1"}
        assert socket.gethostbyname("localhost") == "127.0.0.1"
    finally:
        undo()
    assert record == []


def test_guard_in_a_subprocess(tmp_path: Path) -> None:
    log = tmp_path / "netguard.log"
    port = closed_port()
    # 0.0.0.0 is not loopback to the guard, yet even unguarded it never leaves this host.
    code = (
        "import socket\n"
        "assert 'install' in socket.getaddrinfo.__qualname__, 'guard not installed'\n"
        "s = socket.socket()\n"
        f"try:\n    s.connect(('0.0.0.0', {port}))\nexcept PermissionError as e:\n"
        "    print('refused', e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(log),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout
    [line] = log.read_text().splitlines()
    assert line.startswith("netguard: refused connect ('0.0.0.0'")
