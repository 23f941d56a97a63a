"""The tenant lifecycle and audit endpoints (`/api/tenants/...`, `/api/audit`, `/api/tenancy`):
request validation, the error shape (`{"error", "field"}`), the file/store split, the operator
token and the session cookie's same-origin rule, the 503 of a database that is down, and that
a token is in its creating or rotating response and nowhere else.

A real Runtime and AdminServer in-process (tests/adminutil.py) over real SQLite (and real
PostgreSQL through a relay a test cuts). Proxy processes picking the changes up:
tests/e2e/test_tenancy_api.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from adminutil import OP, Admin, cookie_of, start_admin, stop_admin

from crawlguard.admin.auth import SESSION_COOKIE

if TYPE_CHECKING:
    from pgutil import PgSchema, TcpRelay

pytest_plugins = ["pgutil"]  # its fixtures: pg_server, pg_schema, relay

STORE = {"source": "store", "rotate_grace": 5}


class Api:
    """JSON calls that send exactly the credentials and headers a test names."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = OP,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        url = self.admin.base + path
        async with self.admin.session.request(
            method, url, data=data, headers=h, allow_redirects=False
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    a = await start_admin(tmp_path, tenancy=STORE, tenants=[])
    try:
        yield a
    finally:
        await stop_admin(a)


@pytest.fixture
def api(admin: Admin) -> Api:
    return Api(admin)


def new(tid: str, *tokens: str, **extra: Any) -> dict[str, Any]:
    return {"id": tid, "product_tokens": list(tokens) or [f"{tid.title()}Bot"], **extra}


async def created(api: Api, tid: str, *tokens: str, **extra: Any) -> str:
    status, body = await api.call("POST", "/api/tenants", new(tid, *tokens, **extra))
    assert status == 201, body
    return str(body["token"])


# -- the lifecycle, through the API only ------------------------------------------------------


async def test_lifecycle_answers_and_the_token_only_once(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = await api.call(
        "POST",
        "/api/tenants",
        new("hooli", "HooliBot", mode="monitor", max_rps=2.5, deny_hosts=["*.gov"]),
    )
    assert status == 201, body
    assert set(body) == {"id", "token"} and body["id"] == "hooli"
    tokens = [body["token"]]
    assert len(tokens[0]) >= 32

    status, shown = await api.call("GET", "/api/tenants/hooli")
    assert status == 200, shown
    assert shown["id"] == "hooli" and shown["mode"] == "monitor" and shown["max_rps"] == 2.5
    assert shown["product_tokens"] == ["HooliBot"] and shown["disabled"] is False
    assert shown["deny_hosts"] == ["*.gov"]

    status, shown = await api.call("PATCH", "/api/tenants/hooli", {"mode": "enforce"})
    assert (status, shown["mode"], shown["max_rps"]) == (200, "enforce", 2.5), shown

    status, rotated = await api.call("POST", "/api/tenants/hooli/rotate")
    assert status == 200 and set(rotated) == {"token"}, rotated
    assert rotated["token"] not in tokens
    tokens.append(rotated["token"])

    status, gone = await api.call("DELETE", "/api/tenants/hooli")
    assert (status, gone["id"], gone["disabled"]) == (200, "hooli", True), gone
    status, again = await api.call("DELETE", "/api/tenants/hooli")  # disabling is idempotent
    assert (status, again["disabled"]) == (200, True), again
    status, kept = await api.call("GET", "/api/tenants/hooli")  # the record is kept
    assert (status, kept["disabled"], kept["product_tokens"]) == (200, True, ["HooliBot"])
    status, refused = await api.call("POST", "/api/tenants/hooli/rotate")
    assert status == 409 and set(refused) == {"error", "field"}, refused

    status, audit = await api.call("GET", "/api/tenants/hooli/audit")
    assert status == 200
    assert [e["action"] for e in audit] == ["disable", "rotate", "update", "create"]
    assert audit[2]["changes"] == {"mode": ["monitor", "enforce"]}
    status, everything = await api.call("GET", "/api/audit?tenant=hooli&limit=2")
    assert status == 200 and [e["action"] for e in everything] == ["disable", "rotate"]

    # nowhere after its own response: not in answers, audit rows, nor log records
    later = [
        await api.call("GET", "/api/tenants/hooli"),
        await api.call("GET", "/api/tenancy"),
        await api.call("GET", "/api/audit"),
        await api.call("GET", "/api/tenants/hooli/audit"),
        await api.call("GET", "/api/tenants"),
    ]
    seen = json.dumps(later) + "\n".join(r.getMessage() for r in caplog.records)
    for token in tokens:
        assert token not in seen
    assert "hooli" in seen  # the check looked at real output


async def test_the_audit_names_the_operator_token_label(tmp_path: Path) -> None:
    """`admin.token_label` is who the audit says made an API change."""
    a = await start_admin(
        tmp_path, tenancy=STORE, tenants=[], admin={"token_label": "ops-oncall@acme.example"}
    )
    try:
        api = Api(a)
        await created(api, "labelled", "LabelBot")
        status, audit = await api.call("GET", "/api/audit?tenant=labelled")
        assert status == 200
        assert [(e["actor"], e["action"]) for e in audit] == [
            ("api:ops-oncall@acme.example", "create")
        ]
    finally:
        await stop_admin(a)
    b = await start_admin(tmp_path / "default", tenancy=STORE, tenants=[])
    try:
        api = Api(b)
        await created(api, "unlabelled", "UnlabelledBot")
        status, audit = await api.call("GET", "/api/tenants/unlabelled/audit")
        assert [e["actor"] for e in audit] == ["api:operator"]
    finally:
        await stop_admin(b)


@pytest.mark.parametrize("label", ["", "has space", "x" * 65, "new\nline", "ünï"])
def test_a_bad_token_label_is_a_config_error(tmp_path: Path, label: str) -> None:
    from harness import base_config

    from crawlguard.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"admin\.token_label"):
        parse_config(base_config(tmp_path, admin={"token_label": label}))


# -- input validation ------------------------------------------------------------------------


async def test_bad_input_is_a_400_naming_the_field(api: Api) -> None:
    await created(api, "acmetwo", "AcmeTwoBot")
    cases: list[tuple[str, str, Any, bytes | None, str | None, str]] = [
        ("POST", "/api/tenants", None, b'{"id": "x", ', None, "malformed JSON"),
        ("POST", "/api/tenants", None, b"\xff\xfe", None, "UTF-8"),
        ("POST", "/api/tenants", None, b"", None, "empty"),
        ("POST", "/api/tenants", ["id", "x"], None, None, "JSON object"),
        ("POST", "/api/tenants", {"product_tokens": ["NoIdBot"]}, None, "id", "id"),
        ("POST", "/api/tenants", new("x1", "XoneBot", colour="red"), None, "colour", "unknown"),
        ("POST", "/api/tenants", new("x2", "XtwoBot", token="t"), None, "token", "unknown"),
        ("POST", "/api/tenants", new("x3", "XthreeBot", mode="strict"), None, "mode", "mode"),
        ("POST", "/api/tenants", new("x4", "Bad Bot"), None, "product_tokens", "product"),
        ("POST", "/api/tenants", new("x5", "XfiveBot", max_rps=-1), None, "max_rps", "max_rps"),
        ("POST", "/api/tenants", new("-x6", "XsixBot"), None, "id", "id"),
        ("POST", "/api/tenants", new("x7", "XsevenBot", pacing="slow"), None, "pacing", "pacing"),
        # JSON types are not coerced, and nothing a database cannot hold gets to it
        ("POST", "/api/tenants", new("x8", "XeightBot", max_rps="2"), None, "max_rps", "number"),
        ("POST", "/api/tenants", new("w1", "WoneBot", weight="2"), None, "weight", "number"),
        ("POST", "/api/tenants", new("w2", "WtwoBot", weight=True), None, "weight", "number"),
        ("POST", "/api/tenants", new("w3", "WthreeBot", weight=0), None, "weight", "greater"),
        ("POST", "/api/tenants", new("w4", "WfourBot", weight=1001), None, "weight", "1000"),
        ("PATCH", "/api/tenants/acmetwo", {"weight": None}, None, "weight", "number"),
        (
            "POST",
            "/api/tenants",
            new("x9", "XnineBot", max_concurrency=True),
            None,
            "max_concurrency",
            "integer",
        ),
        (
            "POST",
            "/api/tenants",
            new("xa", "XaBot", max_concurrency=10**30),
            None,
            "max_concurrency",
            "integer",
        ),
        (
            "POST",
            "/api/tenants",
            {"id": "xb", "product_tokens": "XbBot"},
            None,
            "product_tokens",
            "list of strings",
        ),
        ("POST", "/api/tenants", {"id": 12, "product_tokens": ["XcBot"]}, None, "id", "string"),
        (
            "POST",
            "/api/tenants",
            None,
            b'{"id": "xd", "product_tokens": ["XdBot"], "max_rps": Infinity}',
            None,
            "Infinity",
        ),
        (
            "POST",
            "/api/tenants",
            None,
            b'{"id": "xe", "product_tokens": ["XeBot"], "max_rps": 1e400}',
            None,
            "range",
        ),
        ("POST", "/api/tenants", None, b"[" * 50_000 + b"]" * 10, None, "nested"),
        ("PATCH", "/api/tenants/acmetwo", {"id": "renamed"}, None, "id", "id"),
        ("PATCH", "/api/tenants/acmetwo", {"mode": None}, None, "mode", "string"),
        ("PATCH", "/api/tenants/acmetwo", {"mode": "loud"}, None, "mode", "mode"),
        ("PATCH", "/api/tenants/acmetwo", {}, None, None, "nothing to change"),
        ("PATCH", "/api/tenants/acmetwo", {"token_sha256": "0" * 64}, None, "token_sha256", ""),
        ("POST", "/api/tenants/acmetwo/rotate", {"grace": 0}, None, "grace", "unknown"),
        ("GET", "/api/audit?limit=0", None, None, "limit", "limit"),
        ("GET", "/api/audit?limit=ten", None, None, "limit", "limit"),
        ("GET", "/api/audit?tennant=acme2", None, None, "tennant", "unknown"),
        ("GET", "/api/tenants/acmetwo/audit?tenant=x", None, None, "tenant", "unknown"),
    ]
    for method, path, body, raw, field, words in cases:
        status, answer = await api.call(method, path, body, raw=raw)
        assert status == 400, (method, path, body, raw, status, answer)
        assert isinstance(answer, dict) and set(answer) == {"error", "field"}, answer
        assert answer["field"] == field, (path, body, raw, answer)
        assert words.lower() in answer["error"].lower(), (path, body, raw, answer)
    # nothing was made or changed by any of them
    status, shown = await api.call("GET", "/api/tenants/acmetwo")
    assert (status, shown["mode"]) == (200, "enforce")
    status, audit = await api.call("GET", "/api/audit")
    assert [e["action"] for e in audit] == ["create"]


async def test_conflicts_and_missing_tenants(api: Api) -> None:
    await created(api, "first", "SharedBot")
    status, body = await api.call("POST", "/api/tenants", new("second", "sharedbot"))
    assert (status, body["field"]) == (400, "product_tokens"), body
    assert "'first'" in body["error"] and "'second'" in body["error"]
    status, body = await api.call("POST", "/api/tenants", new("first", "OtherBot"))
    assert (status, body["field"]) == (409, "id"), body
    await created(api, "second", "SecondBot")
    status, body = await api.call("PATCH", "/api/tenants/second", {"product_tokens": ["SHAREDBOT"]})
    assert (status, body["field"]) == (400, "product_tokens"), body
    assert "'first'" in body["error"] and "'second'" in body["error"]
    for method, path in [
        ("GET", "/api/tenants/nobody"),
        ("PATCH", "/api/tenants/nobody"),
        ("POST", "/api/tenants/nobody/rotate"),
        ("DELETE", "/api/tenants/nobody"),
        ("GET", "/api/tenants/nobody/audit"),
    ]:
        status, body = await api.call(method, path, {"mode": "off"} if method == "PATCH" else None)
        assert status == 404 and set(body) == {"error", "field"}, (method, path, body)
        assert "nobody" in body["error"]


async def test_a_body_over_the_limit_is_a_413(api: Api) -> None:
    from crawlguard.admin.tenants_api import BODY_LIMIT

    big = json.dumps(new("big", "BigBot", deny_hosts=["x" * 100] * (BODY_LIMIT // 100)))
    assert len(big) > BODY_LIMIT
    status, body = await api.call("POST", "/api/tenants", raw=big.encode())
    assert status == 413 and set(body) == {"error", "field"}, body
    # chunked, without a Content-Length: counted as it arrives

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096].encode()

    h = {"Authorization": f"Bearer {OP}", "Content-Type": "application/json"}
    url = api.admin.base + "/api/tenants"
    async with api.admin.session.post(url, data=chunks(), headers=h) as r:
        assert r.status == 413, await r.text()
    status, _ = await api.call("GET", "/api/tenants/big")
    assert status == 404


# -- who may change tenants ------------------------------------------------------------------


async def test_every_change_needs_the_operator_token(api: Api) -> None:
    await created(api, "guarded", "GuardedBot")
    changes = [
        ("POST", "/api/tenants", new("intruder", "IntruderBot")),
        ("PATCH", "/api/tenants/guarded", {"mode": "off"}),
        ("POST", "/api/tenants/guarded/rotate", None),
        ("DELETE", "/api/tenants/guarded", None),
    ]
    for token in (None, "guarded-token-guess"):
        for method, path, body in changes:
            status, answer = await api.call(method, path, body, token=token)
            assert status == 401, (token, method, path, answer)
    for path in ("/api/tenants/guarded", "/api/audit", "/api/tenancy"):
        assert (await api.call("GET", path, token=None))[0] == 401
    status, shown = await api.call("GET", "/api/tenants/guarded")
    assert (shown["mode"], shown["disabled"]) == ("enforce", False)
    assert (await api.call("GET", "/api/tenants/intruder"))[0] == 404
    status, audit = await api.call("GET", "/api/audit")
    assert [e["action"] for e in audit] == ["create"]


async def test_a_session_cookie_changes_tenants_only_from_the_same_origin(
    admin: Admin, api: Api
) -> None:
    r = await admin.post("/login", {"token": OP})
    assert r.status == 303
    cookie = {"Cookie": f"{SESSION_COOKIE}={cookie_of(r)}"}
    me = admin.base
    refused = [
        {},  # no Origin: not from a page
        {"Origin": "null"},
        {"Origin": "http://evil.example"},
        {"Origin": me.replace("127.0.0.1", "localhost")},  # another origin, same machine
        {"Origin": me, "Sec-Fetch-Site": "same-site"},  # a sibling host of the same site
        {"Sec-Fetch-Site": "cross-site"},
    ]
    for extra in refused:
        headers = {**cookie, **extra}
        for method, path, body in [
            ("POST", "/api/tenants", new("csrf", "CsrfBot")),
            ("PATCH", "/api/tenants/csrf", {"mode": "off"}),
            ("POST", "/api/tenants/csrf/rotate", None),
            ("DELETE", "/api/tenants/csrf", None),
        ]:
            status, answer = await api.call(method, path, body, token=None, headers=headers)
            assert status == 403, (extra, method, path, answer)
            assert "cross-origin" in answer["error"]
    # reading needs no Origin; a change from the page itself goes through
    assert (await api.call("GET", "/api/tenancy", token=None, headers=cookie))[0] == 200
    for extra in ({"Origin": me}, {"Origin": me, "Sec-Fetch-Site": "same-origin"}):
        headers = {**cookie, **extra}
        status, body = await api.call(
            "PATCH", "/api/tenants/nobody", {"mode": "off"}, token=None, headers=headers
        )
        assert status == 404, body  # past the origin check
    status, body = await api.call(
        "POST", "/api/tenants", new("csrf", "CsrfBot"), token=None,
        headers={**cookie, "Origin": me, "Sec-Fetch-Site": "same-origin"},
    )  # fmt: skip
    assert status == 201, body


# -- tenancy.source: file ------------------------------------------------------------------


async def test_with_source_file_changes_are_409_and_reads_come_from_the_config(
    tmp_path: Path,
) -> None:
    a = await start_admin(tmp_path)  # base_config: acme, globex, initech in the file
    try:
        api = Api(a)
        for method, path, body in [
            ("POST", "/api/tenants", new("newco", "NewcoBot")),
            ("PATCH", "/api/tenants/acme", {"mode": "off"}),
            ("POST", "/api/tenants/acme/rotate", None),
            ("DELETE", "/api/tenants/acme", None),
        ]:
            status, answer = await api.call(method, path, body)
            assert status == 409, (method, path, answer)
            assert answer["field"] == "tenancy.source"
            assert "config file" in answer["error"] and "store" in answer["error"]
        status, acme = await api.call("GET", "/api/tenants/acme")
        assert status == 200, acme
        assert acme["product_tokens"] == ["AcmeBot"] and acme["mode"] == "enforce"
        assert acme["weight"] == 1.0
        assert not any("token" in k and k != "product_tokens" for k in acme), acme
        status, globex = await api.call("GET", "/api/tenants/globex")
        assert globex["mode"] == "monitor"
        assert (await api.call("GET", "/api/tenants/nobody"))[0] == 404
        status, tenancy = await api.call("GET", "/api/tenancy")
        assert tenancy == {"source": "file", "rotate_grace": 3600.0}
        assert await api.call("GET", "/api/audit") == (200, [])
    finally:
        await stop_admin(a)


async def test_tenancy_tells_the_dashboard_the_source_and_the_grace(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crawlguard.admin import tenants_api

    await created(api, "shown", "ShownBot")
    status, body = await api.call("GET", "/api/tenancy")
    assert status == 200
    assert (body["source"], body["rotate_grace"]) == ("store", 5.0)
    assert [t["id"] for t in body["tenants"]] == ["shown"]
    assert (body["tenants_total"], body["truncated"]) == (1, False)
    # a large registry: the first records only, and the page is told so
    await created(api, "alpha", "AlphaBot")
    await created(api, "zulu", "ZuluBot")
    monkeypatch.setattr(tenants_api, "TENANCY_LIST_LIMIT", 2)
    status, body = await api.call("GET", "/api/tenancy")
    assert [t["id"] for t in body["tenants"]] == ["alpha", "shown"]
    assert (body["tenants_total"], body["truncated"]) == (3, True)


# -- weight (issue 22) -------------------------------------------------------------------------


async def weight_round_trip(api: Api) -> None:
    """Create with a weight, read it, change it, see the change audited and in the running set;
    a tenant made without one weighs 1."""
    await created(api, "heavy", "HeavyBot", weight=2.5)
    await created(api, "plain", "PlainBot")
    status, shown = await api.call("GET", "/api/tenants/heavy")
    assert (status, shown["weight"]) == (200, 2.5), shown
    assert (await api.call("GET", "/api/tenants/plain"))[1]["weight"] == 1.0
    status, shown = await api.call("PATCH", "/api/tenants/heavy", {"weight": 0.5})
    assert (status, shown["weight"], shown["product_tokens"]) == (200, 0.5, ["HeavyBot"]), shown
    status, audit = await api.call("GET", "/api/tenants/heavy/audit")
    assert status == 200 and audit[0]["changes"] == {"weight": [2.5, 0.5]}, audit
    assert audit[1]["action"] == "create" and audit[1]["changes"]["weight"] == [None, 2.5]


async def test_weight_round_trips_through_the_api_on_sqlite(api: Api) -> None:
    await weight_round_trip(api)
    running, _ = api.admin.guard.tenancy.running_set()
    assert {t.id: t.weight for t in running} == {"heavy": 0.5, "plain": 1.0}


async def test_weight_round_trips_through_the_api_on_postgresql(
    tmp_path: Path, pg_schema: PgSchema
) -> None:
    a = await start_admin(tmp_path, tenancy=STORE, tenants=[], store={"url": pg_schema.url()})
    try:
        await weight_round_trip(Api(a))
        rows = pg_schema.rows("SELECT id, weight FROM tenancy_tenants ORDER BY id")
        assert rows == [("heavy", 0.5), ("plain", 1.0)]
    finally:
        await stop_admin(a)


# -- the database down -----------------------------------------------------------------------


async def test_a_database_that_is_down_is_a_503(
    tmp_path: Path, pg_schema: PgSchema, relay: TcpRelay
) -> None:
    url = pg_schema.url(port=relay.port)
    a = await start_admin(tmp_path, tenancy=STORE, tenants=[], store={"url": url})
    try:
        api = Api(a)
        await created(api, "pgco", "PgcoBot")
        relay.stop()
        for method, path, body in [
            ("POST", "/api/tenants", new("later", "LaterBot")),
            ("PATCH", "/api/tenants/pgco", {"mode": "off"}),
            ("GET", "/api/tenants/pgco", None),
            ("GET", "/api/audit", None),
        ]:
            status, answer = await api.call(method, path, body)
            assert status == 503, (method, path, answer)
            assert set(answer) == {"error", "field"}
        relay.start()
        status, shown = await api.call("GET", "/api/tenants/pgco")
        assert (status, shown["mode"]) == (200, "enforce"), shown
        assert (await api.call("GET", "/api/tenants/later"))[0] == 404
    finally:
        await stop_admin(a)


# -- the operator views list the registry's tenants -------------------------------------------


async def test_tenants_and_summary_list_the_registry_tenants_quiet_or_not(api: Api) -> None:
    """With `tenancy.source: store` the file lists no tenants: `/api/tenants` and the summary's
    series still show every registry tenant (a disabled one marked), with no traffic yet."""
    await created(api, "quiet", "QuietBot")
    await created(api, "gone", "GoneBot")
    status, _ = await api.call("DELETE", "/api/tenants/gone")
    assert status == 200
    status, body = await api.call("GET", "/api/tenants")
    assert status == 200, body
    rows = {row["id"]: row for row in body["tenants"]}
    assert rows["quiet"]["configured"] is True and rows["quiet"]["disabled"] is False
    assert rows["quiet"]["product_tokens"] == ["QuietBot"]
    assert rows["gone"]["disabled"] is True
    status, summary = await api.call("GET", "/api/summary")
    assert status == 200, summary
    assert {s["tenant"] for s in summary["series"]} >= {"quiet", "gone"}
