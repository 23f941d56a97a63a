"""HTTP date and Retry-After parsing (RFC 9110 §5.6.7, §10.2.3), shared by pacing and the
robots cache. Pure: the caller passes "now"; garbage from an origin gives None, never raises."""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_http_date(value: str | None) -> float | None:
    """POSIX timestamp of an HTTP date (IMF-fixdate, RFC 850 or asctime form), or None."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime and "-0000" forms come back naive; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, ValueError):
        return None


def parse_retry_after(value: str | None, now_wallclock: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date); garbage → None.

    Fractional seconds are tolerated (some servers send them); a date in the past is 0.
    Only ASCII digits count: `str.isdigit` also accepts "²", which `float` then rejects.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value[0].isdigit():
        return float(value) if _DELTA_SECONDS.fullmatch(value) else None
    when = parse_http_date(value)
    return None if when is None else max(0.0, when - now_wallclock)
