"""Registry input checked with the config file's rules (crawlguard.tenancy.validate), the
records the registry hands out, and the `tenancy` config section: pure, no database."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from crawlguard.config import ConfigError, parse_config
from crawlguard.tenancy import TenancyError, TenantRecord
from crawlguard.tenancy.validate import (
    CREATE_FIELDS,
    build_tenant,
    check_fields,
    check_id,
    folded,
    token_hex,
)

HASH = "ab" * 32


def refused(call: Any, *args: Any, **kw: Any) -> TenancyError:
    with pytest.raises(TenancyError) as info:
        call(*args, **kw)
    return info.value


def test_unknown_fields_are_named() -> None:
    err = refused(check_fields, {"id": "a", "priority": 3}, CREATE_FIELDS)
    assert (err.status, err.field) == (400, "priority")
    assert "priority: unknown field" in err.message and "product_tokens" in err.message
    assert "weight" in err.message  # an accepted field, named in the list
    assert err.to_json() == {"error": err.message, "field": "priority"}
    assert refused(check_fields, ["id"], CREATE_FIELDS).field is None
    assert check_fields({"mode": "off"}, CREATE_FIELDS) == {"mode": "off"}


@pytest.mark.parametrize("value", ["", "-lead", "a b", "x" * 65, "é", 7, None])
def test_bad_ids_are_400_on_id(value: object) -> None:
    err = refused(check_id, value)
    assert (err.status, err.field) == (400, "id")


def test_ids_the_config_file_takes_are_taken() -> None:
    for value in ("acme", "A1", "a.b_c-d", "x" * 64):
        assert check_id(value) == value


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"product_tokens": "AcmeBot"}, "product_tokens", "valid list"),
        ({"product_tokens": [3]}, "product_tokens", "product_tokens[0]"),
        ({"product_tokens": ["Acme Bot"]}, "product_tokens", "RFC 9309"),
        ({"product_tokens": ["bingbot"]}, "product_tokens", "well-known crawler"),
        ({"product_tokens": ["AcmeBot"], "pacing": "hold"}, "pacing", "'reject' or 'delay'"),
        ({"product_tokens": ["AcmeBot"], "max_rps": 0}, "max_rps", "greater than 0"),
        ({"product_tokens": ["AcmeBot"], "allow_hosts": ["a/b"]}, "allow_hosts", "allow_hosts"),
    ],
)
def test_the_config_files_rules_name_the_field(
    fields: dict[str, Any], field: str, text: str
) -> None:
    err = refused(build_tenant, {"id": "acme", "token_sha256": HASH, **fields}, where="x: ")
    assert (err.status, err.field) == (400, field)
    assert err.message.startswith("x: ") and text in err.message


def test_a_valid_tenant_is_normalised_like_the_config_file() -> None:
    tenant = build_tenant(
        {"id": "acme", "token_sha256": HASH.upper(), "product_tokens": ["AcmeBot"],
         "deny_hosts": ["*.Example.ORG"]}
    )  # fmt: skip
    assert tenant.token_sha256 == HASH and tenant.deny_hosts == ["*.example.org"]


def test_token_env_is_read_when_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = build_tenant({"id": "a", "token_env": "CG_UNIT_TOKEN", "product_tokens": ["ABot"]})
    monkeypatch.delenv("CG_UNIT_TOKEN", raising=False)
    err = refused(token_hex, tenant, where="tenants[a].")
    assert err.field == "token_env" and "CG_UNIT_TOKEN" in err.message
    monkeypatch.setenv("CG_UNIT_TOKEN", "s3cret")
    assert token_hex(tenant) == hashlib.sha256(b"s3cret").hexdigest()


def test_product_tokens_fold_ascii_only() -> None:
    assert folded(["AcmeBot", "acmebot", "ACMEBOT", "Other"]) == ["acmebot", "other"]
    assert folded(["\u212abot"]) == ["\u212abot"]  # the Kelvin sign is not a K


def test_a_records_public_form_has_no_secret() -> None:
    record = TenantRecord(
        "acme", ("AcmeBot",), "enforce", "reject", None, 2.0, (), ("*.x.org",), 1.5, False,
        "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z",
    )  # fmt: skip
    public = record.public()
    assert public["product_tokens"] == ["AcmeBot"] and public["deny_hosts"] == ["*.x.org"]
    assert public["weight"] == 1.5
    assert not any("token_" in key or key == "token" for key in public)


def test_the_tenancy_section() -> None:
    cfg = parse_config({})
    assert (cfg.tenancy.source, cfg.tenancy.rotate_grace) == ("file", 3600)
    cfg = parse_config({"tenancy": {"source": "store", "rotate_grace": 0}})
    assert (cfg.tenancy.source, cfg.tenancy.rotate_grace) == ("store", 0)
    for bad, key in (
        ({"source": "redis"}, "tenancy.source"),
        ({"rotate_grace": -1}, "tenancy.rotate_grace"),
        ({"colour": 1}, "tenancy.colour"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({"tenancy": bad})
