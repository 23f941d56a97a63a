"""The violation record (SPEC: "Violations"), shared by the addon, the stores and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
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
)


def utc_now_iso() -> str:
    """UTC ISO 8601 with microseconds and a trailing Z, so string order is time order."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViolationRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


assert tuple(f.name for f in fields(ViolationRecord)) == FIELDS
