"""The admin API against `crawlguard run` (a subprocess) with a real origin: robots.txt state and
evidence after a real request, and SIGHUP with a new operator token (issue 10).
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from adminutil import OP
from harness import LocalOrigin, Proxy, base_config, sha256_hex, wait_for

from crawlguard.admin.auth import SESSION_COOKIE

ROBOTS = b"User-agent: *\nDisallow: /private\n# \xc3\xa9t\xc3\xa9\n"


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin(robots=ROBOTS)
    yield o
    o.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Proxy]:
    p = Proxy(base_config(tmp_path), tmp_path)
    yield p
    p.stop()


def admin_get(proxy: Proxy, path: str, token: str | None = OP, **kw: Any) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return session.get(
        f"http://127.0.0.1:{proxy.admin_port}{path}",
        headers=headers,
        timeout=10,
        allow_redirects=False,
        proxies={"http": None, "https": None},
        **kw,
    )


def test_robots_state_and_evidence_after_a_real_request(live: Proxy, site: LocalOrigin) -> None:
    origin = f"http://127.0.0.1:{site.port}"
    assert admin_get(live, f"/api/robots?origin={origin}").status_code == 404
    before = datetime.now(UTC)
    r = live.get(site.url("/private/page"))
    assert r.status_code == 403 and r.headers["X-Crawlguard-Decision"] == "robots-disallow"
    after = datetime.now(UTC)
    sha = hashlib.sha256(ROBOTS).hexdigest()

    r = admin_get(live, f"/api/robots?origin=http://0x7f000001:{site.port}/")  # canonicalised
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    state = r.json()
    assert state["origin"] == f"http://127.0.0.1:{site.port}"
    assert (state["cached"], state["result"], state["available"]) == (True, "ok", True)
    assert state["sha256"] == sha
    assert state["body"] == ROBOTS.decode("utf-8")
    assert state["evidence_url"] == f"/api/evidence/{sha}"
    fetched = datetime.fromisoformat(state["fetched_at"])
    expires = datetime.fromisoformat(state["expires_at"])
    slack = timedelta(seconds=60)  # a clock conversion check, not a timing one
    assert before - slack <= fetched <= after + slack
    assert fetched < expires

    r = admin_get(live, state["evidence_url"])
    assert r.status_code == 200 and r.content == ROBOTS
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert admin_get(live, f"/api/evidence/{sha.upper()}").content == ROBOTS
    assert admin_get(live, state["evidence_url"], token=None).status_code == 401
    assert admin_get(live, f"/api/evidence/{'0' * 64}").status_code == 404
    assert admin_get(live, "/api/evidence/abc").status_code == 400
    assert admin_get(live, f"/api/evidence/{'g' * 64}").status_code == 400

    items = admin_get(live, "/api/violations?kind=robots-disallow").json()
    assert len(items) == 1
    assert items[0]["host"] == "127.0.0.1" and items[0]["robots_sha256"] == sha
    assert items[0]["url"] == site.url("/private/page")

    for bad in ("ftp://127.0.0.1/", "http://127.0.0.1:99999", "http://u@h.example/", "x", ""):
        r = admin_get(live, "/api/robots?origin=" + quote(bad, safe=""))
        assert r.status_code == 400, bad
    r = admin_get(live, "/api/robots?origin=https://never.example")
    assert r.status_code == 404 and r.json()["cached"] is False

    # the tenant's proxy credentials never open the admin side, even on the real server
    assert admin_get(live, "/api/violations", token="acme-secret").status_code == 401
    r = admin_get(live, "/api/violations", token=None, auth=("acme", "acme-secret"))
    assert r.status_code == 401
    assert admin_get(live, "/metrics", token=None).status_code == 200
    assert admin_get(live, "/healthz", token=None).status_code == 200


def test_sighup_with_a_new_token_revokes_the_old_one(live: Proxy) -> None:
    session = requests.Session()
    session.trust_env = False
    r = session.post(
        f"http://127.0.0.1:{live.admin_port}/login",
        data={"token": OP},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303
    cookie = {"Cookie": f"{SESSION_COOKIE}={r.cookies[SESSION_COOKIE]}"}
    assert admin_get(live, "/api/tenants", token=None, headers=cookie).status_code == 200
    cfg = dict(live.config, admin={**live.config["admin"], "token_sha256": sha256_hex("new-op")})
    live.config_path.write_text(yaml.safe_dump(cfg))
    live.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "config reloaded" in live.log(), 20), live.log()
    assert "running values kept" not in live.log()
    assert admin_get(live, "/api/tenants", token=None, headers=cookie).status_code == 401
    assert admin_get(live, "/api/tenants").status_code == 401
    assert admin_get(live, "/api/tenants", token="new-op").status_code == 200
