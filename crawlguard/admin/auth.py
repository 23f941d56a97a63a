"""Operator authentication for the admin server: a bearer token, or a browser session cookie.

The operator token is configured as its SHA-256 (`admin.token_sha256`) or read from an
environment variable (`admin.token_env`); only the digest is ever held. Every check reads the
digest from the running config, so a reload that changes the token revokes the old one at once.

Sessions are server-side records (crawlguard.state.sessions: memory:// in this process,
redis:// shared with every process on the same Redis) named by a random id, so logout ends a
session for good: the same cookie replayed afterwards is refused. The cookie is
``<expiry>.<id>.<hex HMAC-SHA256(key=HMAC(secret, token digest), msg="crawlguard-session:
<expiry>:<id>")>``; a session must carry a good MAC AND be recorded. The MAC keeps the
session unforgeable by whoever can read the config file (it holds the token *digest* and the
Redis URL, so neither may be enough): the secret is a random one this process draws at start,
or, with `admin.token_env`, one derived from the token itself (never in the file, but in the
environment of every replica, so their sessions work on each other). Changing the token
invalidates every session (the key changes). A tenant's proxy credentials are a different
secret under a different header and never open the admin side.

Wrong credentials (a bearer token, a login form post) are throttled per source address
(crawlguard.admin.throttle); a session cookie is not a guessable credential and is not.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from prometheus_client import Counter

from crawlguard.admin.metrics import ADMIN_AUTH_REASONS
from crawlguard.admin.throttle import AuthThrottle, source_key
from crawlguard.config import Config, ConfigError
from crawlguard.state.sessions import SessionStore, SessionsUnavailable

log = logging.getLogger("crawlguard")

SESSION_COOKIE = "crawlguard_session"
SESSION_SECONDS = 12 * 3600
REALM = 'Bearer realm="crawlguard-admin"'
NO_TOKEN = "no operator token configured: set admin.token_sha256 or admin.token_env"
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
HTML_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Paths anyone may fetch: scrapers, probes, the login itself and the page's public assets.
OPEN_PATHS = frozenset({"/metrics", "/healthz", "/login", "/logout"})
OPEN_PREFIXES = ("/static/",)

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
HEX64 = re.compile(r"[0-9a-f]{64}")

ConfigSource = Callable[[], Config]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def check_token(digest: bytes, token: str) -> bool:
    """Constant-time: the presented token's SHA-256 against the configured digest."""
    return hmac.compare_digest(token_digest(token), digest)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def shared_secret(cfg: Config) -> bytes | None:
    """With `admin.token_env` in force, a session secret derived from the token itself: in the
    environment of every replica, never in the config file. None with `admin.token_sha256`."""
    if cfg.admin.token_sha256 or not cfg.admin.token_env:
        return None
    token = os.environ.get(cfg.admin.token_env)
    if not token:
        return None
    return hmac.new(b"crawlguard-session-secret", token.encode(), hashlib.sha256).digest()


def parse_session(value: str | None) -> tuple[int, str, str] | None:
    """``(expiry, id, mac)`` of a well-formed cookie value, else None."""
    if not value or len(value) > 200:
        return None
    parts = value.split(".")
    if len(parts) != 3:
        return None
    expiry, sid, mac = parts
    if not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 12):
        return None
    if not SESSION_ID.fullmatch(sid) or not HEX64.fullmatch(mac):
        return None
    return int(expiry), sid, mac


def record_key(sid: str) -> str:
    """What the session store keeps for a session id: its SHA-256, so the store holds no
    cookie."""
    return hashlib.sha256(sid.encode()).hexdigest()


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class OperatorAuth:
    """The admin server's credential checks: the running config's token, the session store
    and the per-source throttle of wrong credentials (shared by the middleware and the login
    routes, so a guesser cannot switch between them to get more tries)."""

    def __init__(
        self,
        config: ConfigSource,
        sessions: SessionStore,
        *,
        throttle: AuthThrottle | None = None,
        failures: Counter | None = None,
    ) -> None:
        self._config = config
        self.sessions = sessions
        self.throttle = throttle if throttle is not None else AuthThrottle()
        self.failures = failures
        if failures is not None:
            for reason in ADMIN_AUTH_REASONS:  # every series from the start, at 0
                failures.labels(reason)
        self._process_secret = secrets.token_bytes(32)

    def digest(self) -> bytes | None:
        """The configured digest; None (the API then answers 403) when there is none or its
        environment variable is gone."""
        try:
            return self._config().admin_token_digest()
        except ConfigError as exc:
            log.error("admin: %s", exc)
            return None

    # -- sessions ------------------------------------------------------------------------------

    def _mac(self, digest: bytes, expiry: int, sid: str) -> str:
        secret = shared_secret(self._config()) or self._process_secret
        key = hmac.new(secret, digest, hashlib.sha256).digest()
        msg = f"crawlguard-session:{expiry}:{sid}".encode()
        return hmac.new(key, msg, hashlib.sha256).hexdigest()

    def make_session(self, digest: bytes, sid: str, now: float | None = None) -> str:
        """The signed cookie value for session `sid` (not recorded: see `start_session`)."""
        expiry = int(now if now is not None else time.time()) + SESSION_SECONDS
        return f"{expiry}.{sid}.{self._mac(digest, expiry, sid)}"

    async def start_session(self, digest: bytes) -> str:
        """A new recorded session; its cookie value. Raises `SessionsUnavailable`."""
        sid = secrets.token_urlsafe(32)
        value = self.make_session(digest, sid)
        await self.sessions.add(record_key(sid), SESSION_SECONDS)
        return value

    async def check_session(
        self, digest: bytes, value: str | None, now: float | None = None
    ) -> bool:
        """A cookie signed for this digest, not expired, and still recorded (not logged out).
        The store is asked only about a well-signed cookie; raises `SessionsUnavailable`."""
        parsed = parse_session(value)
        if parsed is None:
            return False
        expiry, sid, mac = parsed
        if expiry <= (now if now is not None else time.time()):
            return False
        if not hmac.compare_digest(mac.encode(), self._mac(digest, expiry, sid).encode()):
            return False
        return await self.sessions.alive(record_key(sid))

    async def end_session(self, value: str | None) -> None:
        """Logout: the session named by the cookie is no longer recorded, whether or not its
        MAC still fits the token (a later change back to the old token must not revive it).
        Knowing the id takes the cookie. Raises `SessionsUnavailable`."""
        parsed = parse_session(value)
        if parsed is not None:
            await self.sessions.revoke(record_key(parsed[1]))

    # -- throttling ----------------------------------------------------------------------------

    def locked(self, request: web.Request) -> int:
        """Seconds this request's source must wait before its credentials are checked again
        (0: check them now); a refusal is counted."""
        wait = self.throttle.retry_after(source_key(request.remote))
        if wait and self.failures is not None:
            self.failures.labels("throttled").inc()
        return wait

    def failed(self, request: web.Request, reason: str) -> None:
        self.throttle.failure(source_key(request.remote))
        if self.failures is not None:
            self.failures.labels(reason).inc()

    def succeeded(self, request: web.Request) -> None:
        self.throttle.success(source_key(request.remote))

    # -- the middleware's decision -------------------------------------------------------------

    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A present Authorization header decides alone (a wrong token is refused even with a
        valid cookie); without one, the session cookie."""
        digest = self.digest()
        if digest is None:
            return _no_token(request.path)
        header = request.headers.get("Authorization")
        if header is not None:
            if wait := self.locked(request):
                return _throttled(request, wait)
            token = bearer(header)
            if token is None or not check_token(digest, token):
                self.failed(request, "bearer")
                return _refuse(request)
            self.succeeded(request)
            return await handler(request)
        try:
            ok = await self.check_session(digest, request.cookies.get(SESSION_COOKIE))
        except SessionsUnavailable as exc:
            return _sessions_down(request, exc)
        return await handler(request) if ok else _refuse(request)


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def _no_token(path: str) -> web.Response:
    if _is_api(path):
        return web.json_response({"error": NO_TOKEN}, status=403)
    return web.Response(status=403, text=NO_TOKEN + "\n")


def _refuse(request: web.Request) -> web.StreamResponse:
    path = request.path
    if _is_api(path):
        wrong = "Authorization" in request.headers
        return web.json_response(
            {
                "error": "invalid operator token"
                if wrong
                else "operator authentication required: send Authorization: Bearer <token>"
            },
            status=401,
            headers={"WWW-Authenticate": REALM},
        )
    if request.method in ("GET", "HEAD"):
        target = (
            "/login"
            if request.path_qs == "/"
            else f"/login?next={quote(request.path_qs, safe='/')}"
        )
        return web.Response(status=303, headers={"Location": target})
    return web.Response(
        status=401, text="operator authentication required\n", headers={"WWW-Authenticate": REALM}
    )


def _throttled(request: web.Request, wait: int) -> web.Response:
    message = (
        "too many wrong operator credentials from this address: "
        f"try again in {wait} s (nothing was checked)"
    )
    headers = {"Retry-After": str(wait)}
    if _is_api(request.path):
        return web.json_response({"error": message}, status=429, headers=headers)
    return web.Response(status=429, text=message + "\n", headers=headers)


def _sessions_down(request: web.Request, exc: SessionsUnavailable) -> web.Response:
    message = (
        f"cannot check the login session: {exc}; "
        "send Authorization: Bearer <operator token> instead, or try again later"
    )
    headers = {"Retry-After": str(exc.retry_after)}
    if _is_api(request.path):
        return web.json_response({"error": message}, status=503, headers=headers)
    return web.Response(status=503, text=message + "\n", headers=headers)


def middleware(
    auth: OperatorAuth,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Every path but `OPEN_PATHS`/`OPEN_PREFIXES` needs the operator token or a session;
    HTML answers get the security headers, API answers ``Cache-Control: no-store``."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_open(request.path):
            response = await auth.guard(request, handler)
        else:
            response = await handler(request)
        if _is_api(request.path):
            response.headers.setdefault("Cache-Control", "no-store")
        if (response.content_type or "").startswith("text/html"):
            for name, value in HTML_HEADERS.items():
                response.headers.setdefault(name, value)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return guard


# -- the login form ----------------------------------------------------------------------------


def safe_next(value: str | None) -> str:
    """A local path to go to after login; anything else (another site, a scheme) is `/`."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or any(c in value for c in "\\\r\n\t")
        or not value.isascii()
        or not value.isprintable()
    ):
        return "/"
    return value


def login_page(
    next_path: str,
    message: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>crawlguard: operator login</title>"
        '<link rel="stylesheet" href="/static/dashboard.css"></head><body><main class="login">'
        "<h1>crawlguard</h1>"
        f"{notice}"
        '<form method="post" action="/login">'
        '<label for="token">Operator token</label> '
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus> "
        f'<input type="hidden" name="next" value="{html.escape(next_path)}">'
        '<button type="submit">Log in</button>'
        "</form></main></body></html>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            **HTML_HEADERS,
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            **(headers or {}),
        },
    )


def _cross_site(request: web.Request) -> bool:
    """A login form posted from another site. `Origin: null` is not proof of that: a page with
    ``Referrer-Policy: no-referrer`` (ours) makes browsers send it on their own form posts, so
    `Sec-Fetch-Site` decides where browsers send it. (Login CSRF needs the operator token to
    begin with; this only keeps other sites from driving the form.)"""
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    return origin not in (None, "null", f"{request.scheme}://{request.host}")


class LoginRoutes:
    """`GET/POST /login`, `POST /logout`: a cookie session for the dashboard."""

    def __init__(self, auth: OperatorAuth) -> None:
        self.auth = auth

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/login", self.form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)

    async def form(self, request: web.Request) -> web.Response:
        if self.auth.digest() is None:
            return web.Response(status=403, text=NO_TOKEN + "\n")
        return login_page(safe_next(request.query.get("next")))

    async def login(self, request: web.Request) -> web.Response:
        digest = self.auth.digest()
        if digest is None:
            return web.Response(status=403, text=NO_TOKEN + "\n")
        if _cross_site(request):
            return web.Response(status=403, text="cross-site login refused\n")
        form = await request.post()
        token, next_path = form.get("token"), safe_next(str(form.get("next") or "") or None)
        # checked after the body is read: nothing awaits between this and the count below
        if wait := self.auth.locked(request):
            message = f"Too many wrong tokens from your address. Try again in {wait} s."
            return login_page(next_path, message, status=429, headers={"Retry-After": str(wait)})
        if not isinstance(token, str) or not check_token(digest, token):
            self.auth.failed(request, "login")
            return login_page(next_path, "Wrong operator token.", status=401)
        self.auth.succeeded(request)
        try:
            value = await self.auth.start_session(digest)
        except SessionsUnavailable as exc:
            message = (
                f"Cannot start a session: {exc}. Try again later; "
                "the API still takes Authorization: Bearer <token>."
            )
            headers = {"Retry-After": str(exc.retry_after)}
            return login_page(next_path, message, status=503, headers=headers)
        response = web.Response(status=303, headers={"Location": next_path})
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """Ends the session server side, then clears the cookie. If the session store cannot
        record that, a 503 says so and the cookie is kept, so the operator can try again
        (the session is not usable meanwhile: checks fail closed too)."""
        try:
            await self.auth.end_session(request.cookies.get(SESSION_COOKIE))
        except SessionsUnavailable as exc:
            return web.Response(
                status=503,
                text=f"Log out failed: {exc}. The session was not ended; try again.\n",
                headers={"Retry-After": str(exc.retry_after)},
            )
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure
        )
        return response


__all__ = [
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "LoginRoutes",
    "OperatorAuth",
    "middleware",
    "parse_session",
    "record_key",
]
