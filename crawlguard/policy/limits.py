"""Per-tenant platform limits: destination globs and fairness caps (SPEC `tenant-limit`).

Pure: no mitmproxy and no I/O; time comes from an injectable clock, so every rule is
unit-tested exactly.

- `allow_hosts` / `deny_hosts`: fnmatch-style globs over the canonical host
  (crawlguard.policy.identity.canonical_host: lower case, IDNA A-labels, no trailing dot, IPv6
  without brackets). `*` matches any run of characters, dots included, `?` one character;
  there are no `[...]` classes. `*.example.com` matches every subdomain at any depth but not
  `example.com` itself: list the apex separately. A host matching any `deny_hosts` glob is
  refused; with a non-empty `allow_hosts`, a host matching none of its globs is refused.
  Deny wins over allow. Both give `destination-forbidden` (403), refused in every mode.
- `max_concurrency`: requests of the tenant in flight through the proxy at once, from the
  decision until the origin's response is complete, the flow errors, or the client leaves.
  A refused request never holds a slot.
- `max_rps`: a token bucket refilled at `max_rps` tokens per second, holding at most
  `max(1, max_rps)` (the burst). Every request that passes the limit check takes a token.

Both caps give `tenant-limit` (429, `Retry-After` in whole seconds, at least 1).
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crawlguard.policy.decisions import Decision, Kind

if TYPE_CHECKING:
    from crawlguard.config import Tenant

MAX_GLOB = 253
FLOW_KEY = "crawlguard_limit_slot"  # flow.metadata: the Lease a forwarded request holds
_GLOB_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-*?:")


# -- destination globs -----------------------------------------------------------------------


def normalise_glob(glob: str) -> str:
    """The canonical spelling of one host glob; ValueError (for the config) if it is not one."""
    from crawlguard.policy.identity import IdentityError, canonical_host

    if not isinstance(glob, str) or not glob:
        raise ValueError("a host glob must be a non-empty string")
    if any(c.isspace() for c in glob):
        raise ValueError(f"host glob {glob[:100]!r} contains whitespace")
    if len(glob) > MAX_GLOB:
        raise ValueError(f"host glob {glob[:40]!r}... is longer than {MAX_GLOB} characters")
    if "[" in glob or "]" in glob:
        raise ValueError(
            f"host glob {glob!r}: no [...] classes or bracketed IPv6; write IPv6 bare (::1)"
        )
    if "*" not in glob and "?" not in glob:  # a plain host: exactly as the proxy spells it
        try:
            return canonical_host(glob)
        except IdentityError as exc:
            raise ValueError(f"host glob {glob!r}: {exc}") from None
    name = glob.lower().removesuffix(".")
    labels = []
    for label in name.split("."):
        if not label.isascii():
            if "*" in label or "?" in label:
                raise ValueError(f"host glob {glob!r}: a wildcard label must be ASCII")
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError(f"host glob {glob!r}: {label!r} is not a host label") from None
        labels.append(label)
    out = ".".join(labels)
    if "" in labels or not set(out) <= _GLOB_CHARS:
        raise ValueError(
            f"host glob {glob!r}: use host characters [a-z0-9_.-:], '*' and '?' only, "
            "with no empty label"
        )
    return out


def host_matches(host: str, globs: Iterable[str]) -> str | None:
    """The first glob (already normalised) that matches the canonical `host`, if any."""
    for glob in globs:
        if fnmatch.fnmatchcase(host, glob):
            return glob
    return None


def host_decision(cfg: Tenant, host: str) -> Decision | None:
    """`destination-forbidden` when the tenant's host globs refuse `host`; None otherwise."""
    denied = host_matches(host, cfg.deny_hosts)
    if denied is not None:
        return Decision(
            Kind.DESTINATION_FORBIDDEN,
            rule=f"tenants[{cfg.id}].deny_hosts: {denied}",
            reason=f"{host} is denied to tenant {cfg.id}.",
        )
    if cfg.allow_hosts and host_matches(host, cfg.allow_hosts) is None:
        return Decision(
            Kind.DESTINATION_FORBIDDEN,
            rule=f"tenants[{cfg.id}].allow_hosts: {', '.join(cfg.allow_hosts)}",
            reason=f"{host} is not among the hosts tenant {cfg.id} may crawl.",
        )
    return None


# -- fairness caps ---------------------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, at most `burst` = max(1, rate); starts full."""

    rate: float
    tokens: float
    last: float

    @classmethod
    def full(cls, rate: float, now: float) -> TokenBucket:
        return cls(rate, max(1.0, rate), now)

    @property
    def burst(self) -> float:
        return max(1.0, self.rate)

    def retune(self, rate: float) -> None:
        """A reloaded `max_rps`: keep what is saved, within the new burst."""
        self.rate = rate
        self.tokens = min(self.tokens, self.burst)

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until one will be (none taken)."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(slots=True)
class Lease:
    """One in-flight request's share of its tenant's concurrency; release is idempotent."""

    limits: TenantLimits
    tenant_id: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limits.release_one(self.tenant_id)


@dataclass(slots=True)
class Admission:
    decision: Decision  # `allowed` or `tenant-limit`
    lease: Lease | None  # held while the request is in flight; None when refused


@dataclass
class TenantLimits:
    """In-flight counts and token buckets per tenant id, kept across config reloads (the
    limits themselves are read from the tenant's config on every request)."""

    clock: Callable[[], float] = time.monotonic
    _inflight: dict[str, int] = field(default_factory=dict)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def in_flight(self, tenant_id: str) -> int:
        return self._inflight.get(tenant_id, 0)

    # -- the flow-facing API: a request's slot lives in its flow metadata (a dict) -------------

    def destination(self, cfg: Tenant, host: str) -> Decision | None:
        """The tenant's `allow_hosts` / `deny_hosts` verdict on a canonical host."""
        return host_decision(cfg, host)

    def check(self, cfg: Tenant, metadata: dict) -> Decision:
        """`allowed` (and a slot kept in `metadata`) or `tenant-limit` (no slot)."""
        admission = self.take(cfg)
        if admission.lease is not None:
            self.release(metadata)  # one slot per flow, whatever happens
            metadata[FLOW_KEY] = admission.lease
        return admission.decision

    def hold_for(self, tenant_id: str, metadata: dict) -> None:
        """Count a flow as in flight without checking (monitor mode forwards over the limit)."""
        self.release(metadata)
        metadata[FLOW_KEY] = self.hold(tenant_id)

    @staticmethod
    def release(metadata: dict) -> None:
        """Give the flow's slot back, if it holds one; safe to call on every path."""
        slot = metadata.pop(FLOW_KEY, None)
        if slot is not None:
            slot.release()

    # -- the pure API --------------------------------------------------------------------------

    def take(self, cfg: Tenant) -> Admission:
        """Concurrency first (a refused request takes no token), then the rate."""
        tid = cfg.id
        if cfg.max_concurrency is not None and self.in_flight(tid) >= cfg.max_concurrency:
            return Admission(
                Decision(
                    Kind.TENANT_LIMIT,
                    rule=f"tenants[{tid}].max_concurrency: {cfg.max_concurrency}",
                    reason=f"tenant {tid} already has {self.in_flight(tid)} request(s) in "
                    "flight through the proxy; wait for one to finish.",
                    retry_after=1,
                ),
                None,
            )
        if cfg.max_rps is None:
            self._buckets.pop(tid, None)
        else:
            now = self.clock()
            bucket = self._buckets.get(tid)
            if bucket is None:
                bucket = self._buckets[tid] = TokenBucket.full(cfg.max_rps, now)
            elif bucket.rate != cfg.max_rps:
                bucket.retune(cfg.max_rps)
            wait = bucket.take(now)
            if wait > 0:
                return Admission(
                    Decision(
                        Kind.TENANT_LIMIT,
                        rule=f"tenants[{tid}].max_rps: {cfg.max_rps:g}",
                        reason=f"tenant {tid} may send at most {cfg.max_rps:g} request(s) per "
                        f"second through the proxy (bursts of {bucket.burst:g}).",
                        retry_after=max(1, math.ceil(wait)),
                    ),
                    None,
                )
        return Admission(Decision(Kind.ALLOWED), self.hold(tid))

    def hold(self, tenant_id: str) -> Lease:
        """Count a request as in flight without checking (a monitor-mode request forwarded
        over its limit is still in flight)."""
        self._inflight[tenant_id] = self._inflight.get(tenant_id, 0) + 1
        return Lease(self, tenant_id)

    def release_one(self, tenant_id: str) -> None:
        n = self._inflight.get(tenant_id, 0) - 1
        if n > 0:
            self._inflight[tenant_id] = n
        else:
            self._inflight.pop(tenant_id, None)


__all__ = [
    "FLOW_KEY",
    "Admission",
    "Lease",
    "TenantLimits",
    "TokenBucket",
    "host_decision",
    "host_matches",
    "normalise_glob",
]
