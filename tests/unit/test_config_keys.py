"""Every config key does what it says, or is rejected (SPEC "Config").

`KEY_TESTS` maps each leaf key of the pydantic model (crawlguard.config.Config, walked
recursively, tenant entries as `tenants[].key`) to the tests that show the key changes
behaviour. The meta tests fail when a key has no entry, when an entry names a test file or
function that does not exist (checked by parsing the files with `ast`, nothing is imported or
run), or when an entry names a key the model no longer has. Keys no other test showed are
shown in tests/e2e/test_config_keys_e2e.py, against the real proxy and real origins.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from functools import cache
from pathlib import Path

import pytest
from configmodel import leaf_keys

TESTS = Path(__file__).resolve().parents[1]
HERE = "tests/e2e/test_config_keys_e2e.py"  # the keys no other test showed
SITES = "tests/unit/test_sites.py"
BUDGET = "tests/e2e/test_site_budget.py"
FAIR = "tests/e2e/test_site_budget_fair.py"

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
        "tests/inprocess/test_admin_api.py::test_api_needs_the_operator_token",
        "tests/inprocess/test_admin_api.py::test_without_an_operator_token_the_api_and_dashboard_refuse",
        "tests/e2e/test_admin_api_live.py::test_sighup_with_a_new_token_revokes_the_old_one",
    ],
    "admin.token_env": ["tests/inprocess/test_admin_api.py::test_token_env_is_the_operator_token"],
    "admin.token_label": [
        "tests/inprocess/test_tenants_api.py::test_the_audit_names_the_operator_token_label",
    ],
    # store
    "store.url": [
        "tests/e2e/test_proxy_e2e.py::test_records_survive_a_restart",
        "tests/e2e/test_violations_cli.py::test_relative_paths_are_relative_to_the_config_file",
    ],
    "store.retention_days": [
        "tests/unit/test_records_bounded.py::test_guard_runs_retention_in_the_background",
        "tests/unit/test_records_bounded.py::test_guard_without_retention_starts_no_prune",
        "tests/unit/test_records_fold_rules.py::test_retention_is_set_by_default_and_in_every_shipped_config",
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
        # open with memory://: exit 2
        "tests/e2e/test_config_exit_codes.py::test_bad_limit_keys_exit_2",
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
        "tests/unit/test_egress.py::test_policy_from_config_uses_hosts_and_ttl",
    ],
    "destinations.allowed_ports": [
        "tests/e2e/test_proxy_e2e.py::test_destination_forbidden_private_address_and_port",
        "tests/e2e/test_attacks.py::test_robots_redirect_to_a_forbidden_port_is_never_fetched",
    ],
    "destinations.hosts": [
        "tests/unit/test_config.py::test_destinations_hosts_are_canonicalised_and_used",
        "tests/inprocess/test_addon_inprocess.py::test_forbidden_destinations_every_mode",
    ],
    "destinations.dns_cache_ttl": [
        # config -> resolver
        "tests/unit/test_egress.py::test_policy_from_config_uses_hosts_and_ttl",
        "tests/unit/test_egress.py::test_ttl_and_cache_hits_do_no_io",  # the resolver's ttl
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
    # platform (issue 22): the shared per-site budget's behaviour is shown against the real
    # proxy in tests/e2e/test_site_budget*.py; the unit tests show what each key selects
    "platform.site_key": [
        f"{SITES}::test_domain_mode_is_the_registrable_domain",
        f"{BUDGET}::test_shared_and_per_tenant_crawl_delay",
    ],
    "platform.crawl_delay": [
        f"{FAIR}::test_shared_crawl_delay_three_delay_tenants",
        f"{BUDGET}::test_shared_and_per_tenant_crawl_delay",
    ],
    "platform.site_budget.max_rps": [
        f"{SITES}::test_null_means_no_cap",
        f"{BUDGET}::test_site_budget_caps_the_platform_without_crawl_delay",
    ],
    "platform.site_budget.max_concurrency": [
        f"{SITES}::test_null_means_no_cap",
        f"{BUDGET}::test_site_budget_max_concurrency",
    ],
    "platform.site_overrides[].site": [
        f"{SITES}::test_overrides_first_match_wins_and_fields_inherit",
        f"{SITES}::test_overrides_match_the_site_key_so_domain_mode_names_domains",
        f"{BUDGET}::test_site_override_raises_the_budget",
    ],
    "platform.site_overrides[].max_rps": [
        f"{SITES}::test_overrides_first_match_wins_and_fields_inherit",
        f"{BUDGET}::test_site_override_raises_the_budget",
    ],
    "platform.site_overrides[].max_concurrency": [
        f"{SITES}::test_overrides_first_match_wins_and_fields_inherit",
        f"{BUDGET}::test_site_budget_max_concurrency",
    ],
    # tenancy
    "tenancy.source": [
        "tests/e2e/test_tenancy_cli.py::test_a_running_proxy_picks_up_cli_changes",
        "tests/e2e/test_tenancy_cli.py::test_cli_needs_tenancy_source_store",
        "tests/inprocess/test_tenancy_sync.py::test_with_source_file_the_registry_is_not_read",
        "tests/inprocess/test_tenancy_sync.py::test_runtime_serves_the_registry_from_its_first_request",
    ],
    "tenancy.rotate_grace": [
        "tests/e2e/test_tenancy_cli.py::test_rotate_keeps_the_old_token_for_tenancy_rotate_grace",
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
    "tenants[].weight": [f"{FAIR}::test_shared_crawl_delay_three_delay_tenants"],
}

PENDING: dict[str, str] = {}
"""Keys whose behaviour tests are being written alongside their feature (key -> note): while
the named test file does not exist the existence check is skipped with the note; once it
exists, it is enforced like any other entry (a pattern must match at least one function)."""


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


def where_now(path: str, name: str) -> str:
    """Where a test named by an old path lives now (the tests moved into tiers, some files were
    split): a hint for the failure message."""
    found = sorted(
        str(p.relative_to(TESTS.parent))
        for p in TESTS.glob("*/test_*.py")
        if name.split("::")[-1]
        in {n.split("::")[-1] for n in functions_in(str(p.relative_to(TESTS.parent))) or ()}
    )
    return f"; {name} is in {', '.join(found)} now" if found else ""


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
        assert functions is not None, f"{key}: {path} does not exist{where_now(path, name)}"
        if any(c in name for c in "*?["):
            assert fnmatch.filter(sorted(functions), name), f"{key}: nothing in {path} is {name}"
        else:
            assert name in functions, f"{key}: {path} has no test {name}{where_now(path, name)}"
