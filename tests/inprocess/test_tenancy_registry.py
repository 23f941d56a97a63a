"""The tenant registry contract (crawlguard.tenancy), run on SQLite and on PostgreSQL.

Create (the token once, only its hash stored), the config file's validation (product tokens
unique across tenants, ASCII-folded, naming both), update, rotate with a grace, disable,
import (idempotent, all or none), the audit log (who, when, what; never a token or a hash),
the version every sync watches, and two processes' concurrent creates of one product token.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from crawlguard.config import parse_config
from crawlguard.tenancy import TenancyError, TenantRegistry, open_registry

if TYPE_CHECKING:
    from storeutil import Backend

pytest_plugins = ["pgutil", "storeutil"]  # fixtures: pg_server, pg_schema; backend

TABLES = ("tenancy_tenants", "tenancy_retired", "tenancy_tokens", "tenancy_audit")
HASH = hashlib.sha256(b"seeded-token").hexdigest()


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_for(url: str) -> TenantRegistry:
    return open_registry(parse_config({"store": {"url": url}, "tenancy": {"source": "store"}}))


@pytest.fixture
def registry(backend: Backend) -> Iterator[TenantRegistry]:
    r = open_for(backend.url)
    yield r
    r.close()


def table_text(url: str) -> dict[str, str]:
    """Every tenancy table's rows as text, read behind the registry's back."""
    out: dict[str, str] = {}
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            for table in TABLES:
                out[table] = repr(db.execute(f"SELECT * FROM {table}").fetchall())
            out["dump"] = "\n".join(db.iterdump())
        finally:
            db.close()
        return out
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            out[table] = repr(conn.execute(f"SELECT t::text FROM {table} AS t").fetchall())
    return out


def error(call: Any, *args: Any, **kw: Any) -> TenancyError:
    with pytest.raises(TenancyError) as info:
        call(*args, **kw)
    return info.value


def test_create_returns_the_token_once_and_stores_only_its_hash(
    registry: TenantRegistry, backend: Backend
) -> None:
    record, token = registry.create(
        {"id": "acme", "product_tokens": ["AcmeBot"], "mode": "monitor", "max_rps": 2},
        actor="cli:ops",
    )
    assert len(token) >= 40 and record.id == "acme" and record.mode == "monitor"
    assert record.max_rps == 2 and not record.disabled
    assert record.created_at.endswith("Z") and record.created_at == record.updated_at
    public = registry.get("acme").public()  # type: ignore[union-attr]
    assert public["product_tokens"] == ["AcmeBot"]
    assert not {"token", "token_sha256", "token_env"} & public.keys()
    assert token not in repr(public) and sha(token) not in repr(public)
    tenants, retired = registry.running_set()
    assert [(t.id, t.token_sha256) for t in tenants] == [("acme", sha(token))]
    assert retired == {}
    text = table_text(backend.url)
    for table, rows in text.items():
        assert token not in rows, table
    assert sha(token) in text["tenancy_tenants"]
    assert all(sha(token) not in text[t] for t in ("tenancy_audit", "tenancy_tokens"))
    other, token2 = registry.create({"id": "beta", "product_tokens": ["BetaBot"]}, actor="x")
    assert token2 != token and other.id == "beta"


def test_product_tokens_are_unique_ascii_folded_naming_both_tenants(
    registry: TenantRegistry,
) -> None:
    registry.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    err = error(registry.create, {"id": "copycat", "product_tokens": ["ACMEBOT"]}, actor="x")
    assert err.status == 400 and err.field == "product_tokens"
    assert "'acme'" in err.message and "'copycat'" in err.message
    assert err.to_json() == {"error": err.message, "field": "product_tokens"}
    assert registry.get("copycat") is None
    # one tenant may list a token twice in two spellings, as in the config file
    registry.create({"id": "beta", "product_tokens": ["BetaBot", "betabot"]}, actor="x")
    err = error(registry.update, "beta", {"product_tokens": ["BetaBot", "acmebot"]}, actor="x")
    assert err.field == "product_tokens" and "'acme'" in err.message and "'beta'" in err.message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"id": "bad id", "product_tokens": ["GoodBot"]}, "id"),
        ({"product_tokens": ["GoodBot"]}, "id"),
        ({"id": "ok", "product_tokens": []}, "product_tokens"),
        ({"id": "ok", "product_tokens": ["curl"]}, "product_tokens"),
        ({"id": "ok", "product_tokens": ["Googlebot"]}, "product_tokens"),
        ({"id": "ok", "product_tokens": ["GoodBot"], "mode": "loud"}, "mode"),
        ({"id": "ok", "product_tokens": ["GoodBot"], "max_concurrency": 0}, "max_concurrency"),
        ({"id": "ok", "product_tokens": ["GoodBot"], "token_sha256": HASH}, "token_sha256"),
        ({"id": "ok", "product_tokens": ["GoodBot"], "colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    registry: TenantRegistry, fields: dict[str, Any], field: str
) -> None:
    err = error(registry.create, fields, actor="x")
    assert (err.status, err.field) == (400, field)
    assert field in err.message
    assert registry.list() == [] and registry.version() == 0


def test_an_existing_id_is_a_409_and_a_missing_one_a_404(registry: TenantRegistry) -> None:
    registry.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    err = error(registry.create, {"id": "acme", "product_tokens": ["OtherBot"]}, actor="x")
    assert (err.status, err.field) == (409, "id")
    for call, args in (
        (registry.update, ("ghost", {"mode": "monitor"})),
        (registry.disable, ("ghost",)),
    ):
        assert error(call, *args, actor="x").status == 404
    assert error(registry.rotate, "ghost", actor="x", grace=0).status == 404
    assert registry.get("ghost") is None


def test_update_changes_fields_releases_tokens_and_audits_the_difference(
    registry: TenantRegistry,
) -> None:
    registry.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="cli:ops")
    v = registry.version()
    record = registry.update(
        "acme",
        {"product_tokens": ["AcmeNews"], "pacing": "delay", "deny_hosts": ["*.Example.org"]},
        actor="api:operator",
    )
    assert record.product_tokens == ("AcmeNews",) and record.pacing == "delay"
    assert record.deny_hosts == ("*.example.org",)  # normalised as in the config file
    assert record.updated_at > record.created_at
    assert registry.version() > v
    entry = registry.audit(tenant="acme", limit=1)[0]
    assert (entry.actor, entry.action) == ("api:operator", "update")
    assert entry.changes == {
        "product_tokens": [["AcmeBot"], ["AcmeNews"]],
        "pacing": ["reject", "delay"],
        "deny_hosts": [[], ["*.example.org"]],
    }
    # the released token is free for another tenant
    registry.create({"id": "beta", "product_tokens": ["AcmeBot"]}, actor="x")
    # nothing changed: no audit row, no new version
    v = registry.version()
    assert registry.update("acme", {"pacing": "delay"}, actor="x").pacing == "delay"
    assert registry.version() == v
    for fields, field in (({"id": "other"}, "id"), ({"token_sha256": HASH}, "token_sha256")):
        assert error(registry.update, "acme", fields, actor="x").field == field


def test_rotate_retires_the_old_digest_for_the_grace(
    registry: TenantRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, first = registry.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    before = time.time()
    second = registry.rotate("acme", actor="cli:ops", grace=3600)
    assert second != first
    tenants, retired = registry.running_set()
    assert tenants[0].token_sha256 == sha(second)
    [(digest, expires)] = retired["acme"]
    assert digest == bytes.fromhex(sha(first))
    assert before + 3600 <= expires <= time.time() + 3600
    # once the grace is over, the old digest is no longer in the running set
    import crawlguard.tenancy.registry as module

    real = time.time
    monkeypatch.setattr(module.time, "time", lambda: real() + 3601)
    assert registry.running_set()[1] == {}
    monkeypatch.setattr(module.time, "time", real)
    # grace 0: the previous token is invalid at once (and the earlier retired one stays)
    third = registry.rotate("acme", actor="x", grace=0)
    tenants, retired = registry.running_set()
    assert tenants[0].token_sha256 == sha(third)
    assert [d for d, _ in retired["acme"]] == [bytes.fromhex(sha(first))]
    assert error(registry.rotate, "acme", actor="x", grace=-1).field == "grace"
    entry = registry.audit(tenant="acme", limit=1)[0]
    assert entry.action == "rotate" and "token" in entry.changes


def test_disable_keeps_the_tenant_and_its_tokens_out_of_the_running_set(
    registry: TenantRegistry,
) -> None:
    registry.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    registry.rotate("acme", actor="x", grace=3600)
    registry.create({"id": "beta", "product_tokens": ["BetaBot"]}, actor="x")
    record = registry.disable("acme", actor="api:operator")
    assert record.disabled and registry.get("acme") == record
    tenants, retired = registry.running_set()
    assert [t.id for t in tenants] == ["beta"] and retired == {}
    assert [r.id for r in registry.list()] == ["acme", "beta"]
    err = error(registry.create, {"id": "thief", "product_tokens": ["acmebot"]}, actor="x")
    assert err.field == "product_tokens" and "'acme'" in err.message and "disabled" in err.message
    assert error(registry.rotate, "acme", actor="x", grace=0).status == 409
    v = registry.version()
    assert registry.disable("acme", actor="x").disabled  # again: nothing changes
    assert registry.version() == v
    entry = registry.audit(tenant="acme", limit=1)[0]
    assert (entry.action, entry.changes) == ("disable", {"disabled": [False, True]})


def test_import_is_idempotent_keeps_hashes_and_is_all_or_none(
    registry: TenantRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_BETA_TOKEN", "beta-secret")
    items = [
        {"id": "acme", "token_sha256": HASH, "product_tokens": ["AcmeBot"], "mode": "monitor"},
        {"id": "beta", "token_env": "CG_TEST_BETA_TOKEN", "product_tokens": ["BetaBot"]},
    ]
    assert registry.import_file(items, actor="cli:ops") == ["acme", "beta"]
    tenants, _ = registry.running_set()
    assert {t.id: t.token_sha256 for t in tenants} == {"acme": HASH, "beta": sha("beta-secret")}
    v = registry.version()
    assert registry.import_file(items, actor="cli:ops") == []
    assert registry.version() == v
    bad = [
        {"id": "gamma", "token_sha256": HASH, "product_tokens": ["GammaBot"]},
        {"id": "delta", "token_sha256": HASH, "product_tokens": ["acmebot"]},
    ]
    err = error(registry.import_file, bad, actor="x")
    assert err.field == "product_tokens" and "'acme'" in err.message and "'delta'" in err.message
    assert registry.get("gamma") is None and registry.version() == v
    err = error(registry.import_file, [{"id": "e", "product_tokens": ["EBot"]}], actor="x")
    assert err.status == 400 and "token" in err.message
    err = error(registry.import_file, [{**bad[0], "priority": 2}], actor="x")
    assert err.field == "priority"
    entry = registry.audit(tenant="beta")[0]
    assert (entry.actor, entry.action) == ("cli:ops", "import")


def test_every_change_is_audited_without_tokens_or_hashes(
    registry: TenantRegistry, backend: Backend
) -> None:
    _, t1 = registry.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="cli:ops")
    versions = [registry.version()]
    registry.update("acme", {"mode": "monitor"}, actor="api:operator")
    versions.append(registry.version())
    t2 = registry.rotate("acme", actor="api:operator", grace=60)
    versions.append(registry.version())
    registry.import_file([{"id": "b", "token_sha256": HASH, "product_tokens": ["BBot"]}], actor="s")
    versions.append(registry.version())
    registry.disable("acme", actor="cli:ops")
    versions.append(registry.version())
    assert versions == sorted(set(versions)) and versions[0] > 0
    entries = registry.audit()
    assert [e.action for e in entries] == ["disable", "import", "rotate", "update", "create"]
    assert [e.id for e in entries] == sorted(versions, reverse=True)
    assert [e.actor for e in entries] == ["cli:ops", "s", "api:operator", "api:operator", "cli:ops"]
    assert all(e.ts.endswith("Z") for e in entries)
    assert entries[-1].changes["product_tokens"] == [None, ["AcmeBot"]]
    assert [e.tenant for e in registry.audit(tenant="acme", limit=2)] == ["acme", "acme"]
    assert len(registry.audit(limit=2)) == 2
    assert error(registry.audit, limit=0).field == "limit"
    audit_rows = table_text(backend.url)["tenancy_audit"]
    public = repr([e.public() for e in entries])
    for secret in (t1, t2, sha(t1), sha(t2), HASH):
        assert secret not in audit_rows and secret not in public


def race(
    a: TenantRegistry, b: TenantRegistry, left: tuple[str, str], right: tuple[str, str]
) -> list[object]:
    """`a` creates tenant left[0] with product token left[1] while `b` creates right[0]."""
    barrier = threading.Barrier(2)
    results: list[object] = [None, None]

    def create(side: int, reg: TenantRegistry, tenant_id: str, token: str) -> None:
        barrier.wait()
        try:
            results[side] = reg.create({"id": tenant_id, "product_tokens": [token]}, actor="x")
        except TenancyError as exc:
            results[side] = exc

    threads = [
        threading.Thread(target=create, args=(0, a, *left)),
        threading.Thread(target=create, args=(1, b, *right)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_creates_of_one_product_token_have_one_winner(backend: Backend) -> None:
    """Two registries (two processes' connections) racing: the database lets one win."""
    a, b = open_for(backend.url), open_for(backend.url)
    try:
        for n in range(8):
            letter = chr(65 + n)
            left, right = f"left{n}", f"right{n}"
            results = race(a, b, (left, f"RaceBot{letter}"), (right, f"racebot{letter}"))
            errors = [r for r in results if isinstance(r, TenancyError)]
            assert None not in results and len(errors) == 1, results
            assert errors[0].field == "product_tokens"
            assert f"'{left}'" in errors[0].message and f"'{right}'" in errors[0].message
            # the same id from both sides: one 409
            a_side, b_side = (f"same{n}", f"SameBot{letter}"), (f"same{n}", f"OwnBot{letter}")
            errors = [r for r in race(a, b, a_side, b_side) if isinstance(r, TenancyError)]
            assert [(e.status, e.field) for e in errors] == [(409, "id")]
            record = a.get(f"same{n}")
            assert record is not None and len(record.product_tokens) == 1
        assert len(a.list()) == 16
        tenants, _ = b.running_set()
        assert len(tenants) == 16
        assert len([t for t in tenants if t.id.startswith("same")]) == 8
    finally:
        a.close()
        b.close()


def test_two_registries_see_each_others_changes_through_the_version(backend: Backend) -> None:
    a, b = open_for(backend.url), open_for(backend.url)
    try:
        assert a.version() == b.version() == 0
        a.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
        assert b.version() == a.version() > 0
        assert [t.id for t in b.running_set()[0]] == ["acme"]
    finally:
        a.close()
        b.close()


def test_changed_since_names_what_a_sync_must_load_again(registry: TenantRegistry) -> None:
    registry.create({"id": "acme", "product_tokens": ["AcmeBot"]}, actor="x")
    registry.create({"id": "beta", "product_tokens": ["BetaBot"]}, actor="x")
    v = registry.version()
    assert registry.changed_since(v) == (v, set())
    assert registry.changed_since(0) == (v, {"acme", "beta"})
    registry.rotate("beta", actor="x", grace=600)
    registry.create({"id": "gamma", "product_tokens": ["GammaBot"]}, actor="x")
    registry.disable("acme", actor="x")
    now, ids = registry.changed_since(v)
    assert now == registry.version() > v and ids == {"acme", "beta", "gamma"}
    tenants, retired = registry.running_subset(ids)
    assert [t.id for t in tenants] == ["beta", "gamma"]  # acme is disabled: absent
    assert list(retired) == ["beta"]
    full, full_retired = registry.running_set()
    assert {t.id: t for t in full} == {t.id: t for t in tenants} and full_retired == retired
    assert registry.running_subset([]) == ([], {})
    many = [f"id{n}" for n in range(1200)]  # more than one IN (...) list
    assert [t.id for t in registry.running_subset([*many, "gamma"])[0]] == ["gamma"]


# -- weight (issue 22: a tenant's share of a busy site) ----------------------------------------


def behind(url: str, sql: str) -> None:
    """One statement run on the registry's database behind its back."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            db.execute(sql)
            db.commit()
        finally:
            db.close()
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def test_weight_round_trips_through_create_update_import_and_the_running_set(
    registry: TenantRegistry,
) -> None:
    record, _ = registry.create(
        {"id": "acme", "product_tokens": ["AcmeBot"], "weight": 2.5}, actor="x"
    )
    assert record.weight == 2.5 and record.public()["weight"] == 2.5
    plain, _ = registry.create({"id": "beta", "product_tokens": ["BetaBot"]}, actor="x")
    assert plain.weight == 1.0  # the config file's default
    assert registry.update("acme", {"weight": 0.25}, actor="api:operator").weight == 0.25
    assert registry.audit(tenant="acme", limit=1)[0].changes == {"weight": [2.5, 0.25]}
    assert registry.import_file(
        [{"id": "gamma", "token_sha256": HASH, "product_tokens": ["GammaBot"], "weight": 1000}],
        actor="x",
    ) == ["gamma"]
    tenants, _ = registry.running_set()
    assert {t.id: t.weight for t in tenants} == {"acme": 0.25, "beta": 1.0, "gamma": 1000.0}
    assert {t.id: t.weight for t in registry.running_subset(["acme"])[0]} == {"acme": 0.25}
    assert [r.weight for r in registry.list()] == [0.25, 1.0, 1000.0]
    for bad in (0, -1, 1000.5, "heavy"):
        err = error(registry.update, "acme", {"weight": bad}, actor="x")
        assert (err.status, err.field) == (400, "weight"), bad
    assert registry.get("acme").weight == 0.25  # type: ignore[union-attr]


def test_a_registry_from_before_weight_gets_the_column_with_weight_1(backend: Backend) -> None:
    """A registry an older crawlguard made has no `weight` column: opening it adds one, every
    existing tenant weighing 1, and the column then takes new values."""
    first = open_for(backend.url)
    try:
        first.create({"id": "old", "product_tokens": ["OldBot"]}, actor="x")
    finally:
        first.close()
    behind(backend.url, "ALTER TABLE tenancy_tenants DROP COLUMN weight")
    registry = open_for(backend.url)
    try:
        assert registry.get("old").weight == 1.0  # type: ignore[union-attr]
        assert registry.update("old", {"weight": 3}, actor="x").weight == 3.0
        registry.create({"id": "new", "product_tokens": ["NewBot"], "weight": 0.5}, actor="x")
        assert {t.id: t.weight for t in registry.running_set()[0]} == {"old": 3.0, "new": 0.5}
    finally:
        registry.close()
    again = open_for(backend.url)  # a second open finds the column and changes nothing
    try:
        assert again.get("old").weight == 3.0  # type: ignore[union-attr]
    finally:
        again.close()
