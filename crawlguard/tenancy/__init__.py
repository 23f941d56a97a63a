"""Tenants in the store's database (`tenancy.source: store`; docs/operators/tenancy.md).

* `crawlguard.tenancy.registry`: `TenantRegistry`, the tenants, their tokens' hashes and the
  audit log; changed by the admin API and `crawlguard tenants`;
* `crawlguard.tenancy.db`: its SQLite / PostgreSQL access (the store's file or database);
* `crawlguard.tenancy.validate`: input checked with the config file's own rules;
* `crawlguard.tenancy.sync`: keeps a running proxy's tenants current.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawlguard.tenancy.records import TENANT_FIELDS, AuditEntry, TenancyError, TenantRecord
from crawlguard.tenancy.registry import TenantRegistry

if TYPE_CHECKING:
    from crawlguard.config import Config, Tenant


def open_registry(cfg: Config) -> TenantRegistry:
    """The registry in the database `cfg.store.url` names (its tables made if missing)."""
    from crawlguard.tenancy.db import open_database

    return TenantRegistry(open_database(cfg.store.url))


def managed_tenants(cfg: Config) -> list[Tenant]:
    """The enabled tenants `cfg` runs with: the file's, or with `tenancy.source: store` the
    registry's (for the offline commands, `explain` and `report`, that take `--config`).
    Raises TenancyError when the registry cannot be read."""
    if cfg.tenancy.source != "store":
        return list(cfg.tenants)
    registry = open_registry(cfg)
    try:
        return registry.running_set()[0]
    finally:
        registry.close()


__all__ = [
    "TENANT_FIELDS",
    "AuditEntry",
    "TenancyError",
    "TenantRecord",
    "TenantRegistry",
    "managed_tenants",
    "open_registry",
]
