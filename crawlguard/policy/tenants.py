"""A tenant as the request path sees it: its config and its user-agent check, built once per
tenant set (crawlguard.runtime) and looked up per request by id or credentials.

`build_tenant_set` is pure (no event loop, no I/O), so a Runtime runs it in a thread: at
100,000 tenants a rebuild must not hold the loop. It reuses what did not change: the shared
product-token index when no token changed anywhere, and with it every `TenantRuntime` whose
config is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crawlguard.config import Tenant
from crawlguard.policy.auth import Authenticator
from crawlguard.policy.ua import TokenIndex, UserAgentPolicy, ascii_lower


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


Retired = Mapping[str, Sequence[tuple[bytes, float]]]


@dataclass(frozen=True, slots=True)
class TenantSet:
    """One consistent tenant set: swapped in whole, so a request sees one set."""

    tenants: dict[str, TenantRuntime]
    auth: Authenticator[TenantRuntime]
    index: TokenIndex

    @classmethod
    def empty(cls) -> TenantSet:
        return cls({}, Authenticator({}), TokenIndex())


def _token_map(tenants: Sequence[Tenant]) -> dict[str, tuple[str, str]]:
    """What `TokenIndex.tokens` would be for `tenants` (cheap: no look-alike keys)."""
    tokens: dict[str, tuple[str, str]] = {}
    for tenant in tenants:
        for token in tenant.product_tokens:
            tokens.setdefault(ascii_lower(token), (token, tenant.id))
    return tokens


def build_tenant_set(
    tenants: Sequence[Tenant], retired: Retired | None = None, previous: TenantSet | None = None
) -> TenantSet:
    """The runtime objects of `tenants`. With `previous`: its index is reused when the
    registered tokens are the same, and then so is each TenantRuntime whose config is equal."""
    index: TokenIndex | None = None
    if previous is not None and _token_map(tenants) == previous.index.tokens:
        index = previous.index
    if index is None:
        index = TokenIndex.of_tenants(tenants)
    old = previous.tenants if previous is not None and previous.index is index else {}
    runtimes: dict[str, TenantRuntime] = {}
    creds: dict[str, tuple[bytes, TenantRuntime]] = {}
    for tenant in tenants:
        runtime = old.get(tenant.id)
        if runtime is None or runtime.cfg != tenant:
            runtime = TenantRuntime(tenant, UserAgentPolicy(tenant.product_tokens, index=index))
        runtimes[tenant.id] = runtime
        creds[tenant.id] = (tenant.token_digest(), runtime)
    return TenantSet(runtimes, Authenticator(creds, retired), index)
