"""robots.txt rules (RFC 9309) behind crawlguard's own interface; the only module importing Protego.

INTERFACE STUB — to be completed (issue 3 parser work). Signatures are the contract.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from protego import Protego

MAX_BYTES = 500 * 1024


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    allowed: bool
    rule: str | None  # the deciding line as written, e.g. "Disallow: /private"; None if none matched
    crawl_delay: float | None  # seconds, for the group that applies to the product token
    request_rate: tuple[int, float] | None  # (requests, seconds) for that group


class RobotsRules:
    """A parsed robots.txt. Never raises on any body; bodies over MAX_BYTES are truncated."""

    def __init__(self, body: bytes, sha256: str, parser: Protego) -> None:
        self.body = body
        self.sha256 = sha256
        self._parser = parser

    @classmethod
    def parse(cls, body: bytes) -> RobotsRules:
        body = body[:MAX_BYTES]
        text = body.decode("utf-8-sig", errors="replace")
        return cls(body, hashlib.sha256(body).hexdigest(), Protego.parse(text))

    def decide(self, product_token: str, url: str) -> RobotsVerdict:
        """Verdict for `url` (absolute URL or path+query) for the crawler's product token."""
        allowed = self._parser.can_fetch(url, product_token)
        delay = self._parser.crawl_delay(product_token)
        rate = self._parser.request_rate(product_token)
        return RobotsVerdict(
            allowed=allowed,
            rule=None,
            crawl_delay=float(delay) if delay is not None else None,
            request_rate=(rate.requests, float(rate.seconds)) if rate else None,
        )


ALLOW_ALL = RobotsRules.parse(b"")
