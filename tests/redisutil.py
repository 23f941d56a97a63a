"""Redis for tests: the shared server on 127.0.0.1:6379 (or a private one when it is not up),
private `redis-server` processes a test may kill and restart, and a unique key prefix per test.

Isolation: every test gets its own ``?prefix=`` (so its keys are ``crawlguard:<prefix>:…``) and
deletes those keys afterwards, so parallel or leftover runs cannot interfere. Fixtures
(import them into a test module)::

    from redisutil import redis_base, redis_url  # noqa: F401

    async def test_x(redis_url: str) -> None: ...   # redis://127.0.0.1:PORT/0?prefix=test-…
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from harness import free_port, wait_for

SHARED_PORT = 6379
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if a Redis answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private `redis-server` on 127.0.0.1 that keeps nothing on disk. `kill` ends it at
    once (SIGKILL, as a crash would); `start` brings it back on the same port, empty."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, prefix: str | None = None, db: int = 0, **query: str) -> str:
        params = {**({"prefix": prefix} if prefix else {}), **query}
        qs = "&".join(f"{k}={v}" for k, v in params.items())
        return f"redis://127.0.0.1:{self.port}/{db}" + (f"?{qs}" if qs else "")

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / f"redis-{self.port}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not wait_for(lambda: ping(self.port) or self.proc.poll() is not None, timeout=10):
            self.kill()
            raise RuntimeError(f"redis-server on port {self.port} did not come up")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited {self.proc.returncode}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def delete_prefix(base_url: str, prefix: str) -> int:
    """Delete every crawlguard key under `prefix` (the test's own namespace only)."""
    client = redis.Redis.from_url(base_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"crawlguard:{prefix}:*", count=500))
        return int(client.delete(*keys)) if keys else 0
    except redis.RedisError:
        return 0  # a private server a test killed: nothing is left anyway
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis://127.0.0.1:PORT/0`: the shared Redis, or a private one for the session."""
    if ping(SHARED_PORT):
        yield f"redis://127.0.0.1:{SHARED_PORT}/0"
        return
    if not Path(REDIS_SERVER).exists():
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server to start one")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url()
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_base: str) -> Iterator[str]:
    """The base URL with this test's own ``?prefix=``; its keys are deleted afterwards."""
    prefix = unique_prefix()
    yield f"{redis_base}?prefix={prefix}"
    delete_prefix(redis_base, prefix)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test (to kill and restart), stopped afterwards."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.kill()
