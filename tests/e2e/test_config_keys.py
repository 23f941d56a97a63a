"""Every config key does what it says, or is rejected (SPEC "Config").

`KEY_TESTS` maps each leaf key of the pydantic model (crawlguard.config.Config, walked
recursively, tenant entries as `tenants[].key`) to the tests that show the key changes
behaviour. The meta tests fail when a key has no entry, when an entry names a test file or
function that does not exist (checked by parsing the files with `ast`, nothing is imported or
run), or when an entry names a key the model no longer has. Keys no other test showed are
tested here, against the real proxy (subprocess) and real origins on 127.0.0.1.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import signal
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import requests
import trustme
import yaml
from harness import GOOD_UA, LocalOrigin, Proxy, Route, base_config, free_port, tenant, wait_for
from pydantic import BaseModel
from rawhttp import auth, request_bytes, send

from crawlguard.config import Config

TESTS = Path(__file__).resolve().parents[1]
HERE = "tests/e2e/test_config_keys.py"

# -- the table -------------------------------------------------------------------------------

KEY_TESTS: dict[str, list[str]] = {
    # proxy
    "proxy.listen_host": [
        f"{HERE}::test_ports_and_hosts_from_the_file_without_flags",
        f"{HERE}::test_listen_host_is_the_address_bound",
    ],
    "proxy.listen_port": [f"{HERE}::test_ports_and_hosts_from_the_file_without_flags"],
    "proxy.confdir": [
        "tests/e2e/test_mitmdump_and_ca.py::test_ca_command_shows_and_exports",
        # verifies with confdir's CA
        "tests/e2e/test_proxy_e2e.py::test_https_with_auth_on_connect",
    ],
    "proxy.upstream_ca_file": [f"{HERE}::test_upstream_ca_file_is_trusted_for_origins"],
    "proxy.max_connections": [
        "tests/e2e/test_client_limits.py::test_connections_over_the_cap_are_closed",
        "tests/e2e/test_client_limits.py::test_one_source_filling_max_connections_does_not_shut_out_another",
    ],
    "proxy.max_unauthenticated_per_source": [
        "tests/e2e/test_client_limits.py::test_a_source_over_its_unauthenticated_cap_loses_its_oldest_connections",
        "tests/e2e/test_client_limits.py::test_authenticated_connections_are_never_closed_for_the_cap",
    ],
    "proxy.header_timeout": [
        "tests/e2e/test_client_limits.py::test_a_slow_request_head_is_closed",
        "tests/e2e/test_client_limits.py::test_requests_in_flight_outlive_the_header_timeout",
    ],
    "proxy.max_request_head": [f"{HERE}::test_request_head_caps_follow_the_config"],
    "proxy.max_request_line": [f"{HERE}::test_request_head_caps_follow_the_config"],
    # admin
    "admin.listen_host": [
        f"{HERE}::test_ports_and_hosts_from_the_file_without_flags",
        f"{HERE}::test_listen_host_is_the_address_bound",
    ],
    "admin.port": [
        f"{HERE}::test_ports_and_hosts_from_the_file_without_flags",
        "tests/e2e/test_mitmdump_and_ca.py::test_mitmdump_runs_the_same_addon",
    ],
    "admin.token_sha256": [
        "tests/e2e/test_admin_api.py::test_api_needs_the_operator_token",
        "tests/e2e/test_admin_api.py::test_without_an_operator_token_the_api_and_dashboard_refuse",
        "tests/e2e/test_admin_api.py::test_sighup_with_a_new_token_revokes_the_old_one",
    ],
    "admin.token_env": ["tests/e2e/test_admin_api.py::test_token_env_is_the_operator_token"],
    # store
    "store.url": [
        "tests/e2e/test_proxy_e2e.py::test_records_survive_a_restart",
        "tests/e2e/test_violations_cli.py::test_relative_paths_are_relative_to_the_config_file",
    ],
    "store.retention_days": [
        "tests/unit/test_records_bounded.py::test_guard_runs_retention_in_the_background",
        "tests/unit/test_records_bounded.py::test_guard_without_retention_starts_no_prune",
        "tests/e2e/test_records_folded.py::test_retention_is_set_by_default_and_in_every_shipped_config",
    ],
    "store.fold_after": [
        "tests/e2e/test_records_folded.py::test_a_client_refused_in_a_loop_leaves_n_plus_one_records",
    ],
    "store.fold_tenant_after": [
        "tests/e2e/test_records_folded.py::test_a_tenant_cycling_through_hosts_is_bounded_per_tenant",
    ],
    "store.fold_interval": [
        "tests/e2e/test_records_folded.py::test_folded_records_are_written_when_their_interval_ends",
    ],
    "store.min_free_bytes": [
        "tests/e2e/test_records_folded.py::test_healthz_and_the_gauges_report_a_store_disk_nearly_full",
    ],
    # state
    "state.url": [
        "tests/e2e/test_state_e2e.py::test_two_proxies_sharing_redis_pace_a_tenant_as_one"
    ],
    "state.on_error": [
        "tests/e2e/test_state_e2e.py::test_redis_killed_on_error_closed_refuses_503_then_recovers",
        "tests/e2e/test_state_e2e.py::test_redis_killed_on_error_open_paces_per_process_then_shares_again",
        "tests/e2e/test_config.py::test_bad_limit_keys_exit_2",  # open with memory://: exit 2
    ],
    # robots
    "robots.user_agent": ["tests/e2e/test_robots_e2e.py::test_disallowed_url_never_reaches_origin"],
    "robots.max_age": [f"{HERE}::test_robots_max_age_bounds_the_cache_lifetime"],
    "robots.fetch_timeout": [f"{HERE}::test_robots_fetch_timeout_is_the_limit"],
    "robots.max_origins": [f"{HERE}::test_robots_max_origins_evicts_the_oldest"],
    "robots.parse_workers": [
        "tests/e2e/test_robots_parse_pool.py::test_parse_workers_is_the_number_of_parser_processes",
    ],
    "robots.parse_timeout": [
        "tests/e2e/test_robots_parse_pool.py::"
        "test_a_parse_past_parse_timeout_fails_that_site_closed_then_its_rules_apply_unfetched",
    ],
    # destinations
    "destinations.allow_private": [
        "tests/e2e/test_attacks.py::test_forbidden_destinations_in_every_spelling_and_mode",
        "tests/inprocess/test_addon_inprocess.py::test_forbidden_destinations_every_mode",
        "tests/e2e/test_egress.py::test_policy_from_config_uses_hosts_and_ttl",
    ],
    "destinations.allowed_ports": [
        "tests/e2e/test_proxy_e2e.py::test_destination_forbidden_private_address_and_port",
        "tests/e2e/test_attacks.py::test_robots_redirect_to_a_forbidden_port_is_never_fetched",
    ],
    "destinations.hosts": [
        "tests/e2e/test_config.py::test_destinations_hosts_are_canonicalised_and_used",
        "tests/inprocess/test_addon_inprocess.py::test_forbidden_destinations_every_mode",
    ],
    "destinations.dns_cache_ttl": [
        # config -> resolver
        "tests/e2e/test_egress.py::test_policy_from_config_uses_hosts_and_ttl",
        "tests/e2e/test_egress.py::test_ttl_and_cache_hits_do_no_io",  # the resolver's ttl
    ],
    # pacing
    "pacing.default_min_interval": [
        "tests/e2e/test_pacing_e2e.py::test_default_min_interval_applies_without_robots_delay",
    ],
    "pacing.max_hold": [
        "tests/e2e/test_pacing_e2e.py::test_delay_beyond_max_hold_is_refused_and_not_forwarded",
    ],
    "pacing.max_held": [
        "tests/e2e/test_client_limits.py::test_held_requests_are_capped",
        "tests/e2e/test_integrity.py::test_a_tenant_filling_the_held_pool_cannot_make_another_one_a_violator",
    ],
    "pacing.scope": [
        "tests/e2e/test_integrity.py::test_two_ports_of_one_host_share_a_slot_unless_scope_is_origin",
        "tests/e2e/test_integrity.py::test_names_of_one_address_share_a_slot_with_scope_address",
    ],
    # tenants
    "tenants[].id": [
        "tests/e2e/test_proxy_e2e.py::test_allowed_request_reaches_origin_without_proxy_credentials",
        "tests/e2e/test_proxy_e2e.py::test_bad_credentials_get_407_and_never_reach_origin",
    ],
    "tenants[].token_sha256": [
        "tests/e2e/test_proxy_e2e.py::test_bad_credentials_get_407_and_never_reach_origin",
    ],
    "tenants[].token_env": [f"{HERE}::test_tenant_token_env_authenticates"],
    "tenants[].product_tokens": [
        "tests/e2e/test_proxy_e2e.py::test_user_agent_decisions",  # ua-mismatch
        "tests/e2e/test_reload.py::test_reload_adds_a_tenant_and_keeps_open_connections",
    ],
    "tenants[].mode": [
        "tests/e2e/test_proxy_e2e.py::test_monitor_mode_forwards_and_logs",
        "tests/e2e/test_proxy_e2e.py::test_off_mode_forwards_and_records_nothing",
        "tests/e2e/test_reload.py::test_sighup_changes_a_mode",
    ],
    "tenants[].pacing": [
        "tests/e2e/test_pacing_e2e.py::test_reject_mode_429_with_retry_after_then_200",
        "tests/e2e/test_pacing_e2e.py::test_delay_mode_holds_requests_fifo_and_spaced",
    ],
    "tenants[].max_concurrency": [
        "tests/e2e/test_limits_e2e.py::test_max_concurrency_until_the_first_completes",
    ],
    "tenants[].max_rps": ["tests/e2e/test_limits_e2e.py::test_max_rps_limits_one_tenant_only"],
    "tenants[].allow_hosts": [
        "tests/e2e/test_limits_e2e.py::test_allow_hosts_admit_only_matching_hosts",
    ],
    "tenants[].deny_hosts": [
        "tests/e2e/test_limits_e2e.py::test_deny_hosts_refuse_before_anything_reaches_the_origin",
    ],
}

PENDING: dict[str, str] = {}
"""Keys whose behaviour tests are being written alongside their feature (key -> note): while
the named test file does not exist the existence check is skipped with the note; once it
exists, it is enforced like any other entry (a pattern must match at least one function)."""


# -- the model's keys ------------------------------------------------------------------------


def _submodel(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model inside an annotation, and whether it sits in a list (tenant entries)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            listed = found[1] or origin in (list, tuple, set, frozenset)
            if origin is Union or origin is types.UnionType:
                listed = found[1]
            return found[0], listed
    return None


def leaf_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{info.alias or name}"
        sub = _submodel(info.annotation)
        if sub is None:
            keys.append(dotted)
        else:
            inner, listed = sub
            keys += leaf_keys(inner, f"{dotted}[]." if listed else f"{dotted}.")
    return keys


def sections() -> dict[str, tuple[type[BaseModel], bool]]:
    """Top-level keys holding a model (section or list of entries)."""
    out: dict[str, tuple[type[BaseModel], bool]] = {}
    for name, info in Config.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is not None:
            out[name] = sub
    return out


@cache
def functions_in(path: str) -> frozenset[str] | None:
    """Test function names in a test file (`Class::func` for methods), None if no file."""
    file = TESTS.parent / path
    if not file.is_file():
        return None
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return frozenset(n for n in names if n.split("::")[-1].startswith("test"))


def tier_hint(path: str) -> str:
    """Where a test file named by its pre-tier path (tests/test_x.py) lives now."""
    found = sorted(str(p.relative_to(TESTS.parent)) for p in TESTS.glob(f"*/{Path(path).name}"))
    return f"; the tests are in tiers now: {', '.join(found)}" if found else ""


def test_every_config_key_has_a_behaviour_test() -> None:
    keys = leaf_keys()
    assert len(keys) == len(set(keys))
    assert "proxy.listen_port" in keys and "tenants[].max_rps" in keys  # the walk works
    missing = sorted(set(keys) - KEY_TESTS.keys())
    assert not missing, f"config keys without a behaviour test in KEY_TESTS: {missing}"
    stale = sorted(KEY_TESTS.keys() - set(keys))
    assert not stale, f"KEY_TESTS names keys the config model does not have: {stale}"
    assert all(KEY_TESTS[k] for k in keys), "every entry names at least one test"
    assert PENDING.keys() <= KEY_TESTS.keys()


@pytest.mark.parametrize("key", sorted(KEY_TESTS))
def test_key_table_names_existing_tests(key: str) -> None:
    for node_id in KEY_TESTS[key]:
        path, sep, name = node_id.partition("::")
        assert sep and path.startswith("tests/") and path.endswith(".py"), node_id
        name = re.sub(r"\[.*\]$", "", name)  # a parametrized id names its function
        functions = functions_in(path)
        if functions is None and key in PENDING:
            pytest.skip(f"{key}: {path} does not exist yet ({PENDING[key]})")
        assert functions is not None, f"{key}: {path} does not exist{tier_hint(path)}"
        if any(c in name for c in "*?["):
            assert fnmatch.filter(sorted(functions), name), f"{key}: nothing in {path} is {name}"
        else:
            assert name in functions, f"{key}: {path} has no test {name}"


# -- unknown keys ----------------------------------------------------------------------------


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


# -- keys shown here -------------------------------------------------------------------------


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
