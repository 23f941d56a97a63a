"""`TenantRegistry`: tenants kept in the store's database, changed by the admin API and the
CLI, read by every proxy process's sync (crawlguard.tenancy.sync).

Tables (their own, `tenancy_` prefix, beside the violation store's): `tenancy_tenants` (the
fields, the current token's SHA-256, disabled, created/updated), `tenancy_retired` (a rotated
token's digest until its grace ends), `tenancy_tokens` (ASCII-folded product token -> tenant:
its primary key makes the database refuse a token two tenants claim, even from two processes
at once) and `tenancy_audit` (who changed what when; never a token or a hash). Every change
writes its audit row in its own transaction, so the newest audit id is the registry's version.

A disabled tenant stays (its records, its audit trail, its product tokens: another tenant
cannot take over a crawler's identity by registering its token after it was disabled).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from crawlguard.config import Tenant
from crawlguard.policy.records import utc_now_iso
from crawlguard.tenancy.db import Database, Duplicate, Row, Tx
from crawlguard.tenancy.records import TENANT_FIELDS, AuditEntry, TenancyError, TenantRecord
from crawlguard.tenancy.validate import (
    CREATE_FIELDS,
    IMPORT_FIELDS,
    build_tenant,
    check_fields,
    check_id,
    conflict,
    folded,
    token_hex,
)

# The columns of the tenant fields, in TENANT_FIELDS order (a new field: one place to add it).
_JSON_FIELDS = frozenset({"product_tokens", "allow_hosts", "deny_hosts"})
_SET_FIELDS = ", ".join(f"{name} = ?" for name in TENANT_FIELDS)


def _columns(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """A tenant's field values as stored: the lists as JSON text."""
    return tuple(
        json.dumps(values[name]) if name in _JSON_FIELDS else values[name] for name in TENANT_FIELDS
    )


T = TypeVar("T")

_COLUMNS = (
    "id, product_tokens, mode, pacing, max_concurrency, max_rps, allow_hosts, deny_hosts, "
    "disabled, created_at, updated_at, weight"
)
AUDIT_LIMIT_MAX = 10_000
SUBSET_CHUNK = 500  # ids per IN (...) list
_TEMPLATE = Tenant.model_construct(
    id="-", token_sha256="0" * 64, token_env=None, product_tokens=[], mode="enforce",
    pacing="reject", max_concurrency=None, max_rps=None, allow_hosts=[], deny_hosts=[],
    weight=1.0,
)  # fmt: skip
"""Copied per stored tenant (`model_copy` is about twice as fast as `model_construct`)."""


def _record(row: Row) -> TenantRecord:
    return TenantRecord(
        id=row[0],
        product_tokens=tuple(json.loads(row[1])),
        mode=row[2],
        pacing=row[3],
        max_concurrency=row[4],
        max_rps=row[5],
        allow_hosts=tuple(json.loads(row[6])),
        deny_hosts=tuple(json.loads(row[7])),
        weight=float(row[11]),
        disabled=bool(row[8]),
        created_at=row[9],
        updated_at=row[10],
    )


def _values(tenant: Tenant) -> dict[str, Any]:
    """The editable fields of a validated tenant, JSON-shaped."""
    return {name: getattr(tenant, name) for name in TENANT_FIELDS}


def _new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode("utf-8")).hexdigest()


class TenantRegistry:
    """One per process; blocking calls (the admin API and the sync run them in a thread)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads -------------------------------------------------------------------------------

    def list(self) -> list[TenantRecord]:
        with self.db.read() as tx:
            return [
                _record(r) for r in tx.rows(f"SELECT {_COLUMNS} FROM tenancy_tenants ORDER BY id")
            ]

    def get(self, tenant_id: str) -> TenantRecord | None:
        with self.db.read() as tx:
            return self._get(tx, tenant_id)

    def audit(self, *, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        if not isinstance(limit, int) or not 1 <= limit <= AUDIT_LIMIT_MAX:
            raise TenancyError(400, "limit", f"limit: a whole number from 1 to {AUDIT_LIMIT_MAX}")
        sql = "SELECT id, ts, actor, tenant, action, changes FROM tenancy_audit"
        params: list[Any] = []
        if tenant is not None:
            sql += " WHERE tenant = ?"
            params.append(tenant)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self.db.read() as tx:
            rows = tx.rows(sql, params)
        return [AuditEntry(int(r[0]), r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def version(self) -> int:
        """The newest audit id: bumps on every change (one indexed lookup)."""
        with self.db.read() as tx:
            row = tx.one("SELECT max(id) FROM tenancy_audit")
        return int(row[0]) if row and row[0] is not None else 0

    def running_set(self) -> tuple[list[Tenant], dict[str, list[tuple[bytes, float]]]]:
        """Enabled tenants as `config.Tenant` (token_sha256 = the current token's), and per
        tenant the retired digests still in their grace (wall-clock expiry), one snapshot.
        Rows were validated when written, so they are not validated again (100,000 tenants)."""
        with self.db.read() as tx:
            return self._running(tx, None)

    def changed_since(self, version: int) -> tuple[int, set[str]]:
        """The version now and the ids of the tenants changed after `version`, one snapshot:
        what a sync that runs `version` must load again (`running_subset`)."""
        with self.db.read() as tx:
            row = tx.one("SELECT max(id) FROM tenancy_audit")
            now = int(row[0]) if row and row[0] is not None else 0
            if now == version:
                return now, set()
            rows = tx.rows("SELECT DISTINCT tenant FROM tenancy_audit WHERE id > ?", (version,))
        return now, {r[0] for r in rows}

    def running_subset(
        self, ids: Iterable[str]
    ) -> tuple[list[Tenant], dict[str, list[tuple[bytes, float]]]]:
        """`running_set` of the tenants `ids` names only (those disabled or gone: absent)."""
        with self.db.read() as tx:
            return self._running(tx, sorted(ids))

    def _running(
        self, tx: Tx, ids: list[str] | None
    ) -> tuple[list[Tenant], dict[str, list[tuple[bytes, float]]]]:
        now = time.time()
        tenant_sql = (
            "SELECT id, product_tokens, mode, pacing, max_concurrency, max_rps, allow_hosts, "
            "deny_hosts, token_sha256, weight FROM tenancy_tenants WHERE disabled = 0"
        )
        retired_sql = (
            "SELECT r.tenant, r.digest, r.expires FROM tenancy_retired AS r "
            "JOIN tenancy_tenants AS t ON t.id = r.tenant WHERE t.disabled = 0 AND r.expires > ?"
        )
        if ids is None:
            rows = tx.rows(tenant_sql + " ORDER BY id")
            retired_rows = tx.rows(retired_sql + " ORDER BY r.tenant, r.expires", (now,))
        else:
            rows, retired_rows = [], []
            for start in range(0, len(ids), SUBSET_CHUNK):
                chunk = ids[start : start + SUBSET_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                rows += tx.rows(f"{tenant_sql} AND id IN ({marks}) ORDER BY id", chunk)
                retired_rows += tx.rows(
                    f"{retired_sql} AND r.tenant IN ({marks}) ORDER BY r.tenant, r.expires",
                    (now, *chunk),
                )
        template = _TEMPLATE
        tenants = [
            template.model_copy(
                update={
                    "id": r[0],
                    "token_sha256": r[8],
                    "product_tokens": json.loads(r[1]),
                    "mode": r[2],
                    "pacing": r[3],
                    "max_concurrency": r[4],
                    "max_rps": r[5],
                    "allow_hosts": [] if r[6] == "[]" else json.loads(r[6]),
                    "deny_hosts": [] if r[7] == "[]" else json.loads(r[7]),
                    "weight": float(r[9]),
                }
            )
            for r in rows
        ]
        retired: dict[str, list[tuple[bytes, float]]] = {}
        for tenant_id, digest, expires in retired_rows:
            retired.setdefault(tenant_id, []).append((bytes.fromhex(digest), float(expires)))
        return tenants, retired

    # -- changes -----------------------------------------------------------------------------

    def create(self, fields: Mapping[str, Any], *, actor: str) -> tuple[TenantRecord, str]:
        """A new tenant and its token, returned this once (only its SHA-256 is stored)."""
        fields = check_fields(fields, CREATE_FIELDS)
        check_id(fields.get("id"))
        token, digest = _new_token()
        tenant = build_tenant({**fields, "token_sha256": digest})

        def run(tx: Tx) -> TenantRecord:
            return self._insert(tx, tenant, digest, actor=actor, action="create")

        return self._write(run), token

    def update(self, tenant_id: str, fields: Mapping[str, Any], *, actor: str) -> TenantRecord:
        fields = check_fields(fields, CREATE_FIELDS)
        if "id" in fields and fields["id"] != tenant_id:
            raise TenancyError(400, "id", "id: a tenant's id cannot be changed")
        check_id(tenant_id)

        def run(tx: Tx) -> TenantRecord:
            old = self._existing(tx, tenant_id)
            digest = self._digest(tx, tenant_id)
            merged = {**old.fields(), **fields, "id": tenant_id, "token_sha256": digest}
            new = _values(build_tenant(merged))
            before = old.fields()
            changes = {k: [before[k], new[k]] for k in TENANT_FIELDS if before[k] != new[k]}
            if not changes:
                return old
            if "product_tokens" in changes:
                keep = folded(new["product_tokens"])
                self._claim(tx, tenant_id, new["product_tokens"])
                for (token,) in tx.rows(
                    "SELECT token FROM tenancy_tokens WHERE tenant = ?", (tenant_id,)
                ):
                    if token not in keep:
                        tx.rows("DELETE FROM tenancy_tokens WHERE token = ?", (token,))
            now = utc_now_iso()
            tx.rows(
                f"UPDATE tenancy_tenants SET {_SET_FIELDS}, updated_at = ? WHERE id = ?",
                (*_columns(new), now, tenant_id),
            )
            self._audit(tx, actor, tenant_id, "update", changes, now)
            return self._existing(tx, tenant_id)

        return self._write(run)

    def rotate(self, tenant_id: str, *, actor: str, grace: float) -> str:
        """A new token for `tenant_id`; the old one keeps working `grace` seconds (0: none)."""
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
            raise TenancyError(400, "grace", "grace: seconds, 0 or more")
        check_id(tenant_id)
        token, digest = _new_token()

        def run(tx: Tx) -> None:
            old = self._existing(tx, tenant_id)
            if old.disabled:
                raise TenancyError(409, None, f"tenant {tenant_id!r} is disabled")
            now = time.time()
            tx.rows("DELETE FROM tenancy_retired WHERE expires <= ?", (now,))
            if grace > 0:
                tx.rows(
                    "INSERT INTO tenancy_retired (tenant, digest, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (tenant, digest) DO UPDATE SET expires = excluded.expires",
                    (tenant_id, self._digest(tx, tenant_id), now + float(grace)),
                )
            stamp = utc_now_iso()
            tx.rows(
                "UPDATE tenancy_tenants SET token_sha256 = ?, updated_at = ? WHERE id = ?",
                (digest, stamp, tenant_id),
            )
            note = f"(previous: valid {float(grace):g} s more)" if grace > 0 else "(previous)"
            self._audit(tx, actor, tenant_id, "rotate", {"token": [note, "(new)"]}, stamp)

        self._write(run)
        return token

    def disable(self, tenant_id: str, *, actor: str) -> TenantRecord:
        """Out of every running set (407); the row, its tokens and its history stay. Disabling a
        disabled tenant changes nothing."""
        check_id(tenant_id)

        def run(tx: Tx) -> TenantRecord:
            old = self._existing(tx, tenant_id)
            if old.disabled:
                return old
            stamp = utc_now_iso()
            tx.rows(
                "UPDATE tenancy_tenants SET disabled = 1, updated_at = ? WHERE id = ?",
                (stamp, tenant_id),
            )
            tx.rows("DELETE FROM tenancy_retired WHERE tenant = ?", (tenant_id,))
            self._audit(tx, actor, tenant_id, "disable", {"disabled": [False, True]}, stamp)
            return self._existing(tx, tenant_id)

        return self._write(run)

    def import_file(self, items: Sequence[Mapping[str, Any]], *, actor: str) -> list[str]:
        """Config-file tenant entries (`token_sha256` kept as is, `token_env` read and hashed
        now), all or none; an id already in the registry is skipped. Returns the ids added."""
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise TenancyError(400, None, "expected a list of tenants")
        tenants: list[tuple[Tenant, str]] = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            label = item.get("id") if isinstance(item, Mapping) else None
            where = f"tenants[{label if isinstance(label, str) else index}]."
            item = check_fields(item, IMPORT_FIELDS, where=where)
            tenant = build_tenant(item, where=where)
            if tenant.id in seen:
                raise TenancyError(400, "id", f"{where}id: listed twice")
            seen.add(tenant.id)
            tenants.append((tenant, token_hex(tenant, where=where)))

        def run(tx: Tx) -> list[str]:
            added: list[str] = []
            for tenant, digest in tenants:
                if tx.one("SELECT 1 FROM tenancy_tenants WHERE id = ?", (tenant.id,)):
                    continue
                self._insert(tx, tenant, digest, actor=actor, action="import")
                added.append(tenant.id)
            return added

        return self._write(run)

    def close(self) -> None:
        self.db.close()

    # -- inside a transaction ----------------------------------------------------------------

    def _write(self, run: Callable[[Tx], T]) -> T:
        """`run` in one write transaction; a unique key another writer won meanwhile makes it
        run once more, so its checks see the winner and say why."""
        for attempt in (1, 2):
            try:
                with self.db.write() as tx:
                    return run(tx)
            except Duplicate:
                if attempt == 2:
                    raise TenancyError(409, None, "a concurrent change conflicted; retry") from None
        raise AssertionError("unreachable")

    def _get(self, tx: Tx, tenant_id: str) -> TenantRecord | None:
        row = tx.one(f"SELECT {_COLUMNS} FROM tenancy_tenants WHERE id = ?", (tenant_id,))
        return _record(row) if row else None

    def _existing(self, tx: Tx, tenant_id: str) -> TenantRecord:
        record = self._get(tx, tenant_id)
        if record is None:
            raise TenancyError(404, None, f"no tenant {tenant_id!r}")
        return record

    def _digest(self, tx: Tx, tenant_id: str) -> str:
        row = tx.one("SELECT token_sha256 FROM tenancy_tenants WHERE id = ?", (tenant_id,))
        assert row is not None
        return str(row[0])

    def _claim(self, tx: Tx, tenant_id: str, tokens: Sequence[str]) -> None:
        """Register `tokens` for `tenant_id`; a 400 naming both tenants for one another holds
        (a disabled one included)."""
        for token in tokens:
            key = folded([token])[0]
            row = tx.one(
                "SELECT k.tenant, t.disabled FROM tenancy_tokens AS k "
                "LEFT JOIN tenancy_tenants AS t ON t.id = k.tenant WHERE k.token = ?",
                (key,),
            )
            if row is None:
                tx.rows(
                    "INSERT INTO tenancy_tokens (token, tenant) VALUES (?, ?)", (key, tenant_id)
                )
            elif row[0] != tenant_id:
                err = conflict(token, row[0], tenant_id)
                if row[1]:
                    err.message += f" ({row[0]!r} is disabled; it keeps its product tokens)"
                    err.args = (err.message,)
                raise err

    def _insert(
        self, tx: Tx, tenant: Tenant, digest: str, *, actor: str, action: str
    ) -> TenantRecord:
        if tx.one("SELECT 1 FROM tenancy_tenants WHERE id = ?", (tenant.id,)):
            raise TenancyError(409, "id", f"id: tenant {tenant.id!r} exists")
        self._claim(tx, tenant.id, tenant.product_tokens)
        values = _values(tenant)
        stamp = utc_now_iso()
        marks = ", ".join("?" for _ in TENANT_FIELDS)
        tx.rows(
            f"INSERT INTO tenancy_tenants (id, {', '.join(TENANT_FIELDS)}, token_sha256, "
            f"disabled, created_at, updated_at) VALUES (?, {marks}, ?, 0, ?, ?)",
            (tenant.id, *_columns(values), digest, stamp, stamp),
        )
        changes = {k: [None, v] for k, v in values.items()}
        self._audit(tx, actor, tenant.id, action, changes, stamp)
        return self._existing(tx, tenant.id)

    def _audit(
        self, tx: Tx, actor: str, tenant_id: str, action: str, changes: dict[str, Any], ts: str
    ) -> None:
        tx.rows(
            "INSERT INTO tenancy_audit (ts, actor, tenant, action, changes) VALUES (?, ?, ?, ?, ?)",
            (ts, actor, tenant_id, action, json.dumps(changes, sort_keys=True)),
        )
