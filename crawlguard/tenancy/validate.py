"""Registry input checked with the config file's own rules (crawlguard.config.Tenant), so a
tenant the API or the CLI accepts is one a config file would accept, and the other way round."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from crawlguard.config import ConfigError, Tenant
from crawlguard.policy.ua import ascii_lower
from crawlguard.tenancy.records import TENANT_FIELDS, TenancyError

CREATE_FIELDS = ("id", *TENANT_FIELDS)
IMPORT_FIELDS = (*CREATE_FIELDS, "token_sha256", "token_env")
"""A config file's tenant entry: a token hash (or an environment variable) instead of a new
token."""


def check_fields(fields: Any, allowed: Iterable[str], *, where: str = "") -> Mapping[str, Any]:
    """`fields` as a mapping of accepted names; a 400 naming the first unknown one."""
    if not isinstance(fields, Mapping):
        raise TenancyError(400, None, f"{where}expected an object of tenant fields")
    allowed = tuple(allowed)
    for name in fields:
        if name not in allowed:
            raise TenancyError(
                400,
                str(name),
                f"{where}{name}: unknown field; accepted: {', '.join(allowed)}",
            )
    return fields


def check_id(value: Any) -> str:
    """A tenant id as the config file takes it (checked before any lookup: 400, not 404)."""
    if not isinstance(value, str):
        raise TenancyError(400, "id", "id: required, a string")
    try:
        Tenant.model_validate({"id": value, "product_tokens": ["x"], "token_env": "X"})
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"] and err["loc"][0] == "id":
                raise TenancyError(400, "id", f"id: {_msg(err)}") from None
    return value


def build_tenant(values: Mapping[str, Any], *, where: str = "") -> Tenant:
    """A validated `config.Tenant`; the first problem as a 400 naming its field."""
    try:
        return Tenant.model_validate(dict(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        name = str(loc[0]) if loc else None
        path = name + "".join(f"[{part}]" for part in loc[1:]) if name else "tenant"
        raise TenancyError(400, name, f"{where}{path}: {_msg(err)}") from None


def token_hex(tenant: Tenant, *, where: str = "") -> str:
    """The hex SHA-256 a config-file entry authenticates with (`token_env` read now)."""
    try:
        return tenant.token_digest().hex()
    except ConfigError as exc:
        raise TenancyError(400, "token_env", f"{where}{exc}") from None


def folded(tokens: Iterable[str]) -> list[str]:
    """Product tokens ASCII-folded and deduplicated, in order: the keys uniqueness is about."""
    return list(dict.fromkeys(ascii_lower(token) for token in tokens))


def conflict(token: str, owner: str, tenant_id: str) -> TenancyError:
    return TenancyError(
        400,
        "product_tokens",
        f"product_tokens: product token {token!r} is registered by both {owner!r} and "
        f"{tenant_id!r}",
    )


def _msg(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    return "unknown field" if err["type"] == "extra_forbidden" else msg
