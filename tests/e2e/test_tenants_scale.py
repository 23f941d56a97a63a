"""10,000 tenants (issue 20): the real proxy on a generated config (one tenant, one product
token each) holds ≤ 100 MB more than on a one-tenant config, and the last tenant is
authenticated and its user agent checked against every other tenant's token.

Memory used to grow with the square of the tenant count (12 GB and two minutes for 10,000):
the proxy here runs under an address-space limit and must be ready within 60 s, so such a
regression fails fast instead of eating the machine.
"""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from harness import LocalOrigin, base_config, free_port

pytestmark = pytest.mark.timeout(150)

TENANTS = 10_000
READY_WITHIN = 60.0
ADDRESS_SPACE = 4 << 30  # bytes; a proxy needs < 1.5 GB of address space at 10,000 tenants
LETTERS = "jkqvwxyz"  # no well-known crawler's name can be spelt with these


def token(i: int) -> str:
    digits = ""
    while True:
        digits = LETTERS[i % 8] + digits
        i //= 8
        if not i:
            return "Qz" + digits.rjust(5, LETTERS[0])


def tenants(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"t{i:05d}",
            "token_sha256": hashlib.sha256(f"t{i:05d}-secret".encode()).hexdigest(),
            "product_tokens": [token(i)],
        }
        for i in range(n)
    ]


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


class Generated:
    """`crawlguard run` on a config with `n` generated tenants, under an address-space cap."""

    def __init__(self, tmp: Path, n: int) -> None:
        tmp.mkdir()
        self.n, self.tmp, self.port = n, tmp, free_port()
        path = tmp / "crawlguard.yaml"
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        path.write_text(yaml.dump(base_config(tmp, tenants=tenants(n)), Dumper=dumper))
        self.log = tmp / "stderr.log"
        cmd = [sys.executable, "-m", "crawlguard", "run", "--config", str(path),
               "--listen-port", str(self.port), "--admin-port", str(free_port())]  # fmt: skip
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err,
                preexec_fn=limit_address_space,
            )  # fmt: skip

    def wait_ready(self, deadline: float) -> None:
        while b"crawlguard ready" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.n} tenants: not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def get(
        self, url: str, tenant: int, *, secret: str | None = None, ua: str
    ) -> requests.Response:
        tid = f"t{tenant:05d}"
        proxy = f"http://{tid}:{secret or tid + '-secret'}@127.0.0.1:{self.port}"
        return requests.get(url, proxies={"http": proxy}, headers={"User-Agent": ua}, timeout=15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def origin() -> Iterator[LocalOrigin]:
    site = LocalOrigin()
    yield site
    site.close()


def test_ten_thousand_tenants_cost_little_and_the_last_one_is_checked(
    tmp_path: Path, origin: LocalOrigin
) -> None:
    one = Generated(tmp_path / "one", 1)
    many = Generated(tmp_path / "many", TENANTS)
    try:
        deadline = time.monotonic() + READY_WITHIN
        one.wait_ready(deadline)
        many.wait_ready(deadline)
        growth = many.rss_mb() - one.rss_mb()
        assert growth <= 100, f"{TENANTS} tenants cost {growth:.0f} MB more than one"

        last, other = TENANTS - 1, TENANTS // 2
        contact = "(+https://crawler.example/bot)"
        passed = many.get(origin.url("/page"), last, ua=f"{token(last)}/1.0 {contact}")
        assert passed.status_code == 200, passed.text
        assert origin.paths() == ["/page"]

        foreign = many.get(
            origin.url("/other"), last, ua=f"{token(last)}/1.0 {contact} {token(other)}/2.0"
        )
        assert foreign.status_code == 403
        assert foreign.headers.get("X-Crawlguard-Decision") == "ua-mismatch"
        assert f"another tenant: {token(other)}" in foreign.text

        wrong = many.get(origin.url("/wrong"), last, secret="wrong", ua=f"{token(last)}/1.0")
        assert wrong.status_code == 407
        assert origin.paths() == ["/page"]
    finally:
        one.stop()
        many.stop()
