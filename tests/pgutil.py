"""PostgreSQL for tests: the shared server (``CRAWLGUARD_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test``), a private schema per test, and a TCP relay a
test can cut to make PostgreSQL unreachable without touching the shared server.

Isolation: every test gets its own schema ``cg_test_<random>`` (the store URL selects it with
``?options=-csearch_path%3D<schema>``) and drops it afterwards, so parallel or leftover runs
cannot interfere. Import the fixtures into a test module::

    from pgutil import pg_schema  # noqa: F401

    def test_x(pg_schema: PgSchema) -> None: ...   # pg_schema.url() is the store URL
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from harness import free_port
from psycopg.conninfo import conninfo_to_dict

PG_URL = os.environ.get("CRAWLGUARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_PARAMS = conninfo_to_dict(PG_URL)
PG_HOST = str(_PARAMS.get("host", "127.0.0.1"))
PG_PORT = int(_PARAMS.get("port", 5432))
PG_USER = str(_PARAMS.get("user", "postgres"))
PG_DB = str(_PARAMS.get("dbname", "test"))


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@dataclass
class PgSchema:
    """A private schema on the shared server."""

    name: str

    def url(self, port: int | None = None, host: str | None = None) -> str:
        """The store URL for this schema, directly or through a relay on `port`."""
        return (
            f"postgresql://{PG_USER}@{host or PG_HOST}:{port or PG_PORT}/{PG_DB}"
            f"?options=-csearch_path%3D{self.name}"
        )

    def rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """A query's rows, run in this schema on a connection of its own."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())

    def execute(self, sql: str, params: Any = ()) -> None:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql, params)

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])


def create_schema() -> PgSchema:
    schema = PgSchema(f"cg_test_{uuid.uuid4().hex[:16]}")
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema.name}"')
    return schema


def drop_schema(schema: PgSchema) -> None:
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema.name}" CASCADE')


@pytest.fixture(scope="session")
def pg_server() -> str:
    if not pg_available():
        pytest.skip(f"no PostgreSQL at {PG_URL} (set CRAWLGUARD_TEST_POSTGRES)")
    return PG_URL


@pytest.fixture
def pg_schema(pg_server: str) -> Iterator[PgSchema]:
    schema = create_schema()
    try:
        yield schema
    finally:
        drop_schema(schema)


class TcpRelay:
    """A TCP forwarder on 127.0.0.1:`port` to the shared PostgreSQL. `stop` cuts every open
    connection and refuses new ones (the client sees the server go away); `start` listens on
    the same port again."""

    def __init__(self, upstream: tuple[str, int] = (PG_HOST, PG_PORT)) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self.connections = 0  # accepted so far
        self.start()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        with self._lock:
            assert self._listener is None, "already running"
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", self.port))
            ls.listen(64)
            self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            ls, self._listener = self._listener, None
            sockets, self._open = list(self._open), set()
        if ls is not None:
            _shut(ls)
        for sock in sockets:
            _shut(sock)

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                if self._listener is not ls:  # stopped meanwhile
                    _shut(client)
                    _shut(server)
                    return
                self._open |= {client, server}
                self.connections += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
        finally:
            with self._lock:
                self._open -= {src, dst}
            _shut(src)
            _shut(dst)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept/recv on it
    sock.close()


@pytest.fixture
def relay(pg_server: str) -> Iterator[TcpRelay]:
    r = TcpRelay()
    try:
        yield r
    finally:
        r.stop()
