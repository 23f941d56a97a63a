"""End-to-end test harness: the real proxy as a subprocess, real local origins on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml
from ports import origin_socket

from crawlguard.policy.records import ViolationRecord

REPO = Path(__file__).resolve().parents[1]
GOOD_UA = "AcmeBot/1.0 (+https://acme.example/bot)"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `predicate` until true or `timeout` s: tests wait on conditions, never fixed sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Hit:
    t: float
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Route:
    status: int = 200
    body: bytes = b"hello from origin\n"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # The answer waits until the test sets it (at most 60 s): "the origin has not answered
    # yet" as a state a test controls, instead of a delay it must outrun.
    gate: threading.Event | None = None


class LocalOrigin:
    """A threaded HTTP(S) origin on 127.0.0.1 that logs every request with its arrival time."""

    def __init__(
        self,
        robots: bytes | None = b"User-agent: *\nAllow: /\n",
        tls: Any = None,
        host: str = "127.0.0.1",
    ):
        self.routes: dict[str, Route] = {}
        self.robots = robots
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                with origin._lock:
                    origin.hits.append(
                        Hit(time.monotonic(), self.command, self.path, dict(self.headers.items()))
                    )
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                if path == "/robots.txt" and path not in origin.routes:
                    route = (
                        Route(body=origin.robots, headers={"Content-Type": "text/plain"})
                        if origin.robots is not None
                        else Route(status=404, body=b"not found\n")
                    )
                else:
                    route = origin.routes.get(path, Route())
                if route.delay:
                    time.sleep(route.delay)
                if route.gate is not None:
                    route.gate.wait(60)
                self.send_response(route.status)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(route.body)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

        self.host = host
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = origin_socket(host)  # a port new to this process: see ports.py
        self.server.server_address = self.server.socket.getsockname()
        self.server.server_activate()
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.configure_cert(ctx)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def paths(self, include_robots: bool = False) -> list[str]:
        with self._lock:
            return [h.path for h in self.hits if include_robots or h.path != "/robots.txt"]

    def page_hits(self) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path != "/robots.txt"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def base_config(tmp: Path, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "proxy": {"listen_host": "127.0.0.1", "listen_port": 0, "confdir": str(tmp / "ca")},
        "admin": {"listen_host": "127.0.0.1", "port": 0, "token_sha256": sha256_hex("op")},
        "store": {"url": f"sqlite:///{tmp / 'var' / 'crawlguard.db'}"},
        "state": {"url": "memory://"},
        "robots": {"user_agent": "crawlguard-test/1.0 (+https://ops.example)", "fetch_timeout": 2},
        "destinations": {"allow_private": True, "allowed_ports": ["1-65535"]},
        # one slot per origin: the tests' sites are ports of 127.0.0.1, each standing for a site
        "pacing": {"default_min_interval": 0, "max_hold": 5, "scope": "origin"},
        # The tests' sites are ports of one host, which the platform's site budget
        # (platform.*, tests/e2e/test_site_budget*.py) would treat as one site: the other
        # tests pace each tenant alone, as before that budget existed.
        "platform": {
            "crawl_delay": "per-tenant",
            "site_budget": {"max_rps": None, "max_concurrency": None},
        },
        "tenants": [
            tenant("acme", ["AcmeBot"]),
            tenant("globex", ["GlobexCrawler"], mode="monitor"),
            tenant("initech", ["InitechBot"], mode="off"),
        ],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def tenant(tid: str, tokens: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "token_sha256": sha256_hex(f"{tid}-secret"),
        "product_tokens": tokens,
        "mode": "enforce",
        "pacing": "reject",
        **extra,
    }


class Proxy:
    """`crawlguard run` as a subprocess on free ports."""

    def __init__(self, config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None):
        self.tmp = tmp
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = tmp / "crawlguard.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.config = config
        self.log_path = tmp / f"proxy-{self.port}.log"
        self.out_path = tmp / f"proxy-{self.port}.out"
        self._start(env)

    def _start(self, env: dict[str, str] | None) -> None:
        cmd = [
            sys.executable, "-m", "crawlguard", "run", "--config", str(self.config_path),
            "--listen-port", str(self.port), "--admin-port", str(self.admin_port),
        ]  # fmt: skip
        seen = self.log().count("crawlguard ready") if self.log_path.exists() else 0
        self._err = self.log_path.open("ab")
        self._out = self.out_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.tmp, stdout=self._out, stderr=self._err, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}:\n{self.log()}")
            if self.log().count("crawlguard ready") > seen:
                return
            time.sleep(0.01)  # the harness waits on "ready" closely: starts are ~1 s
        self.stop()
        raise RuntimeError(f"proxy did not become ready:\n{self.log()}")

    def restart(self) -> None:
        assert self.stop() == 0, self.log()
        self.port = free_port()
        self._start(None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reload(self, **sections: Any) -> None:
        """Rewrite the config file with `sections` replaced, SIGHUP, wait until applied."""
        import signal

        self.config = {**self.config, **sections}
        self.config_path.write_text(yaml.safe_dump(self.config))
        seen = self.log().count("config reloaded")
        self.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: self.log().count("config reloaded") > seen, 20), self.log()

    def json_lines(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def ca_file(self) -> str:
        return str(Path(self.config["proxy"]["confdir"]) / "mitmproxy-ca-cert.pem")

    def proxies(self, tid: str = "acme", token: str | None = None) -> dict[str, str]:
        token = token if token is not None else f"{tid}-secret"
        url = f"http://{tid}:{token}@127.0.0.1:{self.port}"
        return {"http": url, "https": url}

    def get(self, url: str, *, tenant: str = "acme", ua: str | None = GOOD_UA, **kw: Any):
        headers = kw.pop("headers", {})
        if ua is not None:
            headers["User-Agent"] = ua
        session = requests.Session()
        if ua is None:  # send no User-Agent at all (urllib3 would add its own)
            headers["User-Agent"] = urllib3.util.SKIP_HEADER
        kw.setdefault("timeout", 15)
        kw.setdefault("verify", self.ca_file)
        return session.get(url, proxies=self.proxies(tenant), headers=headers, **kw)

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5).text

    def violations(self, *args: str) -> list[dict[str, Any]]:
        import json

        out = subprocess.run(
            [sys.executable, "-m", "crawlguard", "violations", "--config", str(self.config_path),
             "--format", "json", *args],
            cwd=self.tmp, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    def stop(self) -> int:
        """SIGTERM, as an operator would; returns the exit code (0 on a graceful stop)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        self._out.close()
        return self.proc.returncode


def running_proxy(config: dict[str, Any], tmp: Path) -> Iterator[Proxy]:
    proxy = Proxy(config, tmp)
    try:
        yield proxy
    finally:
        proxy.stop()


# -- violation records at fixed times (store and admin API tests) -------------------------------

RECORD_T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    """The record timestamp `minutes` after RECORD_T0, in the store's canonical form."""
    return (RECORD_T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def minute_record(
    minutes: float,
    tenant: str = "acme",
    kind: str = "ua-generic",
    action: str = "blocked",
    url: str = "http://example.test/a",
    **kw: Any,
) -> ViolationRecord:
    return ViolationRecord(at(minutes), tenant, kind, action, "GET", url, **kw)
