"""The draft IETF RateLimit headers read into a `RateCap` (crawlguard.policy.ratelimit).

The field values are the examples of draft-ietf-httpapi-ratelimit-headers-11 (sections 3.2,
4.2, 6, 7, 8.5 and appendix B; -12 keeps them), of the earlier drafts' forms (-07's Dictionary,
-03 to -06's Integer policies, the RateLimit-Limit / -Remaining / -Reset trio), and
hypothesis-drawn garbage, which must give `RateCap(None, None)` or a bounded cap and never an
exception.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard.policy.ratelimit import (
    MAX_FIELD,
    MAX_PAUSE,
    MIN_RPS,
    RateCap,
    rate_cap,
)

NAMES = (
    "RateLimit-Policy",
    "RateLimit",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)


def cap(**fields: str) -> RateCap:
    """`rate_cap` of a response with these fields (`RateLimit_Policy` -> `RateLimit-Policy`)."""
    return rate_cap({name.replace("_", "-"): value for name, value in fields.items()})


# -- the draft's examples ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "rps"),
    [
        ('"burst";q=100;w=60,"daily";q=1000;w=86400', 1000 / 86400),  # section 3
        ('"default";q=100;w=10', 10.0),  # 3.2
        ('"permin";q=50;w=60,"perhr";q=1000;w=3600', 1000 / 3600),  # 3.2: the smaller
        ('"peruser";q=100;w=60;pk=:cHsdsRa894==:', 100 / 60),  # 3.2, a partition key
        ('"basic";q=100;w=60', 100 / 60),  # B.1.3
        ('"dynamic";q=15;w=20', 15 / 20),  # B.2.3
        ('"hour";q=1000;w=3600, "day";q=5000;w=86400', 5000 / 86400),  # B.3.1
        ('"sliding";q=100;w=60;burst=1000', 100 / 60),  # FAQ 8: other parameters are comments
        ('"default";q=100;w=60;qu="requests"', 100 / 60),  # the default unit, spelled out
        ("default;q=100;w=60", 100 / 60),  # a Token name, as in earlier revisions
        ("default;l=100;w=10", 10.0),  # one revision's `l` for the quota
        ("10;w=1, 50;w=60", 50 / 60),  # drafts -03 to -07: Integer members
    ],
)
def test_policies_give_the_smallest_rate(policy: str, rps: float) -> None:
    got = cap(RateLimit_Policy=policy)
    assert got.pause is None
    assert got.max_rps is not None and math.isclose(got.max_rps, rps)


@pytest.mark.parametrize(
    "policy",
    [
        '"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:',  # 3.2: not requests
        '"conc";q=10;qu="concurrent-requests";w=1',
        '"default";q=100',  # no window: the drafts give w no default
        '"default";w=60',  # no quota
        '"default";q=0;w=60',  # a quota of nothing is not a rate
        '"default";q=100;w=0',  # w must be more than 0
        '"default";q=100;w=-5',
        '"default";q=100;w=1.5',  # sub-second precision is not supported: an Integer
        '"default";q=1.5;w=60',
        '"default";q=?1;w=60',  # a Boolean is not an Integer
        '"default";q="100";w="60"',
        '("a" "b");q=1;w=1',  # an Inner List is not a policy
        "100",  # a bare quota, no window
    ],
)
def test_policies_that_say_no_request_rate_are_skipped(policy: str) -> None:
    assert cap(RateLimit_Policy=policy) == RateCap(None, None)


def test_one_policy_skipped_does_not_hide_another() -> None:
    got = cap(RateLimit_Policy='"b";q=9;qu="content-bytes";w=1, "r";q=30;w=60, "n";q=1')
    assert got == RateCap(0.5, None)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"RateLimit": '"default";r=50;t=30'}, RateCap(None, None)),  # 4: quota left
        ({"RateLimit": '"default";r=999;pk=:dHJpYWwxMjEzMjM=:'}, RateCap(None, None)),  # 4.2
        ({"RateLimit": '"default";r=0;t=50'}, RateCap(None, 50.0)),  # B.1.1
        ({"RateLimit": '"default";r=0;t=48'}, RateCap(None, 48.0)),  # B.1.1, served anyway
        ({"RateLimit": '"problemPolicy";r=0;t=10'}, RateCap(None, 10.0)),  # 6: on a 301
        ({"RateLimit": '"dayLimit";r=100;t=36000'}, RateCap(None, None)),  # B.1.2
        ({"RateLimit": '"default";r=0;t=5'}, RateCap(None, 5.0)),  # B.1.4 (with Retry-After)
        ({"RateLimit": '"daily";r=1;t=86400'}, RateCap(None, None)),  # 8.5
        (
            {
                "RateLimit-Policy": '"fixedwindow";q=100;w=60',
                "RateLimit": '"fixedwindow";r=99;t=50',
            },
            RateCap(100 / 60, None),
        ),  # B.2.1
        (
            {"RateLimit-Policy": '"dynamic";q=100;w=60', "RateLimit": '"dynamic";r=9;t=50'},
            RateCap(100 / 60, None),
        ),  # B.2.2
        (
            {"RateLimit-Policy": '"dynamic";q=15;w=20', "RateLimit": '"dynamic";r=0;t=20'},
            RateCap(0.75, 20.0),
        ),  # B.2.3
        (
            {"RateLimit-Policy": '"dynamic";q=100;w=60', "RateLimit": '"dynamic";r=15;t=40'},
            RateCap(100 / 60, None),
        ),  # B.3 (Retry-After is the caller's)
        (
            {
                "RateLimit-Policy": '"somepolicy";q=10000;w=1000',
                "RateLimit": '"somepolicy";r=10000;t=10',
            },
            RateCap(10.0, None),
        ),  # 8.5: the policy's rate, not r/t's 1000
    ],
)
def test_the_drafts_examples(fields: dict[str, str], expected: RateCap) -> None:
    got = rate_cap(fields)
    assert got.pause == expected.pause
    if expected.max_rps is None:
        assert got.max_rps is None
    else:
        assert got.max_rps is not None and math.isclose(got.max_rps, expected.max_rps)


def test_the_longest_pause_of_several_exhausted_limits_wins() -> None:
    got = cap(RateLimit='"permin";r=0;t=20, "perhr";r=0;t=2402, "perday";r=5;t=9000')
    assert got == RateCap(None, 2402.0)


def test_an_exhausted_limit_of_another_unit_is_no_pause() -> None:
    got = cap(
        RateLimit_Policy='"bytes";q=65535;qu="content-bytes";w=10, "req";q=10;w=1',
        RateLimit='"bytes";r=0;t=10',
    )
    assert got == RateCap(10.0, None)


@pytest.mark.parametrize(
    "limit",
    [
        '"default";r=0',  # no effective window: how long is not said
        '"default";r=0;t=0',  # nothing to wait
        '"default";r=0;t=-1',
        '"default";r=0;t=2.5',
        '"default";r=?0;t=5',  # Boolean false is not the Integer 0
        '"default";t=5',  # no r
    ],
)
def test_limits_that_ask_for_no_pause(limit: str) -> None:
    assert cap(RateLimit=limit) == RateCap(None, None)


# -- the earlier drafts ------------------------------------------------------------------------


def test_draft_07s_dictionary() -> None:
    assert cap(RateLimit="limit=100, remaining=0, reset=30") == RateCap(None, 30.0)
    assert cap(RateLimit="limit=100, remaining=50, reset=30") == RateCap(None, None)


def test_the_three_field_drafts() -> None:
    got = cap(RateLimit_Limit="10, 10;w=1, 50;w=60", RateLimit_Remaining="0", RateLimit_Reset="7")
    assert got.pause == 7.0 and got.max_rps is not None and math.isclose(got.max_rps, 50 / 60)
    assert cap(RateLimit_Limit="100", RateLimit_Remaining="1", RateLimit_Reset="60") == RateCap()
    assert cap(RateLimit_Remaining="0") == RateCap()  # no reset: how long is not said
    assert cap(RateLimit_Remaining="0", RateLimit_Reset="abc") == RateCap()
    assert cap(RateLimit_Remaining="zero", RateLimit_Reset="5") == RateCap()


def test_all_fields_together_the_smallest_rate_and_the_longest_pause() -> None:
    got = cap(
        RateLimit_Policy='"a";q=60;w=60',
        RateLimit='"a";r=0;t=3',
        RateLimit_Limit="100, 100;w=200",
        RateLimit_Remaining="0",
        RateLimit_Reset="9",
    )
    assert got == RateCap(0.5, 9.0)


# -- bounds ------------------------------------------------------------------------------------


def test_a_pause_is_at_most_a_day_and_a_rate_at_least_one_a_day() -> None:
    assert cap(RateLimit='"d";r=0;t=999999') == RateCap(None, MAX_PAUSE)
    assert cap(RateLimit_Policy='"y";q=1;w=31536000') == RateCap(MIN_RPS, None)


def test_an_epoch_reset_counts_from_now_when_known_else_is_ignored() -> None:
    fields = {"RateLimit-Remaining": "0", "RateLimit-Reset": "1800000030"}
    assert rate_cap(fields) == RateCap(None, None)
    assert rate_cap(fields, now=1_800_000_000.0) == RateCap(None, 30.0)
    assert rate_cap(fields, now=1_800_000_100.0) == RateCap(None, None)  # already past


def test_a_field_over_the_size_limit_is_ignored() -> None:
    long = ", ".join(f'"p{i}";q=100;w=60' for i in range(MAX_FIELD // 10))
    assert len(long) > MAX_FIELD
    assert cap(RateLimit_Policy=long) == RateCap(None, None)


# -- the headers argument ----------------------------------------------------------------------


def test_headers_as_a_callable_a_dict_of_any_case_or_mitmproxy_headers() -> None:
    from mitmproxy.http import Headers

    values = {"RateLimit-Policy": '"a";q=10;w=1', "RateLimit": '"a";r=0;t=4'}
    expected = RateCap(10.0, 4.0)
    assert rate_cap(values.get) == expected
    assert rate_cap({k.lower(): v for k, v in values.items()}) == expected
    assert rate_cap({k.upper(): v.encode() for k, v in values.items()}) == expected
    assert rate_cap(Headers(**{k.replace("-", "_"): v for k, v in values.items()})) == expected
    # two field lines combine as one List (RFC 9651 3.1)
    two = Headers([(b"RateLimit-Policy", b'"a";q=10;w=1'), (b"ratelimit-policy", b'"b";q=1;w=1')])
    assert rate_cap(two) == RateCap(1.0, None)
    assert rate_cap({}) == RateCap() and rate_cap(lambda name: None) == RateCap()


def test_a_broken_policy_does_not_hide_a_valid_limit() -> None:
    assert cap(RateLimit_Policy='"a";q=10;w=1,,', RateLimit='"a";r=0;t=4') == RateCap(None, 4.0)
    assert cap(RateLimit_Policy='"a";q=10;w=1', RateLimit="r=0;;t=4") == RateCap(10.0, None)


# -- garbage -----------------------------------------------------------------------------------

SF_CHARS = st.sampled_from([*'";=,:?*()-. 0123456789abcdeqrtwluk\t', "é", "\x00", "\r", "\n"])
VALUES = st.one_of(
    st.text(SF_CHARS, max_size=80),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.none(),
    st.integers(),
    st.lists(st.text(SF_CHARS, max_size=20), max_size=3),
    st.builds(
        lambda name, q, w, r, t: f'"{name}";q={q};w={w}' if r is None else f"{name};r={r};t={t}",
        st.text("abc", min_size=1, max_size=3),
        st.integers(-(10**20), 10**20),
        st.integers(-(10**20), 10**20),
        st.one_of(st.none(), st.integers(-5, 5)),
        st.integers(-(10**20), 10**20),
    ),
)


def bounded(got: RateCap) -> bool:
    rps_ok = got.max_rps is None or (math.isfinite(got.max_rps) and got.max_rps >= MIN_RPS > 0)
    pause_ok = got.pause is None or 0 < got.pause <= MAX_PAUSE
    return isinstance(got, RateCap) and rps_ok and pause_ok


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=5))
def test_garbage_never_raises_and_stays_bounded(fields: dict[str, Any]) -> None:
    assert bounded(rate_cap(fields))
    assert bounded(rate_cap(fields, now=1_800_000_000.0))


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers())))
def test_headers_of_any_type_never_raise(headers: Any) -> None:
    assert rate_cap(headers) == RateCap()


def test_a_getter_that_raises_is_nothing_said() -> None:
    def broken(name: str) -> str:
        raise RuntimeError("boom")

    assert rate_cap(broken) == RateCap()
