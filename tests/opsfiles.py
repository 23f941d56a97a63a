"""The container and monitoring files under docker/, read for tests: their paths, the
Dockerfile's instructions and HEALTHCHECK command, the dashboard's PromQL expressions. Shared
by the static checks (tests/unit/test_ops_files_static.py) and the ones against the real proxy
and promtool (tests/e2e/test_ops_files.py)."""

from __future__ import annotations

import json

from harness import REPO

DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
CONTAINER_CONFIG = DOCKER / "crawlguard.yaml"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
ALERTS_YML = DOCKER / "prometheus" / "alerts.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "crawlguard.json"
PROVISIONING = DOCKER / "grafana" / "provisioning"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            out.append((keyword.upper(), rest.strip()))
            pending = ""
    return out


def healthcheck_command() -> list[str]:
    (args,) = [a for k, a in dockerfile_instructions() if k == "HEALTHCHECK"]
    _, _, exec_form = args.partition(" CMD ")
    command = json.loads(exec_form)
    assert isinstance(command, list) and all(isinstance(x, str) for x in command)
    return command


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
