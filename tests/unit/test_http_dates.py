"""Retry-After and HTTP dates as origins send them, garbage included (shared by pacing and
the robots cache)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from crawlguard.policy.http_dates import parse_http_date, parse_retry_after

WALL0 = 1_700_000_000.0


def http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (http_date(WALL0 + 90), 90.0),
        (http_date(WALL0 - 90), 0.0),  # in the past: retry now
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("12abc", None),
        ("1_000", None),
        ("²", None),  # str.isdigit() says yes, float() says no
        ("١٢", None),  # Arabic-Indic digits
        ("Wed, 99 Oct 2015 07:28:00 GMT", None),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, WALL0) == expected


def test_obsolete_date_forms_are_gmt() -> None:
    # RFC 850 and asctime forms are obsolete but still valid; both are GMT, whatever the TZ.
    base = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wednesday, 21-Oct-15 07:28:30 GMT", base) == 30.0
    assert parse_retry_after("Wed Oct 21 07:28:30 2015", base) == 30.0
    assert parse_http_date("Wed, 21 Oct 2015 07:28:30 -0000") == base + 30


@pytest.mark.parametrize("value", [None, "", "yesterday", "Wed, 21 Oct 2015 25:99:00 GMT"])
def test_parse_http_date_garbage(value: str | None) -> None:
    assert parse_http_date(value) is None
