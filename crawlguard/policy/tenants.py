"""A tenant as the request path sees it: its config and its user-agent check, built once per
tenant set (crawlguard.runtime) and looked up per request by id or credentials.

`build_tenant_set` is pure (no event loop, no I/O), so a Runtime runs it in a thread: at
100,000 tenants a rebuild must not hold the loop. It reuses what did not change: the shared
product-token index when no token changed anywhere (else it updates it for the tokens that
changed), and every `TenantRuntime` whose config is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crawlguard.config import Tenant
from crawlguard.policy.auth import Authenticator
from crawlguard.policy.ua import SharedIndex, TokenIndex, UserAgentPolicy, token_map


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
    """One consistent tenant set: swapped in whole (`activate`, then one assignment), so a
    request sees one set. `shared` is the same holder for every set of a Runtime: the checks
    read the index through it."""

    tenants: dict[str, TenantRuntime]
    auth: Authenticator[TenantRuntime]
    index: TokenIndex
    shared: SharedIndex

    @classmethod
    def empty(cls) -> TenantSet:
        index = TokenIndex()
        return cls({}, Authenticator({}), index, SharedIndex(index))

    def configs(self) -> list[Tenant]:
        """The tenants' configs in order, the running objects for unchanged ones (a reloaded
        Config then holds no second copy of 100,000 equal tenants)."""
        return [runtime.cfg for runtime in self.tenants.values()]

    def activate(self) -> None:
        """Point every check at this set's index (on the loop, with the swap)."""
        self.shared.index = self.index


def build_tenant_set(
    tenants: Sequence[Tenant], retired: Retired | None = None, previous: TenantSet | None = None
) -> TenantSet:
    """The runtime objects of `tenants`, in time proportional to what changed since
    `previous` (besides one pass comparing): its index is kept when no product token changed
    anywhere, else updated for the tokens that did; each TenantRuntime whose config is equal
    is kept (its check reads the new index through the shared holder)."""
    tokens = token_map(tenants)
    old_auth: Authenticator[TenantRuntime] = Authenticator({})
    if previous is None:
        index = TokenIndex().updated(tokens)  # as TokenIndex.of_tenants(tenants), one pass less
        shared, old = SharedIndex(index), {}
    else:
        shared, old, old_auth = previous.shared, previous.tenants, previous.auth
        index = previous.index
        if tokens != index.tokens:
            index = index.updated(tokens)
    runtimes: dict[str, TenantRuntime] = {}
    creds: dict[str, tuple[bytes, TenantRuntime]] = {}
    for tenant in tenants:
        runtime = old.get(tenant.id)
        entry = None
        if runtime is None or runtime.cfg != tenant:
            runtime = TenantRuntime(tenant, UserAgentPolicy(tenant.product_tokens, index=shared))
        elif tenant.token_sha256:  # same config, same digest: the old objects serve on
            entry = old_auth.entry(tenant.id)
        runtimes[tenant.id] = runtime
        creds[tenant.id] = entry or (tenant.token_digest(), runtime)
    return TenantSet(runtimes, Authenticator(creds, retired), index, shared)
