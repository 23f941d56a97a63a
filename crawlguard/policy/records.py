"""The violation record (SPEC: "Violations"), shared by the addon, the stores and the CLI.

Fields a client or an origin controls are bounded (`ViolationRecord.bounded`), so one request
with a 1 MB URL or User-Agent cannot put a megabyte into the store and the log. A cut value
keeps its head and ends, within the limit, with a marker naming the original length:
``http://example.test/aaaa…[cut, 1048576 chars]``.

A record may stand for many identical refusals (`count`, `first_ts`, `last_ts`): beyond
`store.fold_after` a key's refusals are folded into one record per interval
(crawlguard.store.fold), so a client refused in a loop cannot fill the disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

FIELDS: tuple[str, ...] = (
    "ts",
    "tenant",
    "kind",
    "action",
    "method",
    "url",
    "user_agent",
    "rule",
    "crawl_delay",
    "retry_after",
    "robots_sha256",
    "delay_seconds",
    "reason",
    "count",
    "first_ts",
    "last_ts",
)


# Longest value kept per field, in characters (marker included). `method` is a token, but the
# client spells it; the others are named in docs/operators/violations.md's record fields.
FIELD_LIMITS: dict[str, int] = {
    "method": 64,
    "url": 2048,
    "user_agent": 512,
    "rule": 1000,
    "reason": 1000,
}


def cut_marker(length: int) -> str:
    return f"…[cut, {length} chars]"


def cut(text: str | None, limit: int) -> str | None:
    """`text` if it fits in `limit` characters, else its head plus the cut marker, `limit` long."""
    if text is None or len(text) <= limit:
        return text
    marker = cut_marker(len(text))
    return (text[: max(limit - len(marker), 0)] + marker)[:limit]


def utc_now_iso() -> str:
    """UTC ISO 8601 with microseconds and a trailing Z, so string order is time order."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log_line(rec: ViolationRecord) -> str:
    """The record as the `crawlguard.violations` log's JSON line."""
    return json.dumps(rec.to_dict(), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class ViolationRecord:
    ts: str
    tenant: str
    kind: str
    action: str
    method: str
    url: str
    user_agent: str | None = None
    rule: str | None = None
    crawl_delay: float | None = None
    retry_after: int | None = None
    robots_sha256: str | None = None
    delay_seconds: float | None = None  # how long an `action: delayed` request was held
    reason: str | None = None
    # A folded record (crawlguard.store.fold) stands for `count` identical refusals seen from
    # `first_ts` to `last_ts`; `url` and `user_agent` are those of one of them. A single
    # refusal has count 1 and no first_ts/last_ts (its `ts` is both).
    count: int = 1
    first_ts: str | None = None
    last_ts: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def bounded(self) -> ViolationRecord:
        """This record with every client- or origin-controlled text cut to `FIELD_LIMITS`
        (itself when nothing is over). Idempotent: a cut value is within its limit."""
        changes = {}
        for name, limit in FIELD_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, str) and len(value) > limit:
                changes[name] = cut(value, limit)
        return replace(self, **changes) if changes else self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViolationRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


assert tuple(f.name for f in fields(ViolationRecord)) == FIELDS
