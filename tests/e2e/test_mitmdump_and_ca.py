"""The addon under stock mitmdump (same code as `crawlguard run`), and `crawlguard ca`."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from harness import GOOD_UA, REPO, LocalOrigin, base_config, free_port, running_proxy, wait_for

PROBE = """
import json, os
from mitmproxy import ctx, http

class Probe:
    def running(self):
        from crawlguard.proxy import compat
        state = {
            "patched": compat.installed(),
            "manager": type(ctx.master.addons).__name__,
            "post_init": getattr(http.MessageData, "__post_init__", None) is not None
            and not getattr(http.MessageData.__post_init__, "_crawlguard_wrapped", False),
        }
        with open(os.environ["CRAWLGUARD_PROBE"], "w") as f:
            json.dump(state, f)

addons = [Probe()]
"""


def test_mitmdump_runs_the_same_addon(tmp_path: Path, origin: LocalOrigin):
    """...and changes in mitmproxy only what docs/deployment.md "Running under mitmdump" says: the
    HTTP/1 server patches of `compat.install()`, not the lean master's."""
    cfg = base_config(tmp_path, admin={"port": free_port()})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    log = (tmp_path / "mitmdump.log").open("wb")
    (tmp_path / "probe.py").write_text(PROBE)
    probe = tmp_path / "probe.json"
    proc = subprocess.Popen(
        [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port),
         "--set", f"confdir={tmp_path / 'ca'}",
         "-s", str(REPO / "addons" / "crawlguard_addon.py"), "-s", str(tmp_path / "probe.py"),
         "--set", f"crawlguard_config={path}"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "CRAWLGUARD_PROBE": str(probe)},
    )  # fmt: skip
    try:
        proxies = {"http": f"http://acme:acme-secret@127.0.0.1:{port}"}
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(
                    origin.url("/via-mitmdump"), proxies=proxies, headers={"User-Agent": GOOD_UA},
                    timeout=5,
                )  # fmt: skip
                break
            except requests.ConnectionError:
                assert proc.poll() is None, (tmp_path / "mitmdump.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200
        assert r.headers["X-Crawlguard-Decision"] == "allowed"
        r = requests.get(origin.url("/blocked"), proxies=proxies, timeout=5)  # python-requests UA
        assert r.status_code == 403
        assert r.headers["X-Crawlguard-Decision"] == "ua-generic"
        assert origin.paths() == ["/via-mitmdump"]
        admin = f"http://127.0.0.1:{cfg['admin']['port']}/metrics"
        assert 'decision="ua-generic",tenant="acme"' in requests.get(admin, timeout=5).text
        assert wait_for(probe.exists)
        assert json.loads(probe.read_text()) == {
            "patched": [
                "mitmproxy.proxy.layers.http._http1.make_error_response",
                "mitmproxy.proxy.layers.http._http1.Http1Server.read_headers",
                "mitmproxy.proxy.layers.http._http1.Http1Server.send",
                "mitmproxy.proxy.layers.http.HttpStream.start_request_stream",
                "mitmproxy.proxy.server.ConnectionHandler.handle_connection",
            ],
            "manager": "AddonManager",
            "post_init": True,  # mitmproxy's debug type check stays
        }
        # The head caps apply to every connection of this mitmdump, as documented.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /" + b"a" * 20000)
            reply = b""
            while chunk := sock.recv(65536):  # answered, then closed
                reply += chunk
        assert (
            reply.startswith(b"HTTP/1.1 414 ")
            and b"X-Crawlguard-Decision: request-invalid" in reply
        )
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_ca_command_shows_and_exports(tmp_path: Path):
    cfg = base_config(tmp_path)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "ca", "--config", str(path),
         "--export", str(tmp_path / "ca.pem")],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert "SHA-256 fingerprint:" in out.stdout
    assert "Subject: CN=crawlguard CA, O=crawlguard" in out.stdout
    pem = (tmp_path / "ca.pem").read_text()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "ca" / "mitmproxy-ca-cert.pem").read_text() == pem
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    expected = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()
    assert f"SHA-256 fingerprint: {':'.join(expected[i : i + 2] for i in range(0, 64, 2))}" in (
        out.stdout
    )


def test_ca_command_defaults_to_var_mitmproxy(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "ca"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    )  # fmt: skip
    ca = tmp_path / "var" / "mitmproxy" / "mitmproxy-ca-cert.pem"
    assert f"CA certificate: {ca}" in out.stdout and ca.is_file()


def test_addon_keeps_the_options_its_checks_rest_on(tmp_path: Path):
    """rawtcp would relay unchecked bytes, http2 bring :authority, eager connects reach
    origins before a decision: with a guard loaded the addon sets them back, loudly."""
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.test import taddons

    from crawlguard.config import parse_config
    from crawlguard.proxy.addon import SAFE_OPTIONS, CrawlGuardAddon
    from crawlguard.runtime import Runtime

    guard = Runtime(parse_config(base_config(tmp_path)))
    addon = CrawlGuardAddon(guard)
    try:
        with taddons.context(Proxyserver(), addon) as tctx:
            tctx.configure(addon, rawtcp=True, http2=True, connection_strategy="eager")
            assert {n: getattr(tctx.options, n) for n in SAFE_OPTIONS} == SAFE_OPTIONS
    finally:
        guard.store.close()


# -- crawlguard's own CA (issue 10) ------------------------------------------------------------

CG_SUBJECT = {"commonName": "crawlguard CA", "organizationName": "crawlguard"}
CA_NAMES = {
    "mitmproxy-ca.pem", "mitmproxy-ca.p12", "mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer",
    "mitmproxy-ca-cert.p12", "mitmproxy-dhparam.pem",
}  # fmt: skip


def _ca_bytes(confdir: Path) -> dict[str, bytes]:
    return {name: (confdir / name).read_bytes() for name in sorted(CA_NAMES)}


def _old_mitmproxy_ca(confdir: Path) -> dict[str, bytes]:
    """A CA as mitmproxy (or an older crawlguard) made it, long before this proxy starts."""
    from mitmproxy.certs import CertStore

    CertStore.create_store(confdir, "mitmproxy", 2048)
    old = time.time() - 3600
    for name in CA_NAMES:
        os.utime(confdir / name, (old, old))
    return _ca_bytes(confdir)


def _subject(confdir: Path) -> dict[str, str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    names = {NameOID.COMMON_NAME: "commonName", NameOID.ORGANIZATION_NAME: "organizationName"}
    return {names[a.oid]: str(a.value) for a in cert.subject if a.oid in names}


def _issuer_through(proxy_port: int, origin: LocalOrigin, cafile: Path) -> dict[str, str]:
    """CONNECT through the proxy as acme and complete TLS trusting only `cafile`: the issuer
    of the certificate the proxy presents for the origin."""
    auth = base64.b64encode(b"acme:acme-secret").decode()
    authority = f"127.0.0.1:{origin.port}"
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())  # fmt: skip
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        context = ssl.create_default_context(cafile=str(cafile))
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            cert = tls.getpeercert()
    assert cert is not None
    return {k: v for rdn in cert["issuer"] for k, v in rdn}


def _https_through(proxy_port: int, origin: LocalOrigin, cafile: Path) -> requests.Response:
    url = f"http://acme:acme-secret@127.0.0.1:{proxy_port}"
    return requests.get(
        origin.url("/over-tls"), proxies={"https": url}, headers={"User-Agent": GOOD_UA},
        verify=str(cafile), timeout=15,
    )  # fmt: skip


@pytest.fixture
def tls_origin(server_cert: Any) -> Iterator[LocalOrigin]:
    o = LocalOrigin(tls=server_cert)
    yield o
    o.close()


def test_run_creates_crawlguards_own_ca_and_intercepts_with_it(
    tmp_path: Path, ca_file: str, tls_origin: LocalOrigin
):
    confdir = tmp_path / "ca"
    assert not confdir.exists()
    cfg = base_config(tmp_path, proxy={"upstream_ca_file": ca_file})
    with contextmanager(running_proxy)(cfg, tmp_path) as proxy:
        assert {p.name for p in confdir.iterdir()} >= CA_NAMES
        assert _subject(confdir) == CG_SUBJECT
        for secret in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
            assert (confdir / secret).stat().st_mode & 0o077 == 0, secret
        cafile = confdir / "mitmproxy-ca-cert.pem"
        r = _https_through(proxy.port, tls_origin, cafile)
        assert r.status_code == 200, r.text
        assert r.headers["X-Crawlguard-Decision"] == "allowed"
        assert _issuer_through(proxy.port, tls_origin, cafile) == CG_SUBJECT
        assert "created crawlguard's CA" in proxy.log()
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "ca", "--config", str(proxy.config_path)],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert "Subject: CN=crawlguard CA, O=crawlguard\n" in out.stdout  # the same, not re-created


def test_run_keeps_an_existing_ca(tmp_path: Path, ca_file: str, tls_origin: LocalOrigin):
    confdir = tmp_path / "ca"
    before = _old_mitmproxy_ca(confdir)
    cfg = base_config(tmp_path, proxy={"upstream_ca_file": ca_file})
    with contextmanager(running_proxy)(cfg, tmp_path) as proxy:
        cafile = confdir / "mitmproxy-ca-cert.pem"
        assert _https_through(proxy.port, tls_origin, cafile).status_code == 200
        assert _issuer_through(proxy.port, tls_origin, cafile) == {
            "commonName": "mitmproxy", "organizationName": "mitmproxy",
        }  # fmt: skip
    assert _ca_bytes(confdir) == before
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "ca", "--config", str(proxy.config_path)],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert "Subject: CN=mitmproxy, O=mitmproxy\n" in out.stdout
    assert "mitmproxy's default CA" in out.stdout and "mitmproxy-ca*" in out.stdout  # how to rotate
    assert _ca_bytes(confdir) == before


@contextmanager
def _mitmdump(tmp_path: Path, cfg: dict[str, Any]) -> Iterator[int]:
    """mitmdump with the addon, `--set confdir=` as documented; yields its port once ready."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    log_path = tmp_path / "mitmdump.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mitmdump"), "--listen-host", "127.0.0.1",
             "-p", str(port), "--set", f"confdir={cfg['proxy']['confdir']}",
             "-s", str(REPO / "addons" / "crawlguard_addon.py"),
             "--set", f"crawlguard_config={path}"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            ready = wait_for(
                lambda: proc.poll() is not None or "crawlguard ready" in log_path.read_text(),
                timeout=30,
            )
            assert ready and proc.poll() is None, log_path.read_text()
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def test_mitmdump_uses_crawlguards_own_ca(tmp_path: Path, ca_file: str, tls_origin: LocalOrigin):
    """mitmdump applies --set confdir, and so makes its own CA, before it loads any script: the
    addon replaces that one (this process made it; nobody has it yet) and mitmproxy reloads."""
    confdir = tmp_path / "ca"
    cfg = base_config(tmp_path, proxy={"upstream_ca_file": ca_file, "confdir": str(confdir)},
                      admin={"port": free_port()})  # fmt: skip
    with _mitmdump(tmp_path, cfg) as port:
        assert _subject(confdir) == CG_SUBJECT
        cafile = confdir / "mitmproxy-ca-cert.pem"
        r = _https_through(port, tls_origin, cafile)
        assert r.status_code == 200, r.text
        assert _issuer_through(port, tls_origin, cafile) == CG_SUBJECT


def test_mitmdump_keeps_an_existing_ca(tmp_path: Path, ca_file: str, tls_origin: LocalOrigin):
    confdir = tmp_path / "ca"
    before = _old_mitmproxy_ca(confdir)
    cfg = base_config(tmp_path, proxy={"upstream_ca_file": ca_file, "confdir": str(confdir)},
                      admin={"port": free_port()})  # fmt: skip
    with _mitmdump(tmp_path, cfg) as port:
        cafile = confdir / "mitmproxy-ca-cert.pem"
        assert _https_through(port, tls_origin, cafile).status_code == 200
    assert _ca_bytes(confdir) == before


def test_ensure_ca_creates_once_and_never_replaces(tmp_path: Path):
    from cryptography.hazmat.primitives.serialization import pkcs12
    from mitmproxy.certs import CertStore

    from crawlguard.proxy import ca

    confdir = tmp_path / "fresh"
    assert ca.ensure_ca(confdir) is True
    first = _ca_bytes(confdir)
    assert _subject(confdir) == CG_SUBJECT
    store = CertStore.from_store(confdir, "mitmproxy", 2048)  # what mitmproxy loads
    assert (store.default_ca.cn, store.default_ca.organization) == ("crawlguard CA", "crawlguard")
    key, cert, _ = pkcs12.load_key_and_certificates(first["mitmproxy-ca.p12"], None)
    assert key is not None and cert == store.default_ca._cert
    assert first["mitmproxy-ca-cert.pem"] == first["mitmproxy-ca-cert.cer"]
    assert ca.ensure_ca(confdir) is False
    assert _ca_bytes(confdir) == first

    old = tmp_path / "old"
    before = _old_mitmproxy_ca(old)
    assert ca.ensure_ca(old) is False
    assert _ca_bytes(old) == before


def test_only_a_default_ca_made_since_start_is_replaced(tmp_path: Path):
    from mitmproxy.certs import CertStore

    from crawlguard.proxy import ca

    confdir = tmp_path / "ca"
    before = _old_mitmproxy_ca(confdir)  # an hour old
    assert ca.replace_fresh_default_ca(confdir, since=time.time() - 60) is False
    assert _ca_bytes(confdir) == before

    fresh = tmp_path / "fresh"
    since = time.time() - 1
    CertStore.create_store(fresh, "mitmproxy", 2048)  # as mitmdump's TlsConfig does
    assert ca.replace_fresh_default_ca(fresh, since=since) is True
    assert _subject(fresh) == CG_SUBJECT
    mine = _ca_bytes(fresh)
    assert ca.replace_fresh_default_ca(fresh, since=since) is False  # crawlguard's: kept
    assert _ca_bytes(fresh) == mine

    start = ca.process_start_time()
    assert start is not None and start <= time.time()


def test_concurrent_starts_make_one_consistent_ca(tmp_path: Path):
    from crawlguard.proxy import ca

    confdir = tmp_path / "ca"
    barrier = threading.Barrier(6)

    def create() -> bool:
        barrier.wait()
        return ca.ensure_ca(confdir)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: create(), range(6)))
    assert results.count(True) == 1
    files = _ca_bytes(confdir)
    assert files["mitmproxy-ca.pem"].endswith(files["mitmproxy-ca-cert.pem"])
    assert not [p.name for p in confdir.iterdir() if p.name.endswith(".tmp")]


def test_mitmdump_says_which_listen_keys_it_does_not_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under mitmdump its own flags win; a config that says otherwise gets a warning per key."""
    from types import SimpleNamespace

    from crawlguard.config import parse_config
    from crawlguard.proxy.addon import warn_unapplied_listen_keys

    cfg = parse_config(base_config(tmp_path, proxy={"listen_port": 8081}))
    same = SimpleNamespace(listen_host="127.0.0.1", listen_port=8081, confdir=str(tmp_path / "ca"))
    assert warn_unapplied_listen_keys(same, cfg) == []
    other = SimpleNamespace(listen_host="", listen_port=None, confdir="~/.mitmproxy")
    with caplog.at_level("WARNING", logger="crawlguard"):
        ignored = warn_unapplied_listen_keys(other, cfg)
    assert ignored == ["proxy.listen_host", "proxy.listen_port", "proxy.confdir"]
    assert "proxy.listen_port=8081 is not applied under mitmdump" in caplog.text
