"""What the tenant registry hands out: its error, a tenant's record and an audit entry.

Neither record ever carries a token or a token hash: both go to API responses, CLI output and
logs as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class TenancyError(Exception):
    """A refused registry call, phrased for the operator. `status` is the HTTP status the admin
    API answers with: 400 bad input, 404 no such tenant, 409 conflict (the id exists, the tenant
    is disabled), 503 the database cannot be reached now (worth retrying)."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


TENANT_FIELDS = (
    "product_tokens",
    "mode",
    "pacing",
    "max_concurrency",
    "max_rps",
    "allow_hosts",
    "deny_hosts",
    "weight",
)
"""The fields `update` accepts (`create` also takes `id`)."""


@dataclass(frozen=True)
class TenantRecord:
    id: str
    product_tokens: tuple[str, ...]
    mode: str
    pacing: str
    max_concurrency: int | None
    max_rps: float | None
    allow_hosts: tuple[str, ...]
    deny_hosts: tuple[str, ...]
    weight: float
    disabled: bool
    created_at: str
    updated_at: str

    def fields(self) -> dict[str, Any]:
        """The editable fields, JSON-shaped (lists, not tuples)."""
        out: dict[str, Any] = {}
        for name in TENANT_FIELDS:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **self.fields(),
            "disabled": self.disabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: str
    actor: str
    tenant: str
    action: str  # create | update | rotate | disable | import
    changes: dict[str, Any] = field(default_factory=dict)  # field -> [old, new]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "actor": self.actor,
            "tenant": self.tenant,
            "action": self.action,
            "changes": self.changes,
        }
