"""Tenant lifecycle over the operator API (SPEC: tenants, `tenancy.source: store`) and the
audit trail of every change.

The registry (crawlguard.tenancy) owns validation, storage and the audit rows; this module
turns HTTP into registry calls and registry answers into JSON. Every registry call blocks on
the database, so it runs in a worker thread: the proxy shares this event loop.

A new or rotated token is in exactly one response body (the creating or rotating one) and
nowhere else: not in a log line, not in an audit row, not in a later answer.

The server's middleware has already checked the operator token or the login session. A
session is a cookie, which a browser attaches by itself, so a mutation that rides on one must
also come from this server's own page (`Origin` = this origin): the cookie's
``SameSite=Strict`` keeps other *sites* out, but not a sibling host of the same site.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crawlguard.store import StoreError
from crawlguard.tenancy import TENANT_FIELDS, TenancyError

if TYPE_CHECKING:
    from crawlguard.config import Config, Tenant
    from crawlguard.runtime import Runtime
    from crawlguard.tenancy import TenantRegistry

log = logging.getLogger("crawlguard")

BODY_LIMIT = 64 * 1024  # a tenant is a few hundred bytes; globs lists stay far below this
FIELDS = ("id", *TENANT_FIELDS)
UPDATABLE = TENANT_FIELDS
AUDIT_LIMIT = 100
TENANCY_LIST_LIMIT = 1000  # registry records `/api/tenancy` lists for the dashboard, at most
AUDIT_MAX_LIMIT = 1000
FILE_SOURCE = (
    "tenants come from the config file (tenancy.source: file): edit its tenants list and "
    "reload, or set tenancy.source: store to manage tenants through this API"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_INT = 2**63 - 1  # what both databases store in an integer column
# JSON types per field. A config file's YAML is typed by its author; a JSON client that sends
# `true` or `"2"` for a number has a bug, so neither is coerced (`None`: null allowed).
TYPES: dict[str, tuple[str, bool]] = {
    "id": ("string", False),
    "product_tokens": ("list of strings", False),
    "mode": ("string", False),
    "pacing": ("string", False),
    "max_concurrency": ("integer", True),
    "max_rps": ("number", True),
    "allow_hosts": ("list of strings", False),
    "deny_hosts": ("list of strings", False),
    "weight": ("number", False),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An answer other than success: `{"error", "field"}` with its status."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def response(self) -> web.Response:
        return web.json_response({"error": self.message, "field": self.field}, status=self.status)


def _database_errors() -> tuple[type[BaseException], ...]:
    """What a registry call raises when its database is down or broken: a 503, not a 500."""
    errors: list[type[BaseException]] = [StoreError, sqlite3.Error, OSError]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    return tuple(errors)


DATABASE_ERRORS = _database_errors()


def cross_origin(request: web.Request) -> bool:
    """A state-changing request that did not come from this server's own page: its `Origin`
    must be this server's (browsers send it on every fetch that is not a GET or HEAD, so a
    missing or ``null`` one is refused too) and `Sec-Fetch-Site`, where sent, `same-origin`
    (a sibling host of the same site shares the cookie's SameSite scope)."""
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site not in ("", "same-origin"):
        return True
    return request.headers.get("Origin") != f"{request.scheme}://{request.host}"


def session_csrf(request: web.Request) -> ApiError | None:
    """The same-origin check for a mutation authenticated by the session cookie (a bearer
    token is never sent by a browser on its own, so it needs none)."""
    if request.method in SAFE_METHODS or "Authorization" in request.headers:
        return None
    if cross_origin(request):
        return ApiError(
            403,
            "cross-origin request refused: a change made with the dashboard's login session "
            "must come from the dashboard itself (or send Authorization: Bearer <token>)",
        )
    return None


async def read_object(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object in the body, at most `BODY_LIMIT` bytes, naming only `allowed` keys."""
    if request.content_length is not None and request.content_length > BODY_LIMIT:
        raise ApiError(413, f"the request body is over {BODY_LIMIT} bytes")
    raw = bytearray()
    while len(raw) <= BODY_LIMIT:  # read() returns what has arrived: loop to the end
        chunk = await request.content.read(BODY_LIMIT + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > BODY_LIMIT:
        raise ApiError(413, f"the request body is over {BODY_LIMIT} bytes")
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ApiError(400, f"malformed JSON: {exc.msg} at {where}") from None
    except (ValueError, RecursionError) as exc:
        message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(400, f"malformed JSON: {message}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(data).__name__}")
    for key in data:
        if key not in allowed:
            shown = key if len(key) <= 64 else key[:64] + "…"
            raise ApiError(400, f"unknown field {shown!r} (accepted: {', '.join(allowed)})", shown)
        check_type(key, data[key])
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def check_type(name: str, value: Any) -> None:
    """`value` has the JSON type field `name` takes (the registry checks the value itself)."""
    kind, nullable = TYPES.get(name, ("", True))
    if value is None and nullable:
        return
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "list of strings":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and abs(value) <= MAX_INT
    else:
        return
    if not ok:
        what = ("an " if kind[0] in "aeiou" else "a ") + kind + (" or null" if nullable else "")
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:60] + "…"
        raise ApiError(400, f"{name}: expected {what}, not {shown}", name)


def _source(cfg: Config) -> str:
    return cfg.tenancy.source


def _grace(cfg: Config) -> float:
    return float(cfg.tenancy.rotate_grace)


def actor(cfg: Config) -> str:
    """Who the audit says made an API change: the operator token's label."""
    return "api:" + cfg.admin.token_label


def file_tenant(t: Tenant) -> dict[str, Any]:
    """A config-file tenant in the registry's public shape (no token, no digest)."""
    return {
        "id": t.id,
        "product_tokens": list(t.product_tokens),
        "mode": t.mode,
        "pacing": t.pacing,
        "max_concurrency": t.max_concurrency,
        "max_rps": t.max_rps,
        "allow_hosts": list(t.allow_hosts),
        "deny_hosts": list(t.deny_hosts),
        "weight": t.weight,
        "disabled": False,
        "source": "file",
    }


class TenantsAPI:
    """The tenant and audit endpoints over the running process (`guard()` read per request,
    so a reload's config is the one in force)."""

    def __init__(self, guard: Callable[[], Runtime | Any]) -> None:
        """`guard`: the Runtime, or the parent of `--workers N`'s admin source; either has
        `cfg` and, with `tenancy.source: store`, `tenancy` (the process's TenantRegistry)."""
        self._guard = guard

    def add_routes(self, app: web.Application) -> None:
        """Before the API's catch-all: aiohttp resolves routes in the order they were added."""
        app.router.add_post("/api/tenants", self.create)
        app.router.add_get("/api/tenancy", self.tenancy)
        app.router.add_get("/api/audit", self.audit)
        app.router.add_get("/api/tenants/{id}", self.show)
        app.router.add_patch("/api/tenants/{id}", self.update)
        app.router.add_delete("/api/tenants/{id}", self.disable)
        app.router.add_post("/api/tenants/{id}/rotate", self.rotate)
        app.router.add_get("/api/tenants/{id}/audit", self.tenant_audit)

    # -- plumbing --------------------------------------------------------------------------

    @property
    def cfg(self) -> Config:
        return self._guard().cfg

    def registry(self) -> TenantRegistry:
        """The process's registry, opened (and closed) by its owner with the process."""
        found: TenantRegistry | None = getattr(self._guard(), "tenancy", None)
        if found is None:  # store source, but no registry here: say so rather than crash
            raise ApiError(503, "the tenant registry is not open in this process; try again")
        return found

    async def _call[T](self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except TenancyError as exc:
            raise ApiError(exc.status, exc.message, exc.field) from None
        except DATABASE_ERRORS as exc:
            log.warning("admin: tenant registry unavailable: %s", type(exc).__name__)
            raise ApiError(
                503, f"the tenant database is unavailable ({type(exc).__name__}); try again"
            ) from None

    def _mutable(self, request: web.Request) -> None:
        """Refusals common to every change: a cross-origin session, a file-managed tenancy."""
        if (problem := session_csrf(request)) is not None:
            raise problem
        if _source(self.cfg) != "store":
            raise ApiError(409, FILE_SOURCE, "tenancy.source")

    @staticmethod
    async def _answer(
        work: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> web.Response:
        try:
            status, body = await work()
        except ApiError as exc:
            return exc.response()
        return web.json_response(body, status=status)

    # -- endpoints -------------------------------------------------------------------------

    async def tenancy(self, request: web.Request) -> web.Response:
        """Where tenants come from, for the dashboard: it offers lifecycle actions only for
        store-managed tenants. The first `TENANCY_LIST_LIMIT` records (by id) come along, so
        a page refreshed every 30 s stays small on a platform of 100,000 tenants; the page
        asks `/api/tenants/{id}` for a tenant it shows beyond them."""
        cfg = self.cfg

        async def work() -> tuple[int, Any]:
            body: dict[str, Any] = {"source": _source(cfg), "rotate_grace": _grace(cfg)}
            if body["source"] == "store":
                registry = self.registry()
                records = await self._call(registry.list)
                body["tenants"] = [r.public() for r in records[:TENANCY_LIST_LIMIT]]
                body["tenants_total"] = len(records)
                body["truncated"] = len(records) > TENANCY_LIST_LIMIT
            return 200, body

        return await self._answer(work)

    async def create(self, request: web.Request) -> web.Response:
        async def work() -> tuple[int, Any]:
            self._mutable(request)
            fields = await read_object(request, FIELDS)
            if "id" not in fields:
                raise ApiError(400, "field 'id' is required", "id")
            registry = self.registry()
            record, token = await self._call(registry.create, fields, actor=actor(self.cfg))
            log.info("admin: tenant %s created", record.id)
            return 201, {"id": record.id, "token": token}

        return await self._answer(work)

    async def show(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        cfg = self.cfg

        async def work() -> tuple[int, Any]:
            if _source(cfg) != "store":
                for t in cfg.tenants:
                    if t.id == tid:
                        return 200, file_tenant(t)
                raise _no_such(tid)
            registry = self.registry()
            record = await self._call(registry.get, tid)
            if record is None:
                raise _no_such(tid)
            return 200, record.public()

        return await self._answer(work)

    async def update(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]

        async def work() -> tuple[int, Any]:
            self._mutable(request)
            fields = await read_object(request, FIELDS)
            if "id" in fields:
                raise ApiError(400, "a tenant's id cannot be changed", "id")
            if not fields:
                raise ApiError(400, f"nothing to change: give one of {', '.join(UPDATABLE)}")
            registry = self.registry()
            record = await self._call(registry.update, tid, fields, actor=actor(self.cfg))
            log.info("admin: tenant %s updated (%s)", tid, ", ".join(sorted(fields)))
            return 200, record.public()

        return await self._answer(work)

    async def rotate(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]

        async def work() -> tuple[int, Any]:
            self._mutable(request)
            if request.body_exists:  # nothing to give; `{}` is accepted, any key is not
                await read_object(request, ())
            cfg = self.cfg
            registry = self.registry()
            token = await self._call(registry.rotate, tid, actor=actor(cfg), grace=_grace(cfg))
            log.info("admin: tenant %s token rotated (grace %g s)", tid, _grace(cfg))
            return 200, {"token": token}

        return await self._answer(work)

    async def disable(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]

        async def work() -> tuple[int, Any]:
            self._mutable(request)
            registry = self.registry()
            record = await self._call(registry.disable, tid, actor=actor(self.cfg))
            log.info("admin: tenant %s disabled", tid)
            return 200, record.public()

        return await self._answer(work)

    async def tenant_audit(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]

        async def work() -> tuple[int, Any]:
            limit = _limit(request, ("limit",))
            if _source(self.cfg) != "store":  # file tenants are not audited: no change API
                if tid not in {t.id for t in self.cfg.tenants}:
                    raise _no_such(tid)
                return 200, []
            registry = self.registry()
            if await self._call(registry.get, tid) is None:
                raise _no_such(tid)
            entries = await self._call(registry.audit, tenant=tid, limit=limit)
            return 200, [e.public() for e in entries]

        return await self._answer(work)

    async def audit(self, request: web.Request) -> web.Response:
        async def work() -> tuple[int, Any]:
            limit = _limit(request, ("tenant", "limit"))
            tenant = request.query.get("tenant") or None
            if _source(self.cfg) != "store":
                return 200, []
            registry = self.registry()
            entries = await self._call(registry.audit, tenant=tenant, limit=limit)
            return 200, [e.public() for e in entries]

        return await self._answer(work)


def _no_such(tid: str) -> ApiError:
    return ApiError(404, f"no tenant {tid[:100]!r}", "id")


def _limit(request: web.Request, allowed: tuple[str, ...]) -> int:
    """`limit` of an audit query (1..AUDIT_MAX_LIMIT); an unknown or repeated parameter is a
    400, so a typo never silently widens the answer."""
    for name in request.query:
        if name not in allowed:
            raise ApiError(400, f"unknown parameter {name[:64]!r}", name[:64])
        if len(request.query.getall(name)) > 1:
            raise ApiError(400, f"parameter {name!r} given more than once; give it once", name)
    value = request.query.get("limit", "")
    if value == "":
        return AUDIT_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= AUDIT_MAX_LIMIT:
        raise ApiError(
            400,
            f"limit must be a whole number from 1 to {AUDIT_MAX_LIMIT}, not {value[:50]!r}",
            "limit",
        )
    return int(value)


__all__ = ["BODY_LIMIT", "TenantsAPI"]
