"""A site's own rate limit, from the draft IETF RateLimit response headers.

Pure: no I/O, no clock unless one is passed. `rate_cap(headers)` reads what a response says
and returns a `RateCap` the site budget applies on top of its own (crawlguard.policy.sites):

- `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09 to -12): a List of quota
  policies, `"name";q=<quota>;w=<window seconds>[;qu="requests"][;pk=…]`. Each policy counting
  requests gives a rate `q / w`; `max_rps` is the smallest. The drafts give `w` no default
  (-09 to -12: OPTIONAL, no value assumed), so a policy without one says nothing about a rate
  and is skipped; so is one whose unit (`qu`) is not `requests` (`content-bytes`,
  `concurrent-requests`), and one with a quota of 0 (a rate of nothing: `RateLimit`'s
  `r=0;t=…` is what says "wait"). Drafts -03 to -07 wrote a policy as a bare Integer quota
  (`10;w=1, 50;w=60`) and one revision used `l=` for the quota: both are read the same way.
- `RateLimit` (-08 to -12): a List of service limits, `"name";r=<remaining>;t=<seconds>`.
  An exhausted one (`r=0`) with an effective window `t` asks for a pause of `t` seconds; the
  longest wins. A limit naming a policy of another unit is skipped. Draft -07's Dictionary
  form (`limit=100, remaining=0, reset=30`) is read too.
- `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` (draft-polli and
  draft-ietf -00 to -06, still widely sent): `Remaining: 0` with `Reset: <seconds>` is a
  pause; a `Limit` list member with a `w` parameter (`100, 100;w=60`) is a policy.

Malformed fields are ignored, as the drafts require ("Malformed RateLimit header fields MUST
be ignored"), each on its own: a broken `RateLimit-Policy` does not hide a valid `RateLimit`.
Nothing here raises on any input. Values are bounded (the drafts' security considerations
ask clients to): a pause is at most `MAX_PAUSE` (a day), a rate at least `MIN_RPS` (one request
a day). A reset of `EPOCH_LIKE` or more is a Unix timestamp some servers send by mistake:
with `now` (wall-clock seconds) it counts from then, without it the value is ignored.
`Retry-After`, which the drafts say takes precedence, is read by the caller as before.
"""

from __future__ import annotations

from collections import UserString
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_PAUSE = 86_400.0
MIN_RPS = 1 / 86_400
MAX_FIELD = 8 * 1024  # characters of one header's value read at most; longer: ignored
MAX_ITEMS = 64  # policies or limits of one field looked at
EPOCH_LIKE = 1_000_000_000  # ~2001-09-09 as a Unix time, or 31 years as a delay
REQUESTS = "requests"
PREFIX = "ratelimit"  # every field read here starts so
PREFIX_BYTES = PREFIX.encode()

Headers = Callable[[str], Any] | Mapping[str, Any] | Any


@dataclass(frozen=True, slots=True)
class RateCap:
    """What a response says about its site's limit: at most `max_rps` requests a second
    (None: nothing said), and no request for `pause` seconds from now (None: no pause)."""

    max_rps: float | None = None
    pause: float | None = None


NOTHING = RateCap()


def rate_cap(headers: Headers, *, now: float | None = None) -> RateCap:
    """The cap the RateLimit headers of one response set. `headers`: a callable
    `name -> value | None`, or a mapping (mitmproxy's `Headers`, a dict, ...) looked up
    without regard to case. Never raises."""
    try:
        if not _may_say_something(headers):
            return NOTHING  # the common case, at the cost of one pass over the names
        get = _getter(headers)
        policies = _policies(get)
        units = {name: unit for name, _, unit in policies if name is not None}
        rates = [rate for _, rate, unit in policies if rate is not None and unit == REQUESTS]
        legacy_rates, legacy_pauses = _legacy(get, now)
        rates += legacy_rates
        pauses = _limits(get, units, now) + legacy_pauses
    except Exception:  # a header must never break the response path
        return NOTHING
    max_rps = max(min(rates), MIN_RPS) if rates else None
    pause = min(max(pauses), MAX_PAUSE) if pauses else None
    return RateCap(max_rps, pause if pause else None)


# -- fields ----------------------------------------------------------------------------------


def _policies(get: Callable[[str], str | None]) -> list[tuple[str | None, float | None, str]]:
    """(name, rate or None, unit) of each `RateLimit-Policy` member."""
    out: list[tuple[str | None, float | None, str]] = []
    for value, params in _members(get("RateLimit-Policy")):
        name = _name(value)
        quota = params.get("q", params.get("l"))
        if quota is None and name is None:
            quota = value  # drafts -03 to -07: the member is the quota itself
        unit = _name(params.get("qu", REQUESTS)) or "?"
        out.append((name, _rate(quota, params.get("w")), unit))
    return out


def _limits(
    get: Callable[[str], str | None], units: Mapping[str, str], now: float | None
) -> list[float]:
    """Pauses the `RateLimit` field asks for (exhausted limits with an effective window)."""
    pauses: list[float] = []
    raw = get("RateLimit")
    members = _members(raw)
    if not members and raw:
        members = _draft07(raw)
    for value, params in members:
        name = _name(value)
        if name is not None and units.get(name, REQUESTS) != REQUESTS:
            continue
        if _int(params.get("r")) == 0:
            seconds = _seconds(params.get("t"), now)
            if seconds is not None:
                pauses.append(seconds)
    return pauses


def _draft07(raw: str) -> list[tuple[Any, dict[str, Any]]]:
    """Draft -07's `RateLimit: limit=100, remaining=0, reset=30` as one limit."""
    parsed = _parse(raw, "dictionary")
    if not isinstance(parsed, dict):
        return []
    params = {}
    for key, short in (("remaining", "r"), ("reset", "t")):
        member = parsed.get(key)
        if isinstance(member, tuple):
            params[short] = member[0]
    return [(None, params)] if params else []


def _legacy(get: Callable[[str], str | None], now: float | None) -> tuple[list[float], list[float]]:
    """The rates of `RateLimit-Limit`'s policies, and the pause `RateLimit-Remaining: 0` with
    `RateLimit-Reset` asks for."""
    rates = []
    for value, params in _members(get("RateLimit-Limit")):
        rate = _rate(value, params.get("w"))
        if rate is not None:
            rates.append(rate)
    if _int(_item(get("RateLimit-Remaining"))) != 0:
        return rates, []
    seconds = _seconds(_item(get("RateLimit-Reset")), now)
    return rates, [] if seconds is None else [seconds]


# -- values ----------------------------------------------------------------------------------


def _rate(quota: Any, window: Any) -> float | None:
    q, w = _int(quota), _int(window)
    if q is None or w is None or q <= 0 or w <= 0:
        return None
    return q / w


def _seconds(value: Any, now: float | None) -> float | None:
    """A delay in seconds (Integer, at least 0); an epoch-like one counted from `now`."""
    seconds = _int(value)
    if seconds is None or seconds < 0:
        return None
    if seconds >= EPOCH_LIKE:
        if now is None:
            return None
        return max(0.0, seconds - now)
    return float(seconds)


def _int(value: Any) -> int | None:
    """An sf-Integer (a Boolean is not one, though Python says it is an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _name(value: Any) -> str | None:
    """A String's or a Token's text (http_sf's Token is a UserString, not a str)."""
    return str(value) if isinstance(value, str | UserString) else None


# -- parsing ---------------------------------------------------------------------------------


def _members(raw: str | None) -> list[tuple[Any, dict[str, Any]]]:
    """The Items of a List field (Inner Lists skipped), at most `MAX_ITEMS`; [] if malformed."""
    parsed = _parse(raw, "list")
    if not isinstance(parsed, list):
        return []
    out = []
    for member in parsed[:MAX_ITEMS]:
        if isinstance(member, tuple) and not isinstance(member[0], list):
            out.append((member[0], dict(member[1])))
    return out


def _item(raw: str | None) -> Any:
    """The bare value of an Item field, or None."""
    parsed = _parse(raw, "item")
    return parsed[0] if isinstance(parsed, tuple) else None


def _parse(raw: str | None, tltype: str) -> Any:
    if not raw or len(raw) > MAX_FIELD:
        return None
    try:
        from http_sf import parse

        return parse(raw.encode("ascii"), tltype=tltype)
    except (ValueError, TypeError, UnicodeError, RecursionError, OverflowError):
        return None  # http_sf's StructuredFieldError is a ValueError


def _may_say_something(headers: Headers) -> bool:
    """False when `headers` (a mapping) has no field named `RateLimit…`: most responses.
    mitmproxy's `Headers` is read from its raw field list, a cheaper pass than its `get`."""
    fields = getattr(headers, "fields", None)
    if isinstance(fields, tuple | list):
        return any(field[0][:9].lower() == PREFIX_BYTES for field in fields)
    if isinstance(headers, Mapping):
        for key in headers:
            text = _text(key)
            if text is not None and text[:9].lower() == PREFIX:
                return True
        return False
    return True  # a callable: ask it


def _getter(headers: Headers) -> Callable[[str], str | None]:
    if isinstance(headers, Mapping):
        return lambda name: _lookup(headers, name, mapping=True)
    if hasattr(headers, "get"):
        return lambda name: _lookup(headers, name, mapping=False)
    if callable(headers):
        return lambda name: _text(headers(name))
    return lambda name: None


def _lookup(headers: Any, name: str, *, mapping: bool) -> str | None:
    """`headers.get(name)`, else the keys compared without case (a plain dict), joined with
    ", " as repeated field lines combine (RFC 9110 5.3)."""
    found = _text(headers.get(name))
    if found is not None or not mapping:
        return found
    folded = name.lower()
    values: Iterable[Any] = (
        v for k, v in headers.items() if isinstance(k, str) and k.lower() == folded
    )
    texts = [t for t in map(_text, values) if t is not None]
    return ", ".join(texts) if texts else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    if isinstance(value, list | tuple):  # a multi-valued mapping's lines
        texts = [t for t in map(_text, value) if t is not None]
        return ", ".join(texts) if texts else None
    return None
