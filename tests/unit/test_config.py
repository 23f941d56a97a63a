"""The config model: defaults, overrides, secrets from the environment, the shipped configs, and
bad keys refused with the key named. The same errors through `crawlguard run` (exit 2):
tests/e2e/test_config_exit_codes.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import sha256_hex, tenant

from crawlguard.config import ConfigError, load_config, parse_config, with_overrides


def test_defaults_and_overrides(tmp_path: Path):
    cfg = parse_config({"tenants": [tenant("acme", ["AcmeBot"])]})
    assert cfg.proxy.listen_port == 8080 and cfg.admin.port == 9464
    assert cfg.store.url == "sqlite:///var/crawlguard.db" and cfg.state.url == "memory://"
    port = 18080  # any port: with_overrides does not bind it
    assert with_overrides(cfg, **{"proxy.listen_port": port}).proxy.listen_port == port
    assert cfg.destinations.port_allowed(8500) and not cfg.destinations.port_allowed(22)


def test_token_env_reads_the_secret(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACME_TOKEN", "s3cret")
    t = tenant("acme", ["AcmeBot"], token_sha256=None, token_env="ACME_TOKEN")
    cfg = parse_config({"tenants": [t]})
    assert cfg.tenants[0].token_digest().hex() == sha256_hex("s3cret")


def test_shipped_configs_load(monkeypatch: pytest.MonkeyPatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("CRAWLGUARD_ADMIN_TOKEN", "x")
    monkeypatch.setenv("CRAWLGUARD_TOKEN_ACME", "y")
    for name in ("crawlguard.yaml", "example.yaml"):
        cfg = load_config(root / "config" / name)
        assert cfg.tenants


# -- destinations.hosts / dns_cache_ttl (egress) ----------------------------------------------

DEST_CASES = [
    ({"hosts": {"intranet.test": ["10.0.0.300"]}}, ["destinations.hosts", "'intranet.test'",
                                                    "'10.0.0.300'", "not an IP address"]),
    ({"hosts": {"a.test": ["example.com"]}}, ["destinations.hosts", "'a.test'", "'example.com'"]),
    ({"hosts": {"a.test": []}}, ["destinations.hosts", "'a.test'", "at least one address"]),
    ({"hosts": {"a.test": "10.0.0.1"}}, ["destinations.hosts"]),
    ({"hosts": {"10.0.0.1": ["10.0.0.2"]}}, ["destinations.hosts", "IP address, not a name"]),
    ({"hosts": {"localhost": ["10.0.0.2"]}}, ["destinations.hosts", "loopback name"]),
    ({"hosts": {"bad host": ["10.0.0.2"]}}, ["destinations.hosts", "not a host name"]),
    ({"hosts": {"A.test": ["10.0.0.1"], "a.test.": ["10.0.0.2"]}},
     ["destinations.hosts", "listed twice"]),
    ({"dns_cache_ttl": 0}, ["destinations.dns_cache_ttl", "greater than 0"]),
    ({"dns_cache_ttl": -5}, ["destinations.dns_cache_ttl"]),
    ({"dns_cache_ttl": 3601}, ["destinations.dns_cache_ttl", "3600"]),
    ({"dns_cache_ttl": "soon"}, ["destinations.dns_cache_ttl"]),
    ({"resolver": "8.8.8.8"}, ["destinations.resolver", "unknown key"]),
]  # fmt: skip


@pytest.mark.parametrize(("change", "needles"), DEST_CASES, ids=[str(c[0]) for c in DEST_CASES])
def test_bad_destinations_name_the_key(change: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"destinations": change})
    for needle in needles:
        assert needle in str(exc.value), (needle, str(exc.value))


def test_destinations_hosts_are_canonicalised_and_used() -> None:
    import asyncio

    from crawlguard.egress import EgressPolicy

    cfg = parse_config(
        {
            "destinations": {
                "hosts": {
                    "Intranet.Test.": ["10.0.0.1", "::FFFF:10.0.0.2"],
                    "büro.test": ["1.2.3.4"],
                },
                "dns_cache_ttl": 5,
            }
        }
    ).destinations
    assert cfg.hosts == {
        "intranet.test": ["10.0.0.1", "::ffff:a00:2"],
        "xn--bro-hoa.test": ["1.2.3.4"],
    }
    assert cfg.dns_cache_ttl == 5
    assert parse_config({}).destinations.hosts == {}
    assert parse_config({}).destinations.dns_cache_ttl == 60
    policy = EgressPolicy.from_config(cfg)
    assert policy.resolver.ttl == 5
    res = asyncio.run(policy.admit("intranet.test", 80))  # static map: no lookup, refused
    assert res.reason == "intranet.test resolves to 10.0.0.1, a private address"


def test_limit_keys_load() -> None:
    cfg = parse_config(
        {
            "state": {"url": "memory://", "on_error": "closed"},
            "tenants": [
                tenant("acme", ["AcmeBot"], max_concurrency=4, max_rps=2.5,
                       allow_hosts=["*.Example.COM", "example.com."], deny_hosts=["x.example.com"]),
            ],
        }
    )  # fmt: skip
    (t,) = cfg.tenants
    assert (t.max_concurrency, t.max_rps) == (4, 2.5)
    assert t.allow_hosts == ["*.example.com", "example.com"]
    assert t.deny_hosts == ["x.example.com"]
    assert cfg.state.on_error == "closed"


REDIS_URL_CASES = [
    ("no host", "redis:///0", "needs a host"),
    ("port out of range", "redis://127.0.0.1:70000/0", "port must be a number from 1 to 65535"),
    ("port not a number", "redis://127.0.0.1:abc/0", "port must be a number"),
    ("db not a number", "redis://127.0.0.1:6379/zero", "database must be a number"),
    ("unknown parameter", "redis://127.0.0.1:6379/0?sentinel=1", "unknown redis URL parameter"),
    ("bad prefix", "redis://127.0.0.1:6379/0?prefix=a%20b", "prefix must be"),
    ("bad pool size", "redis://127.0.0.1:6379/0?max_connections=0", "max_connections"),
    ("bad timeout", "redis://127.0.0.1:6379/0?timeout=-1", "timeout must be seconds"),
    ("fragment", "redis://127.0.0.1:6379/0#x", "fragment"),
]


@pytest.mark.parametrize(
    ("name", "url", "needle"), REDIS_URL_CASES, ids=[c[0] for c in REDIS_URL_CASES]
)
def test_bad_redis_state_url_names_state_url(name: str, url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"state": {"url": url, "on_error": "open"}})
    msg = str(exc.value)
    assert "state.url" in msg and needle in msg, msg
    assert "state.on_error" not in msg  # the url's own error, not a follow-on one


def test_bad_redis_url_never_echoes_the_password() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"state": {"url": "redis://:s3cret@127.0.0.1:99999/0"}})
    assert "state.url" in str(exc.value) and "s3cret" not in str(exc.value)


def test_redis_state_url_loads_with_on_error_open() -> None:
    from crawlguard.state.redis import parse_redis_url

    url = "rediss://user:p%40ss@redis.internal:6380/3?prefix=prod-eu&max_connections=8&timeout=1"
    cfg = parse_config({"state": {"url": url, "on_error": "open"}})
    assert (cfg.state.url, cfg.state.on_error) == (url, "open")
    s = parse_redis_url(url)
    assert (s.host, s.port, s.db, s.tls) == ("redis.internal", 6380, 3, True)
    assert (s.username, s.password, s.prefix) == ("user", "p@ss", "prod-eu")
    assert (s.max_connections, s.timeout) == (8, 1.0)
    assert s.namespace == "crawlguard:prod-eu:"
    assert "p@ss" not in repr(s) and "p@ss" not in s.describe()
    plain = parse_redis_url("redis://127.0.0.1")
    assert (plain.port, plain.db, plain.prefix, plain.namespace) == (6379, 0, "", "crawlguard:")
    assert parse_config({"state": {"url": "redis://127.0.0.1:6379/0"}}).state.on_error == "closed"


# -- unknown keys and YAML syntax errors (issue 21: as a new user meets them) -----------------

TYPO_CASES = [
    ({"proxy": {"listen_prot": 1}}, "proxy.listen_prot: unknown key (did you mean 'listen_port'?)"),
    ({"proxies": {}}, "proxies: unknown key (did you mean 'proxy'?)"),
    ({"tenants": [tenant("acme", ["AcmeBot"], pacnig="delay")]},
     "tenants[acme].pacnig: unknown key (did you mean 'pacing'?)"),
    ({"robots": {"max-age": 5}}, "robots.max-age: unknown key (did you mean 'max_age'?)"),
    ({"pacing": {"zzz": 1}}, "pacing.zzz: unknown key\n"),  # nothing near: no guess
]  # fmt: skip


@pytest.mark.parametrize(("data", "needle"), TYPO_CASES, ids=[c[1][:24] for c in TYPO_CASES])
def test_unknown_keys_suggest_the_nearest(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert needle in str(exc.value) + "\n", str(exc.value)


def test_yaml_syntax_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "crawlguard.yaml"
    path.write_text("proxy:\n  listen_port: [1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "YAML syntax error" in message and f'in "{path}", line 2' in message, message
    assert "<unicode string>" not in message
