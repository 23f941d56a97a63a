"""`crawlguard tenants …` as an operator runs it (subprocesses), on SQLite and PostgreSQL, and
a running proxy with `tenancy.source: store` picking up what the CLI changed, without a
restart: a tenant added is let through, a disabled one gets 407.

The registry's own contract: tests/inprocess/test_tenancy_registry.py; the sync:
tests/inprocess/test_tenancy_sync.py; the API lifecycle: the admin API's tests.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from harness import GOOD_UA, LocalOrigin, Proxy, base_config, sha256_hex, tenant, wait_for
from redisutil import redis_base, redis_url  # noqa: F401

from crawlguard.config import load_config
from crawlguard.tenancy import open_registry

if TYPE_CHECKING:
    from pgutil import PgSchema

pytest_plugins = ["pgutil"]  # fixtures: pg_server, pg_schema


def write_config(tmp: Path, store_url: str, **tenancy: Any) -> Path:
    path = tmp / "crawlguard.yaml"
    cfg = {"store": {"url": store_url}, "tenancy": {"source": "store", **tenancy}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", "tenants", "--config", str(config), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        cwd=config.parent,
    )


def error(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(out.stderr.strip().splitlines()[-1])


def lifecycle(config: Path, *, full: bool = True) -> None:
    """The CLI against the store `config` names (`full=False`: the calls that touch the
    database differently, not every error path again)."""
    added = cli(
        config, "add", "--id", "acme", "--product-token", "AcmeBot", "--max-rps", "2",
        "--weight", "2",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert added.stdout == token + "\n" and len(token) >= 40  # the token alone on stdout
    assert "acme" in added.stderr and token not in added.stderr

    dup = cli(config, "add", "--id", "copycat", "--product-token", "ACMEBOT")
    assert dup.returncode == 2 and dup.stdout == ""
    assert error(dup)["field"] == "product_tokens"
    assert "'acme'" in error(dup)["error"] and "'copycat'" in error(dup)["error"]
    if full:
        exists = cli(config, "add", "--id", "acme", "--product-token", "OtherBot")
        assert exists.returncode == 1 and error(exists)["field"] == "id"
        bad = cli(config, "add", "--id", "b@d", "--product-token", "GoodBot")
        assert bad.returncode == 2 and error(bad)["field"] == "id"

    listed = cli(config, "list", "--format", "json")
    assert listed.returncode == 0
    [entry] = json.loads(listed.stdout)
    assert entry["id"] == "acme" and entry["max_rps"] == 2 and not entry["disabled"]
    assert entry["weight"] == 2.0
    table = cli(config, "list").stdout if full else ""
    assert not full or ("acme" in table and "AcmeBot" in table)
    digest = hashlib.sha256(token.encode()).hexdigest()
    for out in (listed.stdout, table):
        assert token not in out and digest not in out

    changed = cli(config, "set", "acme", "--mode", "monitor", "--max-rps", "none", "--weight", ".5")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["mode"] == "monitor"
    assert json.loads(changed.stdout)["weight"] == 0.5
    if full:
        shown = json.loads(cli(config, "show", "acme").stdout)
        assert shown["mode"] == "monitor" and shown["max_rps"] is None
        assert shown["weight"] == 0.5
        assert "weight=0.5" in cli(config, "list").stdout
        for bad in ("0", "1001", "heavy", "none"):
            refused = cli(config, "set", "acme", "--weight", bad)
            assert refused.returncode == 2 and "--weight" in refused.stderr, bad
        missing = cli(config, "show", "ghost")
        assert missing.returncode == 1 and "ghost" in error(missing)["error"]

    rotated = cli(config, "rotate", "acme")
    assert rotated.returncode == 0, rotated.stderr
    new_token = rotated.stdout.strip()
    assert rotated.stdout == new_token + "\n" and new_token != token

    seed = {
        "tenants": [
            tenant("imported", ["ImportBot"]),
            tenant("acme", ["AcmeBot"]),  # already there: skipped, the registry's kept
        ]
    }
    (config.parent / "tenants.yaml").write_text(yaml.safe_dump(seed))
    first = cli(config, "import", "tenants.yaml")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "imported imported",
        "skipped acme (already in the registry)",
    ]
    if full:
        again = cli(config, "import", "-", stdin=yaml.safe_dump(seed["tenants"]))  # bare list
        assert again.returncode == 0 and "imported imported" not in again.stdout
        assert again.stdout.count("skipped") == 2

    disabled = cli(config, "disable", "acme")
    assert disabled.returncode == 0
    if full:
        listed = cli(config, "list", "--format", "json")
        states = {t["id"]: t["disabled"] for t in json.loads(listed.stdout)}
        assert states == {"acme": True, "imported": False}
        assert cli(config, "rotate", "acme").returncode == 1  # disabled: refused

    registry = open_registry(load_config(config, secrets=False))
    try:
        actions = [(e.action, e.actor.startswith("cli:")) for e in registry.audit(tenant="acme")]
        assert actions == [("disable", True), ("rotate", True), ("update", True), ("create", True)]
        running, _ = registry.running_set()
        assert {t.id: t.token_sha256 for t in running} == {
            "imported": sha256_hex("imported-secret")
        }
    finally:
        registry.close()


def test_cli_lifecycle_on_sqlite(tmp_path: Path) -> None:
    lifecycle(write_config(tmp_path, "sqlite:///var/crawlguard.db"))
    assert (tmp_path / "var" / "crawlguard.db").exists()  # relative to the config's folder


def test_cli_lifecycle_on_postgresql(tmp_path: Path, pg_schema: PgSchema) -> None:
    lifecycle(write_config(tmp_path, pg_schema.url()), full=False)
    assert pg_schema.count("tenancy_tenants") == 2


def test_cli_needs_tenancy_source_store(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sqlite:///var/crawlguard.db", source="file")
    out = cli(config, "list")
    assert out.returncode == 2 and error(out)["field"] == "tenancy.source"
    assert "tenancy.source: store" in error(out)["error"]


@pytest.mark.parametrize("grace", [0, 3600])
def test_rotate_keeps_the_old_token_for_tenancy_rotate_grace(tmp_path: Path, grace: int) -> None:
    config = write_config(tmp_path, "sqlite:///var/crawlguard.db", rotate_grace=grace)
    assert cli(config, "add", "--id", "acme", "--product-token", "AcmeBot").returncode == 0
    before = time.time()
    rotated = cli(config, "rotate", "acme")
    assert rotated.returncode == 0, rotated.stderr
    registry = open_registry(load_config(config, secrets=False))
    try:
        _, retired = registry.running_set()
    finally:
        registry.close()
    if grace == 0:
        assert retired == {} and "no longer works" in rotated.stderr
    else:
        [(_, expires)] = retired["acme"]
        assert before + grace <= expires <= time.time() + grace


# -- a running proxy -------------------------------------------------------------------------


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin()
    yield o
    o.close()


def through(proxy: Proxy, site: LocalOrigin, tenant_id: str, token: str, ua: str) -> int:
    url = f"http://{tenant_id}:{token}@127.0.0.1:{proxy.port}"
    try:
        return requests.get(
            site.url("/page"),
            proxies={"http": url, "https": url},
            headers={"User-Agent": ua},
            timeout=10,
        ).status_code
    except requests.RequestException:
        return -1


def test_a_running_proxy_picks_up_cli_changes(tmp_path: Path, site: LocalOrigin) -> None:
    cfg = base_config(tmp_path, tenancy={"source": "store"})
    cfg["tenants"] = [tenant("acme", ["AcmeBot"])]  # the seed
    proxy = Proxy(cfg, tmp_path)
    try:
        # seeded from the file before the proxy served its first request
        assert through(proxy, site, "acme", "acme-secret", GOOD_UA) == 200
        config = proxy.config_path
        added = cli(config, "add", "--id", "newco", "--product-token", "NewcoBot")
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip()
        ua = "NewcoBot/2.0 (+https://newco.example/bot)"
        assert wait_for(lambda: through(proxy, site, "newco", token, ua) == 200, 10)
        assert site.paths().count("/page") >= 2
        disabled = cli(config, "disable", "newco")
        assert disabled.returncode == 0, disabled.stderr
        assert wait_for(lambda: through(proxy, site, "newco", token, ua) == 407, 10)
        assert through(proxy, site, "acme", "acme-secret", GOOD_UA) == 200
        assert token not in proxy.log()
    finally:
        assert proxy.stop() == 0, proxy.log()


def test_every_worker_applies_a_change_on_postgresql(
    tmp_path: Path,
    site: LocalOrigin,
    pg_schema: PgSchema,
    redis_url: str,  # noqa: F811
) -> None:
    """`--workers 2` on PostgreSQL: each worker LISTENs and applies the change itself (its log
    says which version it runs), so after that every connection, whichever worker takes it,
    gets the new answer."""
    cfg = base_config(
        tmp_path,
        tenancy={"source": "store"},
        store={"url": pg_schema.url()},
        state={"url": redis_url},
    )
    cfg["tenants"] = [tenant("acme", ["AcmeBot"])]
    proxy = WorkersProxy(cfg, tmp_path)
    try:
        config = proxy.config_path
        registry = open_registry(load_config(config, secrets=False))
        try:
            added = cli(config, "add", "--id", "newco", "--product-token", "NewcoBot")
            assert added.returncode == 0, added.stderr
            token = added.stdout.strip()
            ua = "NewcoBot/2.0 (+https://newco.example/bot)"
            assert wait_for(lambda: applied_by_both(proxy, registry.version()), 10), proxy.log()
            assert all(through(proxy, site, "newco", token, ua) == 200 for _ in range(10))
            assert cli(config, "disable", "newco").returncode == 0
            assert wait_for(lambda: applied_by_both(proxy, registry.version()), 10), proxy.log()
            assert all(through(proxy, site, "newco", token, ua) == 407 for _ in range(10))
            assert through(proxy, site, "acme", "acme-secret", GOOD_UA) == 200
        finally:
            registry.close()
    finally:
        assert proxy.stop() == 0, proxy.log()


def applied_by_both(proxy: Proxy, version: int) -> bool:
    lines = proxy.log().splitlines()
    return all(
        any(f"[worker {i}]" in line and f"(version {version}) applied" in line for line in lines)
        for i in (1, 2)
    )


class WorkersProxy(Proxy):
    """`crawlguard run --workers 2` (as tests/e2e/test_workers.py starts it)."""

    def _start(self, env: dict[str, str] | None) -> None:
        cmd = [
            sys.executable, "-m", "crawlguard", "run", "--config", str(self.config_path),
            "--listen-port", str(self.port), "--admin-port", str(self.admin_port),
            "--workers", "2",
        ]  # fmt: skip
        self._err = self.log_path.open("ab")
        self._out = self.out_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=self.tmp, stdout=self._out, stderr=self._err)
        if not wait_for(
            lambda: self.proc.poll() is not None or "crawlguard ready" in self.log(), 60
        ):
            self.stop()
            raise RuntimeError(f"proxy did not become ready:\n{self.log()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited {self.proc.returncode}:\n{self.log()}")
