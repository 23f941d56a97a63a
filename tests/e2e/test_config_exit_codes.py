"""Bad configs through `crawlguard run` (a subprocess): each kind of error exits 2 without
starting, naming the key and the reason. What the config model accepts and refuses in-process:
tests/unit/test_config.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import base_config, tenant

from crawlguard.config import ConfigError, parse_config


def run_with(tmp_path: Path, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(path), *flags],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip


def mutate(tmp: Path, change: Any) -> str:
    cfg = base_config(tmp)
    change(cfg)
    return yaml.safe_dump(cfg)


CASES = [
    ("unknown top-level key", lambda c: c.update(proxies={}), ["proxies", "unknown key"]),
    ("unknown nested key", lambda c: c["robots"].update(agent="x"),
     ["robots.agent", "unknown key"]),
    ("port out of range", lambda c: c["proxy"].update(listen_port=70000), ["proxy.listen_port"]),
    ("wrong type", lambda c: c["pacing"].update(max_hold="soon"), ["pacing.max_hold"]),
    ("bad mode", lambda c: c["tenants"][0].update(mode="strict"), ["tenants[acme].mode"]),
    ("bad hash", lambda c: c["tenants"][0].update(token_sha256="abc"),
     ["tenants[acme].token_sha256", "SHA-256"]),
    ("short product token", lambda c: c["tenants"][0].update(product_tokens=["Ab"]),
     ["tenants[acme].product_tokens", "'Ab'"]),
    ("well-known crawler token", lambda c: c["tenants"][0].update(product_tokens=["Googlebot"]),
     ["tenants[acme].product_tokens", "Googlebot"]),
    ("token shared by two tenants",
     lambda c: c["tenants"].append(tenant("evil", ["acmebot"])), ["'acme'", "'evil'", "acmebot"]),
    ("bad port range", lambda c: c["destinations"].update(allowed_ports=["90-80"]),
     ["destinations.allowed_ports"]),
    ("unsupported state url", lambda c: c["state"].update(url="mysql://x"), ["state.url"]),
    ("token_env unset", lambda c: c["tenants"][0].update(token_sha256=None, token_env="NOPE_X"),
     ["tenants[acme].token_env", "NOPE_X"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "change", "needles"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, name: str, change: Any, needles: Any):
    text = mutate(tmp_path, change)
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_load(text))
    for needle in needles:
        assert needle in str(exc.value), (needle, str(exc.value))
    if name in ("unknown top-level key", "token shared by two tenants"):  # the real CLI too
        proc = run_with(tmp_path, text)
        assert proc.returncode == 2
        assert needles[0] in proc.stderr
        assert "ready" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "needle"),
    [("proxy: [1, 2\n", "YAML syntax error"), ("- just\n- a list\n", "top level"),
     ("\xff\xfe", "")],
)  # fmt: skip
def test_unparseable_files(tmp_path: Path, text: str, needle: str):
    proc = run_with(tmp_path, text)
    assert proc.returncode == 2
    assert needle in proc.stderr


def test_missing_file_exits_2(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr and "cannot read" in proc.stderr


def test_bad_flag_value_exits_2(tmp_path: Path):
    proc = run_with(tmp_path, yaml.safe_dump(base_config(tmp_path)), "--listen-port", "99999")
    assert proc.returncode == 2
    assert "listen_port" in proc.stderr


LIMIT_CASES = [
    ("state.on_error without shared state",
     lambda c: c["state"].update(on_error="open"),
     ["state.on_error", "only meaningful with a shared state.url (redis://)",
      "memory:// state cannot fail"]),
    ("deny_hosts glob with whitespace",
     lambda c: c["tenants"][0].update(deny_hosts=["evil .test"]),
     ["tenants[acme].deny_hosts", "whitespace"]),
    ("empty allow_hosts glob", lambda c: c["tenants"][0].update(allow_hosts=[""]),
     ["tenants[acme].allow_hosts", "non-empty"]),
    ("overlong glob", lambda c: c["tenants"][0].update(allow_hosts=["*." + "a" * 260]),
     ["tenants[acme].allow_hosts", "longer than 253"]),
    ("max_rps zero", lambda c: c["tenants"][0].update(max_rps=0), ["tenants[acme].max_rps"]),
    ("max_concurrency zero", lambda c: c["tenants"][0].update(max_concurrency=0),
     ["tenants[acme].max_concurrency"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "change", "needles"), LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES]
)
def test_bad_limit_keys_exit_2(tmp_path: Path, name: str, change: Any, needles: Any) -> None:
    text = mutate(tmp_path, change)
    proc = run_with(tmp_path, text)
    assert proc.returncode == 2, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert "ready" not in proc.stderr


def test_an_unreadable_upstream_ca_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, proxy={"upstream_ca_file": str(tmp_path / "missing.pem")})
    path = tmp_path / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "crawlguard", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "proxy.upstream_ca_file: cannot load" in done.stderr
    assert "Traceback" not in done.stderr
