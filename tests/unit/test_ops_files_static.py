"""The container and monitoring files under docker/ (issue 10), read as files: the Dockerfile's
shape and COPY sources against /.dockerignore, the container config with and without its token
variables, the alert rules' annotations and coverage, compose.yaml, Prometheus' scrape and rule
files, the Grafana provisioning and dashboard, and how they agree with each other. hadolint,
promtool and the HEALTHCHECK against a real proxy: tests/e2e/test_ops_files.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import REPO
from opsfiles import (
    ALERTS_YML,
    COMPOSE,
    CONTAINER_CONFIG,
    DASHBOARD,
    DOCKER,
    DOCKERFILE,
    PROMETHEUS_YML,
    PROVISIONING,
    dashboard_exprs,
    dockerfile_instructions,
    healthcheck_command,
)

from crawlguard.config import load_config

SQLITE_STORE_DIR = "/var/lib/crawlguard/store"  # the image's store volume (SQLite deployments)


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    froms = [a for k, a in instructions if k == "FROM"]
    assert len(froms) == 2, froms
    for image in froms:
        ref = image.split()[0]
        assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", ref), f"unpinned base {ref}"
    assert froms[0].endswith("AS builder")
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    exposed = {p for k, a in instructions if k == "EXPOSE" for p in a.split()}
    assert exposed == {"8080", "9464"}
    entry = [json.loads(a) for k, a in instructions if k == "ENTRYPOINT"]
    cmd = [json.loads(a) for k, a in instructions if k == "CMD"]
    assert entry == [["crawlguard"]]
    assert cmd == [
        ["run", "--config", "/etc/crawlguard/crawlguard.yaml", "--listen-host", "0.0.0.0"]
    ]
    volumes = [json.loads(a) for k, a in instructions if k == "VOLUME"]
    cfg = _container_config()
    # the CA (and PostgreSQL's spool) and the directory a SQLite store goes in
    assert volumes and set(volumes[0]) == {cfg.proxy.confdir, SQLITE_STORE_DIR}
    assert "http://127.0.0.1:9464/healthz" in " ".join(healthcheck_command())


def _dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics, enough for an allowlist: the last matching pattern
    wins; a pattern matching a parent directory matches everything under it; `*` and `?`
    stop at `/`, `**` does not."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            else:
                c = pattern[i]
                out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                i += 1
        return re.compile(out)

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = regex(line.lstrip("!").strip("/"))
        if any(pattern.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    sources: list[str] = []
    # ARG defaults expand in COPY sources (WHEELS: docker/wheels unless a build overrides it)
    defaults = dict(a.partition("=")[::2] for k, a in dockerfile_instructions() if k == "ARG")
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        args = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], args)
        sources += [a for a in args.split()[:-1] if not a.startswith("--")]
    assert "pyproject.toml" in sources and "crawlguard/" in sources
    assert "requirements/runtime.txt" in sources and "docker/wheels/" in sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert not _dockerignore_excludes(src), f"COPY {src}: excluded by .dockerignore"
    # Package data and the files the wheel build reads travel too; secrets and state do not.
    for needed in ("README.md", "crawlguard/admin/metrics.py", "crawlguard/py.typed"):
        assert not _dockerignore_excludes(needed), needed
    for static in (REPO / "crawlguard" / "admin" / "static").glob("*"):
        assert not _dockerignore_excludes(str(static.relative_to(REPO))), static
    for private in (".venv/bin/python", "var/mitmproxy/mitmproxy-ca.pem", ".git/config",
                    "tests/harness.py", "crawlguard/__pycache__/x.pyc"):  # fmt: skip
        assert _dockerignore_excludes(private), private


def _container_config() -> Any:
    env = {"CRAWLGUARD_ADMIN_TOKEN": "x", "CRAWLGUARD_TOKEN_ACME": "y"}
    env |= {"CRAWLGUARD_TOKEN_GLOBEX": "z"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return load_config(CONTAINER_CONFIG)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_container_config_validates_with_its_token_variables() -> None:
    cfg = _container_config()
    assert cfg.proxy.listen_host == "0.0.0.0" and cfg.admin.listen_host == "0.0.0.0"
    assert cfg.proxy.listen_port == 8080 and cfg.admin.port == 9464
    assert cfg.proxy.confdir == "/var/lib/crawlguard/mitmproxy"
    assert cfg.store.url.startswith("postgresql://crawlguard@postgres:5432/")  # compose's
    assert cfg.state.url == "redis://redis:6379/0"  # compose's Redis service
    assert cfg.admin.token_env and not cfg.admin.token_sha256
    assert cfg.tenants and all(t.token_env and not t.token_sha256 for t in cfg.tenants)


def test_container_config_refuses_to_load_without_its_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crawlguard.config import ConfigError

    for name in ("CRAWLGUARD_ADMIN_TOKEN", "CRAWLGUARD_TOKEN_ACME", "CRAWLGUARD_TOKEN_GLOBEX"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="CRAWLGUARD_TOKEN_ACME"):
        load_config(CONTAINER_CONFIG)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_alerts_are_annotated_and_cover_the_required_conditions() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    exprs = " ".join(" ".join(r["expr"].split()) for r in rules.values())
    for needle in (
        "sum by (tenant) (rate(crawlguard_violations_total[5m])) >",
        'crawlguard_robots_fetches_total{result!~"ok|4xx|redirects"}',
        "crawlguard_delayed_requests / crawlguard_held_requests_limit > 0.8",
        "crawlguard_store_queue_depth",
        "crawlguard_store_errors_total",
        'up{job="crawlguard"} == 0',
    ):
        assert needle in exprs, needle
    assert rules["CrawlguardTenantViolationRateHigh"].get("for")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to docker/) of the service's bind mounts."""
    out: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (DOCKER / source).resolve()
    return out


def test_compose_services_ports_and_files() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"crawlguard", "redis", "postgres", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not on 127.0.0.1"
        for target, source in _bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
        image = service.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), f"{name}: volume {source}"

    crawlguard = services["crawlguard"]
    build = crawlguard["build"]
    assert (DOCKER / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
    assert crawlguard["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
    assert _bind_mounts(crawlguard)["/etc/crawlguard/crawlguard.yaml"] == CONTAINER_CONFIG
    cfg = _container_config()
    named = {v.split(":")[1] for v in crawlguard["volumes"] if not v.startswith(".")}
    assert {cfg.proxy.confdir, SQLITE_STORE_DIR} <= named, "the CA and the store must persist"
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "PGPASSWORD" in crawlguard["environment"]  # libpq's, for store.url
    wanted = {t.token_env for t in cfg.tenants} | {cfg.admin.token_env}
    assert wanted <= set(crawlguard["environment"]), "every token_env must be passed in"
    assert "crawlguard" not in str(services["prometheus"].get("depends_on", {})), (
        "Prometheus must run (and alert) while crawlguard is down"
    )


def test_prometheus_scrapes_the_compose_service_and_loads_the_mounted_rules() -> None:
    prometheus = _compose()["services"]["prometheus"]
    mounts = _bind_mounts(prometheus)
    config_path = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    assert mounts[config_path] == PROMETHEUS_YML
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    for rule_file in config["rule_files"]:
        assert mounts[str(Path(config_path).parent / rule_file)] == ALERTS_YML
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "crawlguard"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"crawlguard:{_container_config().admin.port}"]


def test_grafana_provisioning_and_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = _bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning/datasources"] == PROVISIONING / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == PROVISIONING / "dashboards"

    datasources = [
        ds
        for f in sorted((PROVISIONING / "datasources").glob("*.yaml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    (prom,) = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"

    providers = [
        p
        for f in sorted((PROVISIONING / "dashboards").glob("*.yaml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers
    for provider in providers:
        assert mounts[provider["options"]["path"]] == DASHBOARD.parent

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "crawlguard"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["tenant"]["type"] == "query"
    assert "tenant" in variables["tenant"]["definition"]
    assert variables["datasource"]["current"]["value"] == prom["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("requests by decision", "violations by tenant and kind", "decision latency",
                   "held requests vs limit", "fetches by result", "cache lookups",
                   "cache entries", "fetch latency", "hold wait", "store queue depth",
                   "store write latency", "store errors", "origin back-offs"):  # fmt: skip
        assert wanted in titles, wanted
    exprs = " ".join(dashboard_exprs())
    assert 'tenant=~"$tenant"' in exprs
    assert "histogram_quantile(0.99" in exprs and "crawlguard_decision_seconds_bucket" in exprs
