"""`crawlguard store import` parses each line on a fast path (no record object, no per-field
regex); whatever it accepts must become exactly the row the thorough path (`parse_line`, the
record bounded as `record_many` stores it) makes, and whatever it refuses must get the
thorough path's error naming the line and the field."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard.cli.store import BadLine, import_row, parse_line
from crawlguard.policy.records import FIELDS
from crawlguard.store import normalize_ts, url_host
from crawlguard.store.rollup import hour_start

_TEXT = st.one_of(st.none(), st.text(max_size=8), st.text(min_size=2040, max_size=2100))
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=1),
)
_TIME = st.one_of(
    st.none(),
    st.sampled_from(
        (
            "2024-05-01T12:00:00.000000Z",
            "2024-05-01T23:59:59.999999Z",
            "2024-05-01T12:00:00+02:00",  # an offset: normalised
            "2024-05-01 12:00:00",  # naive: UTC
            "2024-02-30T12:00:00.000000Z",  # no such day
            "2024-05-01T12:00:00,000000Z",
            "",
            "yesterday",
        )
    ),
)
_UID = st.sampled_from(
    (
        "0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF",  # upper case: normalised
        "01234567-89ab-cdef-0123-456789abcdef",  # dashed: normalised
        "0123456789abcdef0123456789abcdeg",
        "short",
    )
)


@st.composite
def lines(draw: st.DrawFn) -> str:
    obj: dict[str, Any] = {
        "ts": draw(_TIME),
        "tenant": draw(st.one_of(st.sampled_from(("acme", "")), _ANY)),
        "kind": "robots-disallow",
        "action": "blocked",
        "method": draw(st.one_of(st.just("GET"), st.text(min_size=60, max_size=70), _ANY)),
        "url": draw(
            st.one_of(
                st.sampled_from(("https://Example.TEST:443/p", "/no-host", "a.test:80")),
                st.text(min_size=2040, max_size=2100).map(lambda t: "http://h.test/" + t),
                _ANY,
            )
        ),
        "user_agent": draw(_TEXT),
        "rule": draw(_TEXT),
        "crawl_delay": draw(_ANY),
        "retry_after": draw(_ANY),
        "robots_sha256": draw(st.sampled_from((None, "AB" * 32, "ab" * 32))),
        "delay_seconds": draw(_ANY),
        "reason": draw(_TEXT),
        "count": draw(st.one_of(st.integers(0, 600), _ANY)),
        "first_ts": draw(_TIME),
        "last_ts": draw(_TIME),
        "uid": draw(st.one_of(_UID, _ANY)),
    }
    for name in draw(st.sets(st.sampled_from((*FIELDS, "uid")), max_size=2)):
        del obj[name]
    if draw(st.booleans()):
        obj = {k: v for k, v in obj.items() if v is not None}
    if draw(st.integers(0, 20)) == 0:
        obj["extra"] = 1
    text = json.dumps(obj, allow_nan=True)
    return draw(st.sampled_from((text, text + "\n", " " + text, "[" + text + "]", text[:-1])))


def _thorough(text: str, number: int) -> tuple[Any, ...]:
    uid, rec = parse_line(text, number)
    bounded = rec.bounded()
    row = [uid, *(getattr(bounded, f) for f in FIELDS)]
    sha = row[1 + FIELDS.index("robots_sha256")]
    row[1 + FIELDS.index("robots_sha256")] = sha.lower() if sha else None
    return (*row, url_host(bounded.url), hour_start(rec.ts))


@settings(max_examples=200, deadline=None)
@given(text=lines(), number=st.integers(1, 10**6))
def test_the_fast_path_rows_and_errors_are_the_thorough_paths(text: str, number: int) -> None:
    try:
        want: tuple[Any, ...] | str = _thorough(text, number)
    except BadLine as exc:
        want = str(exc)
    try:
        got: tuple[Any, ...] | str = import_row(text, number)
    except BadLine as exc:
        got = str(exc)
    assert _same(got, want)


def _same(a: tuple[Any, ...] | str, b: tuple[Any, ...] | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return len(a) == len(b) and all(
        type(x) is type(y) and x == y for x, y in zip(a, b, strict=True)
    )


def test_a_canonical_line_becomes_its_row() -> None:
    line = json.dumps(
        {
            "ts": "2024-05-01T12:34:56.000001Z",
            "tenant": "acme",
            "kind": "crawl-delay",
            "action": "delayed",
            "method": "GET",
            "url": "https://Site.example:443/x",
            "crawl_delay": 2.5,
            "count": 3,
            "uid": "0123456789abcdef0123456789abcdef",
        }
    )
    row = import_row(line, 1)
    assert row[0] == "0123456789abcdef0123456789abcdef"
    assert row[1] == normalize_ts("2024-05-01T12:34:56.000001Z")
    assert row[-2:] == ("site.example", hour_start("2024-05-01T12:00:00.000000Z"))
    assert row[1 + FIELDS.index("count")] == 3
