"""The addon under stock mitmdump (same code as `crawlguard run`), and `crawlguard ca`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from harness import GOOD_UA, REPO, LocalOrigin, base_config, free_port


def test_mitmdump_runs_the_same_addon(tmp_path: Path, origin: LocalOrigin):
    cfg = base_config(tmp_path, admin={"port": free_port()})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    log = (tmp_path / "mitmdump.log").open("wb")
    proc = subprocess.Popen(
        [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port),
         "--set", f"confdir={tmp_path / 'ca'}",
         "-s", str(REPO / "addons" / "crawlguard_addon.py"),
         "--set", f"crawlguard_config={path}"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
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

    from crawlguard.addon import SAFE_OPTIONS, CrawlGuardAddon
    from crawlguard.config import parse_config
    from crawlguard.service import Guard

    guard = Guard(parse_config(base_config(tmp_path)))
    addon = CrawlGuardAddon(guard)
    try:
        with taddons.context(Proxyserver(), addon) as tctx:
            tctx.configure(addon, rawtcp=True, http2=True, connection_strategy="eager")
            assert {n: getattr(tctx.options, n) for n in SAFE_OPTIONS} == SAFE_OPTIONS
    finally:
        guard.store.close()
