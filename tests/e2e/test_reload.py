"""Hot reload (SIGHUP / `crawlguard reload`): tenants, modes and pacing change in place;
connections, pacing state and the robots cache survive; a bad config is refused and kept."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import GOOD_UA, LocalOrigin, Proxy, base_config, tenant, wait_for
from rawhttp import auth, read_reply

ROBOTS = b"User-agent: *\nDisallow: /private\n"


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin(robots=ROBOTS)
    yield o
    o.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = Proxy(base_config(tmp_path), tmp_path)
    yield p
    p.stop()


def rewrite(proxy: Proxy, **changes: object) -> None:
    cfg = dict(proxy.config)
    cfg.update(changes)
    proxy.config = cfg
    proxy.config_path.write_text(yaml.safe_dump(cfg))


def wait_for_log(proxy: Proxy, needle: str, count: int = 1) -> None:
    assert wait_for(lambda: proxy.log().count(needle) >= count, 20), proxy.log()


def reload_cmd(proxy: Proxy) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "reload", "--config", str(proxy.config_path)],
        cwd=proxy.tmp, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def keepalive_get(sock: socket.socket, url: str, host: str, who: str = "acme") -> int:
    sock.sendall(
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {GOOD_UA}\r\n"
        f"Proxy-Authorization: {auth(who)}\r\n\r\n".encode()
    )
    return read_reply(sock).status


def test_reload_adds_a_tenant_and_keeps_open_connections(proxy: Proxy, site: LocalOrigin):
    authority = f"127.0.0.1:{site.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        assert keepalive_get(sock, site.url("/a"), authority) == 200
        assert (
            proxy.get(
                site.url("/b"), tenant="newco", ua="NewcoBot/1.0 (+https://n.example)"
            ).status_code
            == 407
        )
        rewrite(proxy, tenants=[*proxy.config["tenants"], tenant("newco", ["NewcoBot"])])
        out = reload_cmd(proxy)
        assert out.returncode == 0, out.stderr
        wait_for_log(proxy, "config reloaded: 4 tenant(s)")
        r = proxy.get(site.url("/c"), tenant="newco", ua="NewcoBot/1.0 (+https://n.example)")
        assert r.status_code == 200
        assert keepalive_get(sock, site.url("/d"), authority) == 200  # same connection
    assert site.paths() == ["/a", "/c", "/d"]


def test_sighup_changes_a_mode(proxy: Proxy, site: LocalOrigin):
    assert proxy.get(site.url("/private")).status_code == 403
    tenants = [dict(t, mode="monitor") if t["id"] == "acme" else t for t in proxy.config["tenants"]]
    rewrite(proxy, tenants=tenants)
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for_log(proxy, "config reloaded")
    r = proxy.get(site.url("/private"))
    assert (r.status_code, r.headers["X-Crawlguard-Monitor"]) == (200, "robots-disallow")
    assert proxy.proc.poll() is None


def test_a_bad_config_is_refused_and_the_running_one_kept(proxy: Proxy, site: LocalOrigin):
    proxy.config_path.write_text("tenants: [\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for_log(proxy, "reload refused, running config kept")
    assert proxy.get(site.url("/ok")).status_code == 200
    rewrite(proxy, tenants=[{"id": "acme", "product_tokens": ["AcmeBot"]}])  # no credential
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for_log(proxy, "reload refused, running config kept", 2)
    assert proxy.get(site.url("/ok2")).status_code == 200
    assert proxy.proc.poll() is None


def test_keys_that_need_a_restart_are_named(proxy: Proxy, site: LocalOrigin):
    rewrite(proxy, robots={**proxy.config["robots"], "fetch_timeout": 7})
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for_log(proxy, "needs a restart, running values kept: robots")


def test_reload_without_a_running_proxy_says_so(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "reload", "--config", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert "no running proxy" in out.stderr


@pytest.mark.parametrize("flag", ["--listen-port", "--admin-port"])
def test_a_busy_port_is_reported_in_crawlguards_words(tmp_path: Path, flag: str):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--admin-port" if flag == "--listen-port" else "--listen-port"
        out = subprocess.run(
            [sys.executable, "-m", "crawlguard", "run", "--config", str(path),
             flag, str(port), other, "0"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert flag in out.stderr
    assert "Traceback" not in out.stderr


def test_a_tunnel_opened_before_a_reload_follows_the_new_settings(proxy: Proxy, site: LocalOrigin):
    from rawhttp import connect, request_bytes

    authority = f"127.0.0.1:{site.port}"
    sock, reply = connect(proxy.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        sock.sendall(request_bytes("/private", authority).replace(b"Connection: close\r\n", b""))
        assert read_reply(sock).status == 403
        tenants = [
            dict(t, mode="monitor") if t["id"] == "acme" else t for t in proxy.config["tenants"]
        ]
        rewrite(proxy, tenants=tenants)
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for_log(proxy, "config reloaded")
        sock.sendall(request_bytes("/private", authority))
        assert read_reply(sock).status == 200  # monitor now
