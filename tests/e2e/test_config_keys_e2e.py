"""The config keys no other test showed, shown here against the real proxy (subprocess) and real
origins on 127.0.0.1, and unknown keys anywhere refused (SPEC "Config"). The table of which
test shows each key, and its meta tests: tests/unit/test_config_keys.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import yaml
from configmodel import sections
from harness import GOOD_UA, LocalOrigin, Proxy, Route, base_config, free_port, tenant, wait_for
from rawhttp import auth, request_bytes, send


def run_config(tmp: Path, cfg: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "keys.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(path), *flags],
        capture_output=True, text=True, timeout=60, cwd=tmp,
    )  # fmt: skip


def test_unknown_keys_anywhere_exit_2_naming_each(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    expected = ["bogus_top: unknown key"]
    cfg["bogus_top"] = 1
    for name, (_, listed) in sections().items():
        if listed:  # list entries: the first tenant, named by its id
            cfg[name][0]["bogus_entry"] = 1
            expected.append(f"{name}[{cfg[name][0]['id']}].bogus_entry: unknown key")
        else:
            cfg.setdefault(name, {})[f"bogus_{name}"] = 1
            expected.append(f"{name}.bogus_{name}: unknown key")
    proc = run_config(tmp_path, cfg, "--listen-port", "0", "--admin-port", "0")
    assert proc.returncode == 2, proc.stderr
    for needle in expected:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert "ready" not in proc.stderr and "Traceback" not in proc.stderr


class Run:
    """`crawlguard run --config` with no command-line flags: everything from the file."""

    def __init__(self, tmp: Path, cfg: dict[str, Any]) -> None:
        path = tmp / "noflags.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.err = tmp / "noflags.log"
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crawlguard", "run", "--config", str(path)],
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        started = lambda: "crawlguard ready" in self.log() or self.proc.poll() is not None  # noqa: E731
        assert wait_for(started, 30) and self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def test_ports_and_hosts_from_the_file_without_flags(tmp_path: Path, origin: LocalOrigin) -> None:
    port, admin_port = free_port(), free_port()
    cfg = base_config(
        tmp_path,
        proxy={"listen_host": "127.0.0.1", "listen_port": port},
        admin={"listen_host": "127.0.0.1", "port": admin_port},
    )
    run = Run(tmp_path, cfg)
    try:
        assert f"proxy on 127.0.0.1:{port}, admin on 127.0.0.1:{admin_port}" in run.log()
        health = requests.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=5)
        assert health.status_code == 200
        proxy_url = f"http://acme:acme-secret@127.0.0.1:{port}"
        r = requests.get(
            origin.url("/via-file-port"), proxies={"http": proxy_url},
            headers={"User-Agent": GOOD_UA}, timeout=15,
        )  # fmt: skip
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (200, "allowed")
        assert origin.paths() == ["/via-file-port"]
    finally:
        assert run.stop() == 0, run.log()


UNASSIGNED = "192.0.2.1"  # TEST-NET-1 (RFC 5737): on no interface here; bind() fails, no traffic


def _can_bind(host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("section", ["proxy", "admin"])
def test_listen_host_is_the_address_bound(tmp_path: Path, section: str) -> None:
    if _can_bind(UNASSIGNED):
        pytest.skip(f"{UNASSIGNED} can be bound here (ip_nonlocal_bind?)")
    port = free_port()
    port_key = "listen_port" if section == "proxy" else "port"
    cfg = base_config(tmp_path, **{section: {"listen_host": UNASSIGNED, port_key: port}})
    other = "--admin-port" if section == "proxy" else "--listen-port"
    proc = run_config(tmp_path, cfg, other, "0")
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on {UNASSIGNED}:{port} for the {section} server" in proc.stderr
    assert "ready" not in proc.stderr and "Traceback" not in proc.stderr


ENV_TOKEN = "CRAWLGUARD_TEST_ENVCO_TOKEN"


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """Non-default robots, request-head and tenant-credential keys; no upstream CA file."""
    tmp = tmp_path_factory.mktemp("config-keys")
    cfg = base_config(
        tmp,
        proxy={"max_request_line": 1024, "max_request_head": 4096},
        robots={"fetch_timeout": 0.5, "max_age": 1},
        tenants=[
            tenant("acme", ["AcmeBot"]),
            tenant("envco", ["EnvcoBot"], token_sha256=None, token_env=ENV_TOKEN),
            tenant("initech", ["InitechBot"], mode="off"),
        ],
    )
    p = Proxy(cfg, tmp, env={ENV_TOKEN: "from-the-environment"})
    yield p
    p.stop()


def robots_fetches(site: LocalOrigin) -> int:
    return sum(1 for h in site.hits if h.path == "/robots.txt")


@pytest.mark.parametrize(
    ("what", "extra", "path_len", "status"),
    [("line", {}, 2000, 414), ("head", {"X-Pad": "p" * 5000}, 10, 431)],
)
def test_request_head_caps_follow_the_config(
    proxy: Proxy,
    custom: Proxy,
    origin: LocalOrigin,
    what: str,
    extra: dict[str, str],
    path_len: int,
    status: int,
) -> None:
    path = f"/{what}-" + "a" * path_len
    authority = f"127.0.0.1:{origin.port}"
    raw = request_bytes(f"http://{authority}{path}", authority, proxy_auth=auth(), extra=extra)
    assert 1024 < len(raw) < 16 * 1024
    small = send(custom.port, raw)  # max_request_line 1024, max_request_head 4096
    assert (small.status, small.header("X-Crawlguard-Decision")) == (status, "request-invalid")
    default = send(proxy.port, raw)  # the defaults: 16 KiB line, 64 KiB head
    assert default.status == 200, default.body
    assert origin.paths() == [path]


def test_upstream_ca_file_is_trusted_for_origins(
    proxy: Proxy, custom: Proxy, server_cert: trustme.LeafCert
) -> None:
    """Both uses: the robots.txt fetch (acme) and mitmproxy's upstream TLS (initech, mode off:
    no robots.txt, the request itself is the first connection)."""
    site = LocalOrigin(tls=server_cert)  # signed by the test CA, which no system trusts
    off_ua = "InitechBot/1.0 (+https://initech.example/bot)"
    try:
        r = proxy.get(site.url("/trusted"))  # proxy.upstream_ca_file: the test CA
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (200, "allowed")
        assert proxy.get(site.url("/trusted-off"), tenant="initech", ua=off_ua).status_code == 200
        r = custom.get(site.url("/untrusted"))  # no upstream_ca_file: robots.txt unverifiable
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (503, "robots-unreachable")
        # issue 21: the 503, the record and the log say why, and which key fixes it
        cause = "TLS certificate verification failed (certificate verify failed: unable to get"
        assert cause in r.text and "proxy.upstream_ca_file" in r.text, r.text
        (record,) = [v for v in custom.violations("--kind", "robots-unreachable")
                     if v["url"] == site.url("/untrusted")]  # fmt: skip
        assert cause in record["reason"] and "proxy.upstream_ca_file" in record["reason"]
        assert wait_for(lambda: f"{site.port} -> error {cause}" in custom.log()), custom.log()
        line = next(x for x in custom.log().splitlines() if f"{site.port} -> error" in x)
        assert "proxy.upstream_ca_file" in line, line
        r = custom.get(site.url("/untrusted-off"), tenant="initech", ua=off_ua)
        assert r.status_code == 502, r.text  # the origin's certificate is not trusted
        assert site.paths() == ["/trusted", "/trusted-off"]
    finally:
        site.close()


def test_robots_fetch_timeout_is_the_limit(proxy: Proxy, custom: Proxy) -> None:
    site = LocalOrigin()
    site.routes["/robots.txt"] = Route(body=b"User-agent: *\nAllow: /\n", delay=1.5)
    try:
        r = custom.get(site.url("/slow-robots"))  # robots.fetch_timeout 0.5 < 1.5 s
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (503, "robots-unreachable")
        assert "timeout" in r.text
        assert 'crawlguard_robots_fetches_total{result="timeout"}' in custom.metrics()
        r = proxy.get(site.url("/patient"))  # the default test config's fetch_timeout: 2 s
        assert r.status_code == 200
        assert site.paths() == ["/patient"]
    finally:
        site.close()


def test_robots_max_age_bounds_the_cache_lifetime(custom: Proxy) -> None:
    site = LocalOrigin()  # no caching headers: the copy lives robots.max_age (1 s here)
    try:
        count = iter(range(10**6))

        def refetched() -> bool:
            assert custom.get(site.url(f"/p{next(count)}")).status_code == 200
            return robots_fetches(site) >= 2

        assert wait_for(refetched, 20)
    finally:
        site.close()


def test_robots_max_origins_evicts_the_oldest(tmp_path: Path, proxy: Proxy) -> None:
    small = Proxy(base_config(tmp_path, robots={"max_origins": 1}), tmp_path)
    a, b = LocalOrigin(), LocalOrigin()
    try:
        for p in (small, proxy):
            for site in (a, b, a):
                assert p.get(site.url("/x")).status_code == 200
        # the small cache forgot a when b came in; the default one (10,000) kept both
        assert robots_fetches(a) == 2 + 1 and robots_fetches(b) == 1 + 1
        assert "crawlguard_robots_cache_entries 1.0" in small.metrics()
    finally:
        small.stop()
        a.close()
        b.close()


def test_tenant_token_env_authenticates(custom: Proxy, origin: LocalOrigin) -> None:
    ua = "EnvcoBot/1.0 (+https://envco.example/bot)"

    def get(token: str) -> requests.Response:
        url = f"http://envco:{token}@127.0.0.1:{custom.port}"
        return requests.get(
            origin.url(f"/env-{token}"), proxies={"http": url}, headers={"User-Agent": ua},
            timeout=15,
        )  # fmt: skip

    assert get("from-the-environment").status_code == 200
    assert get("envco-secret").status_code == 407
    assert origin.paths() == ["/env-from-the-environment"]
    assert ENV_TOKEN not in os.environ  # only the proxy's environment had it
