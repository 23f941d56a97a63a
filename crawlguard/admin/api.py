"""The operator JSON API (`/api/*`): violations, tenants, a dashboard summary, robots.txt cache
state and stored robots.txt evidence. Read-only; authentication is the server's middleware.

Every store call is blocking SQLite, so it runs in a worker thread (`asyncio.to_thread`): the
proxy shares this event loop and must never wait on a query. Bad input is a 400 with an
``{"error": ...}`` body (plus ``"valid": [...]`` where the choices are few); an unknown or
repeated query parameter is bad input too, so a typo never silently widens a filter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from multidict import MultiMapping

from crawlguard.admin.tenants_api import TenantsAPI
from crawlguard.policy.decisions import Action, Kind
from crawlguard.policy.identity import DEFAULT_PORTS, IdentityError, Target, canonical_host
from crawlguard.store import (
    PageKey,
    StoreError,
    ViolationFilter,
    ViolationStore,
    epoch_us,
    from_epoch_us,
    normalize_ts,
    parse_since,
)

if TYPE_CHECKING:
    from crawlguard.runtime import Runtime

VIOLATION_KINDS = tuple(k.value for k in Kind if k is not Kind.ALLOWED)
ACTIONS = tuple(a.value for a in Action)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SUMMARY_SINCE = "24h"
DEFAULT_BUCKETS = 24
MAX_BUCKETS = 200
TOP_HOSTS = 10
QUIET_SERIES_MAX = 1000  # beyond it, /api/summary lists only tenants with violations
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
EVIDENCE_CSP = "default-src 'none'; sandbox"  # a stored body is data, never a page


class BadRequest(Exception):
    def __init__(self, message: str, valid: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.valid = valid


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class Params:
    """The query string, checked against the parameters an endpoint takes. An empty value is
    the same as an absent one (a form or script may send ``tenant=``)."""

    def __init__(self, query: MultiMapping[str], allowed: tuple[str, ...]) -> None:
        self._values: dict[str, str] = {}
        for name in query:
            if name not in allowed:
                raise BadRequest(f"unknown parameter {name!r}", list(allowed))
        for name in allowed:
            values = query.getall(name, [])
            if len(values) > 1:
                raise BadRequest(f"parameter {name!r} given {len(values)} times; give it once")
            if values and values[0] != "":
                self._values[name] = values[0]

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def choice(self, name: str, valid: tuple[str, ...]) -> str | None:
        value = self.get(name)
        if value is not None and value not in valid:
            raise BadRequest(f"unknown {name} {value[:100]!r}", list(valid))
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if not (value.isascii() and value.isdigit()) or not lo <= int(value) <= hi:
            raise BadRequest(f"{name} must be a whole number from {lo} to {hi}, not {value[:50]!r}")
        return int(value)

    def time(self, name: str, now: datetime) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        try:
            return parse_since(value, now=now)
        except ValueError as exc:
            raise BadRequest(str(exc).replace("invalid since", f"invalid {name}", 1)) from None

    def host(self) -> str | None:
        value = self.get("host")
        if value is None:
            return None
        try:
            return canonical_host(value)
        except IdentityError as exc:
            raise BadRequest(
                f"invalid host {value[:100]!r}: {exc} (give a host, no port)"
            ) from None


def encode_cursor(key: PageKey) -> str:
    raw = f"{key[0]}|{key[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> PageKey:
    """An opaque `X-Next-Cursor` back to its (ts, id); anything else is a 400."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        ts, sep, rid = raw.partition("|")
        if not sep or not rid.isdigit() or normalize_ts(ts) != ts:
            raise ValueError(raw)
        return ts, int(rid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("invalid cursor: pass X-Next-Cursor back unchanged") from None


def parse_origin(value: str) -> tuple[str, str, int]:
    """``https://host[:port]`` to the robots cache key, canonical as the proxy makes it."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"invalid origin {value[:200]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if (
        scheme not in DEFAULT_PORTS
        or parts.username is not None
        or parts.query
        or parts.fragment
        or parts.path not in ("", "/", "/robots.txt")
        or not parts.hostname
    ):
        raise BadRequest(f"invalid origin {value[:200]!r}: expected http(s)://host[:port]")
    try:
        host = canonical_host(parts.hostname)
    except IdentityError as exc:
        raise BadRequest(f"invalid origin {value[:200]!r}: {exc}") from None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def wall_iso(monotonic_ts: float) -> str:
    """A RobotsCache time (time.monotonic, the cache's clock in the Runtime) as UTC ISO 8601."""
    wall = time.time() - (time.monotonic() - monotonic_ts)
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AdminAPI:
    """Handlers over the running Runtime (read through `guard()` on every request, so the API
    always sees the Runtime and config that run, reloads included)."""

    def __init__(self, guard: Callable[[], Runtime]) -> None:
        self._guard = guard

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/violations", self.violations)
        app.router.add_get("/api/tenants", self.tenants)
        app.router.add_get("/api/summary", self.summary)
        app.router.add_get("/api/robots", self.robots)
        app.router.add_get("/api/evidence/{sha256}", self.evidence)
        TenantsAPI(self._guard).add_routes(app)  # tenant lifecycle + audit: before the catch-all
        from crawlguard.admin.sites_api import SitesAPI  # it imports this module's Params

        SitesAPI(self._guard).add_routes(app)
        app.router.add_route("*", "/api/{tail:.*}", self.not_found)

    @property
    def store(self) -> ViolationStore:
        return self._guard().store

    async def _call[T](self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except StoreError as exc:
            raise _Unavailable(str(exc)) from None

    async def _known_tenants(self) -> list[Any]:
        """The tenants the proxy manages, quiet ones included: the config file's, or with
        `tenancy.source: store` the registry's (disabled ones too: their records stay).
        `config.Tenant` and `TenantRecord` share the fields read here."""
        guard = self._guard()
        registry = getattr(guard, "tenancy", None)
        if registry is None:
            return list(guard.cfg.tenants)
        from crawlguard.tenancy import TenancyError

        try:
            return list(await asyncio.to_thread(registry.list))
        except TenancyError as exc:
            raise _Unavailable(exc.message) from None

    # -- endpoints -------------------------------------------------------------------------

    async def violations(self, request: web.Request) -> web.Response:
        """Records newest first (``ts DESC, id DESC``), keyset-paginated by an opaque cursor."""
        try:
            p = Params(
                request.query,
                ("tenant", "kind", "action", "host", "since", "until", "limit", "cursor"),
            )
            now = datetime.now(UTC)
            flt = ViolationFilter(
                tenant=p.get("tenant"),
                kind=p.choice("kind", VIOLATION_KINDS),
                action=p.choice("action", ACTIONS),
                host=p.host(),
                since=p.time("since", now),
                until=p.time("until", now),
            )
            limit = p.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            cursor = p.get("cursor")
            after = decode_cursor(cursor) if cursor is not None else None
            page = await self._call(self.store.page, flt, limit=limit, after=after)
        except BadRequest as exc:
            return _bad(exc)
        except _Unavailable as exc:
            return error(503, str(exc))
        headers: dict[str, str] = {}
        if page.next is not None:
            token = encode_cursor(page.next)
            # the resolved window: every page of one walk has the same since/until
            query = {k: v for k, v in asdict(flt).items() if v is not None}
            if p.get("limit") is not None:
                query["limit"] = str(limit)
            query["cursor"] = token
            headers["X-Next-Cursor"] = token
            headers["Link"] = f'</api/violations?{urlencode(query)}>; rel="next"'
        return web.json_response([item.to_dict() for item in page.items], headers=headers)

    async def tenants(self, request: web.Request) -> web.Response:
        """Configured tenants and every tenant the store knows, with their counts."""
        try:
            p = Params(request.query, ("since",))
            since = p.time("since", datetime.now(UTC))
            report = await self._call(self.store.report, since=since)
            latest = await self._call(self.store.latest_violations, since=since)
            configured = {t.id: t for t in await self._known_tenants()}
        except BadRequest as exc:
            return _bad(exc)
        except _Unavailable as exc:
            return error(503, str(exc))
        ids = list(configured) + sorted((set(report.tenants) | set(latest)) - set(configured))
        out = []
        for tid in ids:
            cfg = configured.get(tid)
            tr = report.tenants.get(tid)
            out.append(
                {
                    "id": tid,
                    "configured": cfg is not None,
                    "disabled": bool(getattr(cfg, "disabled", False)) if cfg else None,
                    "mode": cfg.mode if cfg else None,
                    "pacing": cfg.pacing if cfg else None,
                    "product_tokens": list(cfg.product_tokens) if cfg else None,
                    "requests": dict(tr.requests) if tr else {},
                    "requests_total": tr.requests_total if tr else 0,
                    "violations": dict(tr.violations) if tr else {},
                    "violations_total": tr.violations_total if tr else 0,
                    "held": tr.held if tr else 0,
                    "last_violation": latest.get(tid),
                }
            )
        return web.json_response({"since": since, "tenants": out})

    async def summary(self, request: web.Request) -> web.Response:
        """Violations per tenant over time, by kind and top hosts, for the dashboard."""
        try:
            p = Params(
                request.query, ("tenant", "kind", "action", "host", "since", "until", "buckets")
            )
            now = datetime.now(UTC)
            # the default window: the whole UTC hours of the last day, the current one last,
            # so its hourly buckets come from the store's roll-ups (docs/operators/store.md)
            hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            # a relative `since` (`7d`) without `until` counts back from that same hour end,
            # so its window is whole hours too (otherwise every bucket edge cuts an hour)
            relative_to = hour if p.get("until") is None else now
            since = p.time("since", relative_to) or parse_since(SUMMARY_SINCE, now=hour)
            until = p.time("until", now) or normalize_ts(hour.isoformat())
            if until <= since:
                raise BadRequest(f"until ({until}) must be after since ({since})")
            buckets = p.integer("buckets", DEFAULT_BUCKETS, 1, MAX_BUCKETS)
            flt = ViolationFilter(
                tenant=p.get("tenant"),
                kind=p.choice("kind", VIOLATION_KINDS),
                action=p.choice("action", ACTIONS),
                host=p.host(),
                since=since,
                until=until,
            )
            s = await self._call(self.store.summary, flt, buckets=buckets, top_hosts=TOP_HOSTS)
            known = await self._known_tenants()
        except BadRequest as exc:
            return _bad(exc)
        except _Unavailable as exc:
            return error(503, str(exc))
        series = dict(s.series)
        if len(known) <= QUIET_SERIES_MAX:  # quiet tenants show as zeros, up to a point
            for tenant in known:
                if flt.tenant in (None, tenant.id):
                    series.setdefault(tenant.id, [0] * buckets)
        start = epoch_us(s.since)
        width = s.bucket_us
        return web.json_response(
            {
                "since": s.since,
                "until": s.until,
                "bucket_seconds": width // 1_000_000 if width % 1_000_000 == 0 else width / 1e6,
                "buckets": [from_epoch_us(start + i * width) for i in range(buckets)],
                "series": [
                    {"tenant": tid, "counts": counts} for tid, counts in sorted(series.items())
                ],
                "by_kind": [{"kind": k, "count": n} for k, n in s.by_kind],
                "top_hosts": [{"tenant": t, "host": h, "count": n} for t, h, n in s.top_hosts],
                "total": s.total,
            }
        )

    async def robots(self, request: web.Request) -> web.Response:
        """What the proxy's robots.txt cache holds for one origin right now (a look-up
        counts as a use for the cache's LRU order, as a request's would)."""
        try:
            origin = Params(request.query, ("origin",)).get("origin")
            if origin is None:
                raise BadRequest("give origin=http(s)://host[:port]")
            key = parse_origin(origin)
        except BadRequest as exc:
            return _bad(exc)
        name = Target(key[0], key[1], key[2], "/").origin
        entry = self._guard().robots.peek(key)
        if entry is None:
            return error(
                404,
                f"{name} is not in the robots.txt cache (never fetched, expired or evicted)",
                origin=name,
                cached=False,
            )
        stored = False
        if entry.sha256 is not None:
            try:
                stored = await self._call(self.store.robots_body, entry.sha256) is not None
            except _Unavailable:
                stored = False
        return web.json_response(
            {
                "origin": name,
                "cached": True,
                "result": entry.result,
                "available": entry.available,
                "fetched_at": wall_iso(entry.fetched_at),
                "expires_at": wall_iso(entry.expires_at),
                "sha256": entry.sha256,
                "detail": entry.detail,
                "body": entry.body.decode("utf-8", "replace") if entry.body is not None else None,
                # only when a record cites this body: the store keeps evidence, not every file
                "evidence_url": f"/api/evidence/{entry.sha256}" if stored else None,
            }
        )

    async def evidence(self, request: web.Request) -> web.Response:
        """A robots.txt body a violation record cites, byte for byte, as plain text."""
        sha = request.match_info["sha256"]
        if not HEX64.match(sha):
            return error(400, "the evidence address is the body's SHA-256: 64 hex digits")
        try:
            body = await self._call(self.store.robots_body, sha.lower())
        except _Unavailable as exc:
            return error(503, str(exc))
        if body is None:
            return error(404, f"no robots.txt body {sha.lower()} in the store")
        return web.Response(
            body=body,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": EVIDENCE_CSP},
        )

    async def not_found(self, request: web.Request) -> web.Response:
        return error(404, f"no such API endpoint: {request.path[:200]}")


class _Unavailable(Exception):
    """The store failed (locked, closed, broken): a 503, not a crash of the handler."""


def _bad(exc: BadRequest) -> web.Response:
    if exc.valid is not None:
        return error(400, exc.message, valid=exc.valid)
    return error(400, exc.message)


__all__ = ["AdminAPI"]
