"""From a decision to what the proxy does with the request: pure, so every mode and kind is
unit-tested without mitmproxy. The addon carries the plan out (record, refuse, hold, forward).
"""

from __future__ import annotations

from dataclasses import dataclass

from crawlguard.policy.decisions import Action, Decision, Kind

# Refused in every mode, `off` included: the proxy must never be an open proxy, and a request
# it cannot read canonically cannot be forwarded as decided.
ALWAYS_REFUSED = frozenset({Kind.DESTINATION_FORBIDDEN, Kind.REQUEST_INVALID})
# Refused (or held), but not the tenant's violation: the proxy's shared capacity, or the
# platform's shared budget for a site, was taken by others. Counted, never recorded.
NOT_VIOLATIONS = frozenset({Kind.PROXY_BUSY, Kind.SITE_BUDGET})


@dataclass(frozen=True, slots=True)
class Plan:
    decision: Decision
    record: Action | None  # write a violation record with this action first
    refuse: bool  # answer with the decision's refusal instead of forwarding
    hold: bool = False  # wait for the pacing slot, then forward


def plan(mode: str, decision: Decision, *, held: bool = False) -> Plan:
    """`mode` is the tenant's (enforce, monitor, off); `held` when delay pacing holds it."""
    if held:
        record = None if decision.kind in NOT_VIOLATIONS else Action.DELAYED
        return Plan(decision, record, refuse=False, hold=True)
    if decision.allowed:
        return Plan(decision, None, refuse=False)
    if decision.kind in NOT_VIOLATIONS:
        return Plan(decision, None, refuse=True)
    if decision.kind in ALWAYS_REFUSED:
        return Plan(decision, None if mode == "off" else Action.BLOCKED, refuse=True)
    if mode == "off":
        return Plan(decision, None, refuse=False)
    if mode == "monitor":
        return Plan(decision, Action.LOGGED, refuse=False)
    return Plan(decision, Action.BLOCKED, refuse=True)
