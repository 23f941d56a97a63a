"""The operator admin API and its authentication (issue 10), over real HTTP on loopback.

A real Runtime and AdminServer in-process (tests/adminutil.py), records seeded through the
store. The robots/evidence and SIGHUP tests run `crawlguard run`: tests/e2e/test_admin_api_live.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adminutil import OP, Admin, cookie_of, start_admin, stop_admin
from harness import at, base_config, minute_record, sha256_hex

from crawlguard.admin.auth import SESSION_COOKIE
from crawlguard.config import parse_config
from crawlguard.policy.decisions import Kind
from crawlguard.policy.records import FIELDS

VALID_KINDS = [k.value for k in Kind if k is not Kind.ALLOWED]


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    a = await start_admin(tmp_path)
    try:
        yield a
    finally:
        await stop_admin(a)


rec = minute_record


# -- /api/violations --------------------------------------------------------------------------


async def test_violations_filters(admin: Admin) -> None:
    admin.seed(
        rec(0, "acme", "ua-generic", url="http://Example.TEST/x"),
        rec(1, "acme", "robots-disallow", url="https://shop.example:8443/private"),
        rec(2, "globex", "robots-disallow", "logged", url="http://0x7f000001:8080/p"),
        rec(3, "acme", "crawl-delay", "delayed", url="http://example.test/y", delay_seconds=1.5),
        rec(4, "acme", "destination-forbidden", url="[::1]:443", **{"rule": "destinations"}),
        rec(5, "gone", "ua-missing", url="http://example.test/z"),
    )
    items = await admin.json("/api/violations")
    assert [i["ts"] for i in items] == [at(m) for m in (5, 4, 3, 2, 1, 0)]
    first = items[-1]
    assert set(first) == {*FIELDS, "id", "host"}
    assert isinstance(first["id"], int)
    assert [i["host"] for i in items] == [
        "example.test", "::1", "example.test", "127.0.0.1", "shop.example", "example.test",
    ]  # fmt: skip

    async def mins(query: str) -> list[str]:
        return [i["ts"] for i in await admin.json("/api/violations?" + query)]

    assert await mins("tenant=globex") == [at(2)]
    assert await mins("tenant=gone") == [at(5)]  # records outlive the config
    assert await mins("tenant=nobody") == []
    assert await mins("kind=robots-disallow") == [at(2), at(1)]
    assert await mins("action=delayed") == [at(3)]
    assert await mins("action=logged") == [at(2)]
    assert await mins("host=EXAMPLE.test.") == [at(5), at(3), at(0)]  # canonicalised
    assert await mins("host=127.1") == [at(2)]
    assert await mins("host=%5B::1%5D") == [at(4)]
    assert await mins(f"since={at(3)}") == [at(5), at(4), at(3)]  # since inclusive
    assert await mins(f"until={at(2)}") == [at(1), at(0)]  # until exclusive
    assert await mins("since=2024-05-01T14:01:00%2B02:00&until=2024-05-01T12:04:00") == [
        at(3), at(2), at(1),
    ]  # fmt: skip
    assert await mins("tenant=acme&kind=robots-disallow&host=shop.example") == [at(1)]
    assert await mins("since=1h") == []  # a duration back from now: all of these are older
    assert len(await mins("since=100000d")) == 6
    assert await mins("tenant=&kind=") == await mins("")  # empty is absent
    assert (await admin.get("/api/violations")).headers["Cache-Control"] == "no-store"


async def test_violations_bad_input_is_a_400_that_says_what_is_valid(admin: Admin) -> None:
    async def bad(query: str) -> dict[str, Any]:
        r = await admin.get("/api/violations?" + query)
        assert r.status == 400, (query, r.status)
        assert r.content_type == "application/json"
        return await r.json()

    body = await bad("kind=allowed")
    assert body["valid"] == VALID_KINDS and "allowed" not in body["valid"]
    assert "allowed" in body["error"]
    assert (await bad("kind=nope"))["valid"] == VALID_KINDS
    assert (await bad("action=refused"))["valid"] == ["blocked", "delayed", "logged"]
    assert "since" in (await bad("since=yesterday"))["error"]
    assert "until" in (await bad("until=soon"))["error"]
    assert "host" in (await bad("host=a..b"))["error"]
    assert "host" in (await bad("host=example.test:80"))["error"]
    assert "cursor" in (await bad("cursor=bm9wZQ"))["error"]
    assert "cursor" in (await bad("cursor=%%%"))["error"]
    body = await bad("tenants=acme")  # a typo must not silently widen the filter
    assert "tenant" in body["valid"]
    assert "once" in (await bad("tenant=a&tenant=b"))["error"]


async def test_violations_limit_bounds(admin: Admin) -> None:
    admin.seed(*(rec(i / 100) for i in range(1005)))
    assert len(await admin.json("/api/violations")) == 100
    assert len(await admin.json("/api/violations?limit=1")) == 1
    assert len(await admin.json("/api/violations?limit=1000")) == 1000
    for bad in ("0", "1001", "-1", "ten", "1e3", "٣"):
        r = await admin.get(f"/api/violations?limit={bad}")
        assert r.status == 400, bad
        assert "1 to 1000" in (await r.json())["error"]


async def test_violations_pagination_walks_every_record_once(admin: Admin) -> None:
    # 5 timestamps, 23 records each: pages end in the middle of a run of equal timestamps
    admin.seed(*(rec(i % 5, tenant=("acme", "globex")[i % 2]) for i in range(115)))
    everything = await admin.json("/api/violations?limit=1000")
    assert len(everything) == 115
    keys = [(i["ts"], i["id"]) for i in everything]
    assert keys == sorted(keys, reverse=True)  # ts DESC, id DESC

    walked: list[dict[str, Any]] = []
    path = "/api/violations?limit=7"
    pages = 0
    while True:
        r = await admin.get(path)
        assert r.status == 200
        page = await r.json()
        assert 0 < len(page) <= 7
        walked += page
        pages += 1
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in r.headers
            break
        link = r.headers["Link"]
        assert link.startswith("</api/violations?") and link.endswith('>; rel="next"')
        assert f"cursor={cursor}" in link and "limit=7" in link
        # follow the Link half the time, the bare cursor the other half
        by_link = link[1 : link.index(">")]
        path = by_link if pages % 2 else f"/api/violations?limit=7&cursor={cursor}"
        # a record added mid-walk is newer: it appears on no later page
        admin.seed(rec(10, tenant="acme"))
    assert pages == 17
    assert [i["id"] for i in walked] == [i["id"] for i in everything]

    # filters survive in the Link, since/until as the resolved window
    r = await admin.get("/api/violations?tenant=globex&since=100000d&limit=10")
    link = r.headers["Link"]
    assert "tenant=globex" in link and "since=" in link and "d&" not in link
    rest = await admin.json(link[1 : link.index(">")].replace("limit=10", "limit=1000"))
    first = await r.json()
    assert len(first) + len(rest) == 57  # every odd one of the 115
    assert {i["tenant"] for i in first + rest} == {"globex"}


# -- auth ---------------------------------------------------------------------------------------


async def test_api_needs_the_operator_token(admin: Admin) -> None:
    r = await admin.get("/api/violations", token=None)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="crawlguard-admin"'
    assert "error" in await r.json()
    assert (await admin.get("/api/violations", token="wrong")).status == 401
    assert (await admin.get("/api/tenants", token="")).status == 401
    # a tenant's proxy token, as a bearer token or as the proxy's Basic credentials
    assert (await admin.get("/api/violations", token="acme-secret")).status == 401
    basic = "Basic " + base64.b64encode(b"acme:acme-secret").decode()
    for header in ("Proxy-Authorization", "Authorization"):
        r = await admin.get("/api/violations", token=None, headers={header: basic})
        assert r.status == 401, header
    op_basic = "Basic " + base64.b64encode(b"admin:op").decode()
    r = await admin.get("/api/violations", token=None, headers={"Authorization": op_basic})
    assert r.status == 401
    r = await admin.get("/api/violations", headers={"Proxy-Authorization": basic})
    assert r.status == 200  # the operator's own token opens it, whatever else is sent
    assert (await admin.get("/api/violations", token=OP)).status == 200
    assert (await admin.get("/api/nothing-here")).status == 404
    assert (await admin.get("/api/nothing-here", token=None)).status == 401


async def test_open_paths_and_the_dashboard(admin: Admin) -> None:
    for path in ("/metrics", "/healthz"):
        assert (await admin.get(path, token=None)).status == 200
    r = await admin.get("/", token=None)
    assert (r.status, r.headers["Location"]) == (303, "/login")
    r = await admin.get("/", token=None, headers={"Accept": "text/html"})
    assert r.status == 303
    r = await admin.get("/", token="acme-secret")
    assert r.status == 303
    r = await admin.get("/")
    assert r.status == 200 and r.content_type == "text/html"
    assert r.headers["Content-Security-Policy"] == (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    # the page's own choice stands (crawlguard.admin.dashboard); both keep URLs on this site
    assert r.headers["Referrer-Policy"] in ("no-referrer", "same-origin")
    r = await admin.get("/static/dashboard.css", token=None)
    assert r.status == 200
    r = await admin.get("/elsewhere?x=1", token=None)
    assert (r.status, r.headers["Location"]) == (303, "/login?next=/elsewhere%3Fx%3D1")


@pytest.mark.parametrize(
    "target",
    [
        "/static/../api/violations",
        "/static/%2e%2e/api/violations",
        "/metrics/../api/violations",
        "/login/../api/tenants",
        "//api/violations",
        "/./api/violations",
        "/API/violations",
        "http://127.0.0.1/api/violations",
    ],
)
async def test_no_path_spelling_reaches_the_api_without_a_token(admin: Admin, target: str) -> None:
    """Raw request targets (a client library would normalise them) through the open prefixes."""
    admin.seed(rec(0))
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.server.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(reply.split(b" ", 2)[1])
    assert status in (303, 401, 404), reply[:200]
    assert b"ua-generic" not in reply


async def test_without_an_operator_token_the_api_and_dashboard_refuse(tmp_path: Path) -> None:
    a = await start_admin(tmp_path, admin={"token_sha256": None})  # base_config has one
    try:
        message = "no operator token configured: set admin.token_sha256 or admin.token_env"
        for token in (None, OP, "anything"):
            r = await a.get("/api/violations", token=token)
            assert r.status == 403
            assert (await r.json()) == {"error": message}
            r = await a.get("/", token=token)
            assert r.status == 403 and message in await r.text()
        assert (await a.get("/login", token=None)).status == 403
        assert (await a.post("/login", {"token": OP})).status == 403
        assert (await a.get("/metrics", token=None)).status == 200
        assert (await a.get("/healthz", token=None)).status == 200
    finally:
        await stop_admin(a)


async def test_token_env_is_the_operator_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_OPERATOR_TOKEN", "from-env")
    section = {"token_env": "CG_TEST_OPERATOR_TOKEN", "token_sha256": None}
    a = await start_admin(tmp_path, admin=section)
    try:
        assert (await a.get("/api/tenants", token="from-env")).status == 200
        assert (await a.get("/api/tenants", token=OP)).status == 401
    finally:
        await stop_admin(a)


async def test_login_cookie_flow(admin: Admin) -> None:
    r = await admin.get("/login", token=None)
    assert r.status == 200 and r.content_type == "text/html"
    page = await r.text()
    assert '<form method="post" action="/login">' in page and 'name="token"' in page
    assert "<script" not in page and "style=" not in page
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Content-Type-Options"] == "nosniff"

    r = await admin.post("/login", {"token": "wrong"})
    assert r.status == 401 and "Wrong operator token" in await r.text()
    assert SESSION_COOKIE not in r.cookies
    r = await admin.post("/login", {"token": "acme-secret"})  # a tenant token is not one
    assert r.status == 401

    r = await admin.post("/login", {"token": OP})
    assert (r.status, r.headers["Location"]) == (303, "/")
    set_cookie = r.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert attribute in set_cookie, set_cookie
    value = cookie_of(r)
    expiry, sid, mac = value.split(".")
    assert abs(int(expiry) - (time.time() + 12 * 3600)) < 3600
    assert len(sid) == 43  # 32 random bytes: the server-side record's name
    digest = hashlib.sha256(OP.encode()).digest()
    signed = f"crawlguard-session:{expiry}:{sid}".encode()
    # keyed on a per-process secret too: the digest alone (it is in the config) cannot forge one
    assert mac != hmac.new(digest, signed, hashlib.sha256).hexdigest()
    assert value == admin.server.auth.make_session(digest, sid, now=int(expiry) - 12 * 3600)
    other = "A" * 43  # well signed, but no such session was ever recorded
    unrecorded = admin.server.auth.make_session(digest, other)

    cookie = {"Cookie": f"{SESSION_COOKIE}={value}"}
    assert (await admin.get("/api/violations", token=None, headers=cookie)).status == 200
    assert (await admin.get("/", token=None, headers=cookie)).status == 200
    # an explicit wrong bearer token is refused even next to a good cookie
    assert (await admin.get("/api/violations", token="wrong", headers=cookie)).status == 401

    def refused(v: str) -> Any:
        return admin.get("/api/violations", token=None, headers={"Cookie": f"{SESSION_COOKIE}={v}"})

    later = str(int(expiry) + 3600)
    make = admin.server.auth.make_session
    for bad in (
        f"{later}.{sid}.{mac}",  # expiry moved: the MAC no longer fits
        f"{expiry}.{sid}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        f"{expiry}.{other}.{mac}",  # another id under this MAC
        f"{expiry}.{sid}.",
        f"{expiry}.{mac}",  # the old stateless form
        mac,
        "",
        unrecorded,
        make(digest, sid, now=time.time() - 13 * 3600),  # well signed, expired
        make(hashlib.sha256(b"acme-secret").digest(), sid),  # signed with another key
    ):
        assert (await refused(bad)).status == 401, bad
    r = await admin.get(
        "/", token=None, headers={"Cookie": f"{SESSION_COOKIE}={later}.{sid}.{mac}"}
    )
    assert (r.status, r.headers["Location"]) == (303, "/login")

    r = await admin.post("/logout", {}, headers=cookie)
    assert (r.status, r.headers["Location"]) == (303, "/login")
    assert r.cookies[SESSION_COOKIE].value == ""
    assert "Max-Age=0" in r.headers["Set-Cookie"]


async def test_login_next_is_kept_local(admin: Admin) -> None:
    async def location(next_path: str) -> str:
        r = await admin.post("/login", {"token": OP, "next": next_path})
        assert r.status == 303
        return r.headers["Location"]

    assert await location("/api/tenants") == "/api/tenants"
    assert await location("/?tenant=acme") == "/?tenant=acme"
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example", "evil", ""):
        assert await location(evil) == "/", evil
    r = await admin.get("/login?next=//evil.example", token=None)
    assert 'value="/"' in await r.text()
    r = await admin.get('/login?next=/x"><b>', token=None)
    assert "<b>" not in await r.text()
    # a login form posted from another site is refused (login CSRF)
    r = await admin.post("/login", {"token": OP}, headers={"Origin": "https://evil.example"})
    assert r.status == 403
    r = await admin.post("/login", {"token": OP}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403
    r = await admin.post("/login", {"token": OP}, headers={"Origin": admin.base})
    assert r.status == 303
    # what a browser sends from our own no-referrer login page
    browser = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert (await admin.post("/login", {"token": OP}, headers=browser)).status == 303


async def test_a_browser_session_end_to_end(admin: Admin) -> None:
    """The real cookie jar: login, follow the redirect to the dashboard, call the API."""
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: the jar takes cookies from an IP host
    async with aiohttp.ClientSession(trust_env=False, cookie_jar=jar) as browser:
        async with browser.get(admin.base + "/") as r:
            assert str(r.url).endswith("/login") and r.status == 200
        async with browser.post(admin.base + "/login", data={"token": OP}) as r:
            assert r.status == 200 and str(r.url) == admin.base + "/"
        async with browser.get(admin.base + "/api/tenants") as r:
            assert r.status == 200
        async with browser.post(admin.base + "/logout") as r:
            assert str(r.url).endswith("/login")
        async with browser.get(admin.base + "/api/tenants") as r:
            assert r.status == 401


async def test_a_reload_that_changes_the_token_revokes_sessions(admin: Admin, tmp_path: Path):
    r = await admin.post("/login", {"token": OP})
    cookie = {"Cookie": f"{SESSION_COOKIE}={cookie_of(r)}"}
    assert (await admin.get("/api/tenants", token=None, headers=cookie)).status == 200
    cfg = base_config(tmp_path, admin={"token_sha256": sha256_hex("op2")})
    assert admin.guard.reload(parse_config(cfg)) == []  # applied in place, no restart
    assert (await admin.get("/api/tenants", token=None, headers=cookie)).status == 401
    assert (await admin.get("/api/tenants", token=OP)).status == 401
    assert (await admin.get("/api/tenants", token="op2")).status == 200
    # the listen address still needs a restart, and the token applies all the same
    cfg = base_config(tmp_path, admin={"port": 1, "token_sha256": sha256_hex("op3")})
    assert admin.guard.reload(parse_config(cfg)) == ["admin"]
    assert (await admin.get("/api/tenants", token="op3")).status == 200
    assert admin.guard.cfg.admin.port == 0


# -- /api/tenants and /api/summary ---------------------------------------------------------


async def test_tenants(admin: Admin) -> None:
    admin.seed(
        rec(0, "acme", "ua-generic"),
        rec(5, "acme", "robots-disallow"),
        rec(6, "acme", "crawl-delay", "delayed"),  # held, then forwarded: not a violation
        rec(1, "globex", "robots-disallow", "logged"),
        rec(2, "retired", "ua-missing"),
    )
    admin.guard.store.add_request_counts({("acme", "allowed"): 9, ("acme", "held"): 1}, at(0))
    body = await admin.json("/api/tenants")
    assert body["since"] is None
    by_id = {t["id"]: t for t in body["tenants"]}
    assert [t["id"] for t in body["tenants"]] == ["acme", "globex", "initech", "retired"]
    acme = by_id["acme"]
    assert acme["configured"] is True
    assert (acme["mode"], acme["pacing"], acme["product_tokens"]) == (
        "enforce", "reject", ["AcmeBot"],
    )  # fmt: skip
    assert acme["requests"] == {"allowed": 9, "held": 1}
    assert acme["violations"] == {"robots-disallow": 1, "ua-generic": 1}
    assert (acme["violations_total"], acme["held"], acme["last_violation"]) == (2, 1, at(5))
    assert by_id["globex"]["mode"] == "monitor" and by_id["globex"]["last_violation"] == at(1)
    assert by_id["initech"]["violations_total"] == 0
    assert by_id["initech"]["last_violation"] is None
    retired = by_id["retired"]
    assert retired["configured"] is False
    assert (retired["mode"], retired["pacing"], retired["product_tokens"]) == (None, None, None)
    assert retired["violations"] == {"ua-missing": 1}

    body = await admin.json(f"/api/tenants?since={at(2)}")
    assert body["since"] == at(2)
    by_id = {t["id"]: t for t in body["tenants"]}
    assert by_id["acme"]["violations"] == {"robots-disallow": 1}
    assert by_id["globex"]["violations_total"] == 0
    r = await admin.get("/api/tenants?since=never")
    assert r.status == 400


async def test_summary_buckets_kinds_and_top_hosts(admin: Admin) -> None:
    records = [
        rec(0, "acme", "ua-generic", url="http://a.example/1"),
        rec(59.99, "acme", "ua-generic", url="http://a.example/2"),
        rec(60, "acme", "robots-disallow", url="http://b.example/"),  # second bucket exactly
        rec(150, "acme", "crawl-delay", "delayed", url="http://a.example/3"),  # held
        rec(179, "globex", "robots-disallow", "logged", url="http://c.example/"),
        rec(180, "globex", "ua-generic", url="http://c.example/"),  # at `until`: out
        rec(-1, "acme", "ua-generic"),  # before `since`: out
    ]
    records += [rec(10 + i, "globex", "ua-generic", url=f"http://h{i}.example/") for i in range(12)]
    records += [rec(20, "globex", "ua-generic", url="http://h0.example/x") for _ in range(2)]
    admin.seed(*records)
    base = f"/api/summary?since={at(0)}&until={at(180)}&buckets=3"
    s = await admin.json(base)
    assert (s["since"], s["until"], s["bucket_seconds"]) == (at(0), at(180), 3600)
    assert s["buckets"] == [at(0), at(60), at(120)]
    series = {x["tenant"]: x["counts"] for x in s["series"]}
    assert series == {"acme": [2, 1, 0], "globex": [14, 0, 1], "initech": [0, 0, 0]}
    assert s["by_kind"] == [
        {"kind": "ua-generic", "count": 16},
        {"kind": "robots-disallow", "count": 2},
    ]
    assert s["total"] == 18
    tops = s["top_hosts"]
    assert tops[0] == {"tenant": "globex", "host": "h0.example", "count": 3}
    assert {"tenant": "acme", "host": "a.example", "count": 2} in tops
    globex = [t for t in tops if t["tenant"] == "globex"]
    assert len(globex) == 10  # the top 10 per tenant
    assert [t["count"] for t in tops] == sorted((t["count"] for t in tops), reverse=True)

    held = await admin.json(base + "&action=delayed")
    assert held["total"] == 1 and held["by_kind"] == [{"kind": "crawl-delay", "count": 1}]
    only = await admin.json(base + "&tenant=acme&kind=ua-generic")
    assert [x["tenant"] for x in only["series"]] == ["acme"] and only["total"] == 2
    assert (await admin.json(base + "&host=b.example"))["total"] == 1

    s = await admin.json(f"/api/summary?since={at(0)}&until={at(10)}&buckets=7")
    assert s["bucket_seconds"] == pytest.approx(600 / 7, abs=1e-6)
    assert len(s["buckets"]) == 7 and s["total"] == 1  # minute 0; minute 10 is `until`
    default = await admin.json("/api/summary")
    assert len(default["buckets"]) == 24 and default["bucket_seconds"] == 3600
    assert default["total"] == 0  # these records are from 2024
    # a relative since without until: whole hours back from the end of this hour, so the
    # buckets (7 h here) start on the hour and the store answers from its roll-ups
    week = await admin.json("/api/summary?since=7d")
    assert week["bucket_seconds"] == 7 * 3600 and week["since"][13:] == ":00:00.000000Z"
    assert week["until"][13:] == ":00:00.000000Z"
    for query in ("buckets=0", "buckets=201", f"since={at(5)}&until={at(5)}", "kind=allowed"):
        r = await admin.get("/api/summary?" + query)
        assert r.status == 400, query


# -- schema migration ----------------------------------------------------------------------------


# -- robots and evidence through the real proxy --------------------------------------------------
