"""A tenant as the request path sees it: its config and its user-agent check, built once per
config (crawlguard.runtime) and looked up per request by id or credentials."""

from __future__ import annotations

from dataclasses import dataclass

from crawlguard.config import Tenant
from crawlguard.policy.ua import UserAgentPolicy


@dataclass(slots=True)
class TenantRuntime:
    cfg: Tenant
    ua: UserAgentPolicy

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def enforce(self) -> bool:
        return self.cfg.mode == "enforce"
