"""Decision kinds and the responses the proxy makes itself (SPEC: "Decisions and responses").

Pure data: no mitmproxy, no I/O, so the policy core and the CLI share one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DECISION_HEADER = "X-Crawlguard-Decision"


class Kind(StrEnum):
    ALLOWED = "allowed"
    UA_MISSING = "ua-missing"
    UA_GENERIC = "ua-generic"
    UA_UNDESCRIPTIVE = "ua-undescriptive"
    UA_MISMATCH = "ua-mismatch"
    UA_IMPERSONATION = "ua-impersonation"
    UA_AMBIGUOUS = "ua-ambiguous"
    ROBOTS_DISALLOW = "robots-disallow"
    ROBOTS_UNREACHABLE = "robots-unreachable"
    CRAWL_DELAY = "crawl-delay"
    ORIGIN_BACKOFF = "origin-backoff"
    TENANT_LIMIT = "tenant-limit"
    STATE_UNAVAILABLE = "state-unavailable"
    DESTINATION_FORBIDDEN = "destination-forbidden"
    REQUEST_INVALID = "request-invalid"
    STORE_BACKLOGGED = "store-backlogged"
    PROXY_BUSY = "proxy-busy"
    SITE_BUDGET = "site-budget"


class Action(StrEnum):
    BLOCKED = "blocked"
    DELAYED = "delayed"
    LOGGED = "logged"


STATUS: dict[Kind, int] = {
    Kind.UA_MISSING: 403,
    Kind.UA_GENERIC: 403,
    Kind.UA_UNDESCRIPTIVE: 403,
    Kind.UA_MISMATCH: 403,
    Kind.UA_IMPERSONATION: 403,
    Kind.UA_AMBIGUOUS: 403,
    Kind.ROBOTS_DISALLOW: 403,
    Kind.ROBOTS_UNREACHABLE: 503,
    Kind.CRAWL_DELAY: 429,
    Kind.ORIGIN_BACKOFF: 429,
    Kind.TENANT_LIMIT: 429,
    Kind.STATE_UNAVAILABLE: 503,
    Kind.DESTINATION_FORBIDDEN: 403,
    Kind.REQUEST_INVALID: 400,
    Kind.STORE_BACKLOGGED: 503,
    Kind.PROXY_BUSY: 503,
    Kind.SITE_BUDGET: 429,
}

# How to comply, per kind: the second half of every body the proxy writes.
ADVICE: dict[Kind, str] = {
    Kind.UA_MISSING: "Send a User-Agent header that names your crawler, e.g. "
    "'AcmeBot/1.2 (+https://acme.example/bot)'.",
    Kind.UA_GENERIC: "Library, tool and browser default user agents are not allowed. Identify "
    "your crawler with your registered product token, a version and a contact URL or e-mail.",
    Kind.UA_UNDESCRIPTIVE: "The user agent must carry a product token with a version "
    "(Token/1.0) and a contact: an http(s) URL or an e-mail address.",
    Kind.UA_MISMATCH: "The user agent must carry one of the product tokens registered for "
    "your tenant.",
    Kind.UA_IMPERSONATION: "Do not claim to be a well-known crawler you are not. Use your own "
    "registered product token.",
    Kind.UA_AMBIGUOUS: "Send exactly one User-Agent header: with two, sites would see a "
    "different client than the one crawlguard checked.",
    Kind.ROBOTS_DISALLOW: "The site's robots.txt disallows this URL for your product token. "
    "Do not request it.",
    Kind.ROBOTS_UNREACHABLE: "The site's robots.txt could not be fetched; RFC 9309 treats "
    "that as a complete disallow. Retry after the indicated time.",
    Kind.CRAWL_DELAY: "Requests to this site come faster than its Crawl-delay / Request-rate "
    "allows. Wait Retry-After seconds between requests.",
    Kind.ORIGIN_BACKOFF: "The site recently answered 429/503; back off for Retry-After seconds.",
    Kind.TENANT_LIMIT: "Your tenant exceeds its concurrency or request-rate cap. Slow down.",
    Kind.STATE_UNAVAILABLE: "The proxy's shared state is unavailable; retry later.",
    Kind.DESTINATION_FORBIDDEN: "This destination (address or port) may not be crawled "
    "through the proxy.",
    Kind.STORE_BACKLOGGED: "The proxy answers no request it cannot record; retry shortly.",
    Kind.PROXY_BUSY: "The proxy's shared capacity is taken by other traffic right now; this is "
    "not a violation of yours. Retry after the indicated time.",
    Kind.SITE_BUDGET: "The platform's requests to this site share one polite pace, split fairly "
    "among its tenants; this is not a violation of yours. Retry after the indicated time, or use "
    "pacing: delay to be held for your turn.",
    Kind.REQUEST_INVALID: "Send one plain HTTP/1.1 request (or TLS carrying one) per request "
    "line, with a request target crawlguard can read in one canonical form.",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """One request's verdict. `rule` is the robots line or UA rule that decided it."""

    kind: Kind
    rule: str | None = None
    reason: str | None = None
    retry_after: int | None = None
    crawl_delay: float | None = None
    request_rate: tuple[int, float] | None = None
    robots_sha256: str | None = None
    delay_seconds: float | None = None  # how long a `delay`-paced request was held

    @property
    def allowed(self) -> bool:
        return self.kind is Kind.ALLOWED

    @property
    def status(self) -> int:
        return STATUS.get(self.kind, 200)

    def body(self) -> str:
        """Short plain-text body: what was broken and how to comply."""
        lines = [f"crawlguard: request refused ({self.kind.value})."]
        if self.reason:
            lines.append(self.reason)
        if self.rule:
            lines.append(f"Rule: {self.rule}")
        lines.append(ADVICE.get(self.kind, ""))
        if self.retry_after is not None:
            lines.append(f"Retry after {self.retry_after} s.")
        return "\n".join(line for line in lines if line) + "\n"


ALLOW = Decision(Kind.ALLOWED)
