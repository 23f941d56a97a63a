"""Operator authentication for the admin server: a bearer token, or a browser session cookie.

The operator token is configured as its SHA-256 (`admin.token_sha256`) or read from an
environment variable (`admin.token_env`); only the digest is ever held. Every check reads the
digest from the running config, so a reload that changes the token revokes the old one at once.

Sessions are stateless: ``<expiry_unix>.<hex HMAC-SHA256(key=HMAC(process secret, token
digest), msg="crawlguard-session:<expiry>")>``. Nothing to store; changing the token
invalidates every session (the key changes). The random per-process secret matters: the token
*digest* sits in the config file, and a cookie keyed on the digest alone could be forged by
anyone who can read the config. The price is one new login after a restart. A tenant's proxy
credentials are a different secret under a different header and never open the admin side.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from crawlguard.config import ConfigError

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

DigestSource = Callable[[], bytes | None]
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


_PROCESS_SECRET = secrets.token_bytes(32)


def _session_mac(digest: bytes, expiry: int) -> str:
    key = hmac.new(_PROCESS_SECRET, digest, hashlib.sha256).digest()
    msg = b"crawlguard-session:" + str(expiry).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def make_session(digest: bytes, now: float | None = None) -> str:
    expiry = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{expiry}.{_session_mac(digest, expiry)}"


def check_session(digest: bytes, value: str | None, now: float | None = None) -> bool:
    """A cookie made by `make_session` with this digest that has not expired."""
    if not value:
        return False
    expiry_text, sep, mac = value.partition(".")
    if not sep or not expiry_text.isascii() or not expiry_text.isdigit() or len(expiry_text) > 12:
        return False
    expiry = int(expiry_text)
    if expiry <= (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(
        mac.encode("ascii", "replace"), _session_mac(digest, expiry).encode()
    )


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def authenticated(request: web.Request, digest: bytes) -> bool:
    """A present Authorization header decides alone (a wrong token is refused even with a
    valid cookie); without one, the session cookie."""
    header = request.headers.get("Authorization")
    if header is not None:
        token = bearer(header)
        return token is not None and check_token(digest, token)
    return check_session(digest, request.cookies.get(SESSION_COOKIE))


def current_digest(source: DigestSource) -> bytes | None:
    """The configured digest; None (the API then answers 403) when there is none or its
    environment variable is gone."""
    try:
        return source()
    except ConfigError as exc:
        log.error("admin: %s", exc)
        return None


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


def middleware(
    source: DigestSource,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Every path but `OPEN_PATHS`/`OPEN_PREFIXES` needs the operator token or a session;
    HTML answers get the security headers, API answers ``Cache-Control: no-store``."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_open(request.path):
            digest = current_digest(source)
            if digest is None:
                response: web.StreamResponse = _no_token(request.path)
            elif not authenticated(request, digest):
                response = _refuse(request)
            else:
                response = await handler(request)
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


def login_page(next_path: str, message: str | None = None, status: int = 200) -> web.Response:
    notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
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
        headers={**HTML_HEADERS, "Cache-Control": "no-store", "X-Frame-Options": "DENY"},
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

    def __init__(self, source: DigestSource) -> None:
        self.source = source

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/login", self.form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)

    async def form(self, request: web.Request) -> web.Response:
        if current_digest(self.source) is None:
            return web.Response(status=403, text=NO_TOKEN + "\n")
        return login_page(safe_next(request.query.get("next")))

    async def login(self, request: web.Request) -> web.Response:
        digest = current_digest(self.source)
        if digest is None:
            return web.Response(status=403, text=NO_TOKEN + "\n")
        if _cross_site(request):
            return web.Response(status=403, text="cross-site login refused\n")
        form = await request.post()
        token, next_path = form.get("token"), safe_next(str(form.get("next") or "") or None)
        if not isinstance(token, str) or not check_token(digest, token):
            return login_page(next_path, "Wrong operator token.", status=401)
        response = web.Response(status=303, headers={"Location": next_path})
        response.set_cookie(
            SESSION_COOKIE,
            make_session(digest),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure
        )
        return response


__all__ = [
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "LoginRoutes",
    "check_session",
    "make_session",
    "middleware",
]
