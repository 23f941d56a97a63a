"""`make docker-test` (docker/test/run.sh): crawlguard's image run in a real Docker engine, then
the compose stack with PostgreSQL as the shared store, Redis and Prometheus. What a newcomer's
`docker run` / `docker compose up` does, tried here so the image is known to build and work.

Host networking only (dockerd runs with --bridge=none --iptables=false): every port is on
127.0.0.1 and chosen free, the origin is a thread in this process. Skipped unless run.sh set
CRAWLGUARD_DOCKER_TEST=1, after building the image and the stand-ins; outside tests/, so not
part of `make test` (whose tiers are tests/unit, tests/inprocess, tests/e2e).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from harness import REPO, LocalOrigin, Route, free_port, wait_for

if os.environ.get("CRAWLGUARD_DOCKER_TEST") != "1":
    pytest.skip("run by `make docker-test` (docker/test/run.sh)", allow_module_level=True)

DOCKER = REPO / "docker"
IMAGE = os.environ.get("CG_IMAGE", "crawlguard:0.1.0")
UID = 10001  # the Dockerfile's USER
CA_DIR = "/var/lib/crawlguard/mitmproxy"
STORE_DIR = "/var/lib/crawlguard/store"
TOKENS = {
    "CRAWLGUARD_ADMIN_TOKEN": "op-secret",
    "CRAWLGUARD_TOKEN_ACME": "acme-secret",
    "CRAWLGUARD_TOKEN_GLOBEX": "globex-secret",
}
PG_PASSWORD = "pg-secret"


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """A command that must succeed; its output, or a failure that shows both streams."""
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture
def origin() -> Iterator[LocalOrigin]:
    """A site on the host: / is allowed, /private is disallowed by its robots.txt."""
    site = LocalOrigin(robots=b"User-agent: *\nDisallow: /private\n")
    site.routes["/"] = Route(body=b"hello from the host\n")
    try:
        yield site
    finally:
        site.close()


def container_config(
    path: Path, *, proxy_port: int, admin_port: int, origin: LocalOrigin, **store_state: str
) -> None:
    """docker/crawlguard.yaml with this test's addresses: 127.0.0.1 and free ports, the store
    and state URLs given, and the host's origin (a private address) allowed as a destination."""
    data: dict[str, Any] = yaml.safe_load((DOCKER / "crawlguard.yaml").read_text())
    data["proxy"] |= {"listen_host": "127.0.0.1", "listen_port": proxy_port}
    data["admin"] |= {"listen_host": "127.0.0.1", "port": admin_port}
    data["store"]["url"] = store_state["store"]
    data["state"]["url"] = store_state["state"]
    data["destinations"] = {"allow_private": True, "allowed_ports": [origin.port]}
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)


def proxied(origin: LocalOrigin, proxy_port: int, path: str) -> requests.Response:
    """One request through the container's proxy as tenant acme."""
    session = requests.Session()
    session.trust_env = False  # no proxy from this machine's environment
    proxy = f"http://acme:{TOKENS['CRAWLGUARD_TOKEN_ACME']}@127.0.0.1:{proxy_port}"
    return session.get(
        origin.url(path),
        proxies={"http": proxy},
        headers={"User-Agent": "AcmeBot/1.0 (+https://acme.example/bot)"},
        timeout=60,
    )


def healthy(admin_port: int) -> bool:
    try:
        with requests.Session() as s:
            s.trust_env = False
            return s.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def inspect(name: str) -> dict[str, Any]:
    (info,) = json.loads(run("docker", "inspect", name))
    return info


def process_uid(name: str) -> int:
    """The real uid of the container's main process, read from the host's /proc."""
    pid = inspect(name)["State"]["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("Uid:")]
    return int(line.split()[1])


def test_image_serves_as_non_root_with_ca_and_store_on_volumes(
    tmp_path: Path, origin: LocalOrigin
) -> None:
    ca, store = tmp_path / "ca", tmp_path / "store"
    for d in (ca, store):
        d.mkdir()
        os.chown(d, UID, UID)
    proxy_port, admin_port = free_port(), free_port()
    config = tmp_path / "crawlguard.yaml"
    container_config(
        config,
        proxy_port=proxy_port,
        admin_port=admin_port,
        origin=origin,
        store=f"sqlite:///{STORE_DIR}/crawlguard.db",
        state="memory://",
    )
    declared = inspect(IMAGE)["Config"]
    assert declared["User"] == f"{UID}:{UID}"
    assert set(declared["Volumes"]) == {CA_DIR, STORE_DIR}
    # The image's own HEALTHCHECK command on this test's admin port, polled sooner than 30 s.
    kind, *check = declared["Healthcheck"]["Test"]
    assert kind == "CMD" and ":9464/" in check[-1], declared["Healthcheck"]
    check[-1] = check[-1].replace(":9464/", f":{admin_port}/")
    name = f"crawlguard-test-{uuid.uuid4().hex[:8]}"
    env = [a for k, v in TOKENS.items() for a in ("-e", f"{k}={v}")]
    run(
        "docker", "run", "-d", "--name", name, "--network", "host", *env,
        "-v", f"{ca}:{CA_DIR}", "-v", f"{store}:{STORE_DIR}",
        "-v", f"{config}:/etc/crawlguard/crawlguard.yaml:ro",
        "--health-cmd", shlex.join(check), "--health-interval", "2s",
        "--health-start-period", "60s",
        # the image's command, but on 127.0.0.1: host networking shares the host's interfaces
        IMAGE, "run", "--config", "/etc/crawlguard/crawlguard.yaml", "--listen-host", "127.0.0.1",
    )  # fmt: skip
    try:
        assert wait_for(lambda: healthy(admin_port), timeout=90), run("docker", "logs", name)
        assert process_uid(name) == UID
        assert run("docker", "exec", name, "id", "-u").strip() == str(UID)

        ok = proxied(origin, proxy_port, "/")
        assert ok.status_code == 200 and ok.text == "hello from the host\n", ok.text
        assert "/" in origin.paths()
        refused = proxied(origin, proxy_port, "/private")
        assert refused.status_code == 403, refused.text
        assert "/private" not in origin.paths()

        # the CA crawlers trust and the SQLite store are in the mounted directories
        assert (ca / "mitmproxy-ca-cert.pem").is_file()
        assert (ca / "mitmproxy-ca.pem").stat().st_uid == UID
        assert (store / "crawlguard.db").is_file()
        assert (store / "crawlguard.db").stat().st_uid == UID
        assert wait_for(
            lambda: inspect(name)["State"]["Health"]["Status"] == "healthy", timeout=60
        ), inspect(name)["State"]
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        print(logs.stdout[-4000:], logs.stderr[-4000:])
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def prometheus_config(path: Path, *, admin_port: int, prom_port: int) -> None:
    """docker/prometheus/prometheus.yml with this test's addresses and a 1 s scrape."""
    data: dict[str, Any] = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    data["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    targets = {"crawlguard": f"127.0.0.1:{admin_port}", "prometheus": f"127.0.0.1:{prom_port}"}
    for job in data["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)


def compose_file(path: Path) -> None:
    """docker/compose.yaml as Debian's docker-compose 1.29 takes it with the host-networking
    override: no top-level `name:` (it predates it; the test names the project with -p) and no
    published `ports:` (refused with network_mode: host; compose v2 would take `!reset`)."""
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert data.pop("name") == "crawlguard"
    for service in data["services"].values():
        for port in service.pop("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def violations_in_postgres(pg_port: int) -> list[tuple[str, str, str]]:
    import psycopg

    try:
        with psycopg.connect(
            host="127.0.0.1", port=pg_port, user="crawlguard", password=PG_PASSWORD,
            dbname="crawlguard", connect_timeout=3,
        ) as conn:  # fmt: skip
            rows = conn.execute("SELECT tenant, kind, url FROM violations").fetchall()
            return [(str(a), str(b), str(c)) for a, b, c in rows]
    except psycopg.Error:
        return []


def prometheus_query(prom_port: int, query: str) -> list[Any]:
    try:
        with requests.Session() as s:
            s.trust_env = False
            answer = s.get(
                f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": query}, timeout=5
            ).json()
    except (requests.RequestException, ValueError):
        return []
    return list(answer.get("data", {}).get("result", []))


def test_compose_stack_records_in_postgres_and_prometheus_scrapes(
    tmp_path: Path, origin: LocalOrigin
) -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: docker/test/run.sh installs it"
    ports = {k: free_port() for k in ("proxy", "admin", "redis", "pg", "prom")}
    container_config(
        tmp_path / "crawlguard.yaml",
        proxy_port=ports["proxy"],
        admin_port=ports["admin"],
        origin=origin,
        store=f"postgresql://crawlguard@127.0.0.1:{ports['pg']}/crawlguard",
        state=f"redis://127.0.0.1:{ports['redis']}/0",
    )
    prometheus_config(tmp_path / "prometheus.yml", admin_port=ports["admin"],
                      prom_port=ports["prom"])  # fmt: skip
    compose_file(tmp_path / "compose.yaml")
    env = {
        **os.environ,
        **TOKENS,
        "CRAWLGUARD_PG_PASSWORD": PG_PASSWORD,
        "GRAFANA_ADMIN_PASSWORD": "unused",  # Grafana is not started: no image here
        "CG_TEST_DIR": str(tmp_path),
        "CG_ADMIN_PORT": str(ports["admin"]),
        "CG_REDIS_PORT": str(ports["redis"]),
        "CG_PG_PORT": str(ports["pg"]),
        "CG_PROM_PORT": str(ports["prom"]),
    }
    project = f"cgtest{uuid.uuid4().hex[:8]}"
    base = [
        compose, "--project-directory", str(DOCKER), "-p", project,
        "-f", str(tmp_path / "compose.yaml"), "-f", str(DOCKER / "test" / "compose.test.yaml"),
    ]  # fmt: skip
    try:
        run(*base, "up", "-d", "--no-build", "crawlguard", "redis", "postgres", "prometheus",
            env=env)  # fmt: skip
        assert wait_for(lambda: healthy(ports["admin"]), timeout=120), run(
            *base, "logs", "--no-color", env=env
        )
        assert proxied(origin, ports["proxy"], "/").status_code == 200
        assert proxied(origin, ports["proxy"], "/private").status_code == 403

        def recorded() -> bool:
            return any(
                tenant == "acme" and kind == "robots-disallow" and url.endswith("/private")
                for tenant, kind, url in violations_in_postgres(ports["pg"])
            )

        assert wait_for(recorded, timeout=60), violations_in_postgres(ports["pg"])
        assert wait_for(
            lambda: bool(prometheus_query(ports["prom"], 'up{job="crawlguard"} == 1')), timeout=60
        )
        assert wait_for(
            lambda: bool(
                prometheus_query(ports["prom"], 'crawlguard_violations_total{tenant="acme"} >= 1')
            ),
            timeout=60,
        ), prometheus_query(ports["prom"], '{job="crawlguard"}')[:5]
    finally:
        logs = subprocess.run([*base, "logs", "--no-color"], capture_output=True, text=True,
                              env=env)  # fmt: skip
        print(logs.stdout[-6000:])
        subprocess.run([*base, "down", "-v", "--remove-orphans"], capture_output=True, env=env)
