"""The operator dashboard (issue 10): `GET /` serves the page, `GET /static/{name}` its assets.

Everything the page needs ships in `crawlguard/admin/static/` (no CDN, no web fonts), and the
page works under ``Content-Security-Policy: default-src 'self'; img-src 'self' data:;
frame-ancestors 'none'``: no inline script or style, no ``style=""`` attributes, no eval. The
page's script talks to the JSON API (`/api/summary`, `/api/violations`, `/api/tenants`,
`/api/evidence/<sha256>`) with the operator's session cookie.

Operator authentication for `/` is the admin server's job (it wraps these handlers);
`/static/*` is public and holds nothing secret.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = "dashboard.html"

# name -> content type. Only these files are ever served: no directory listing, no traversal.
STATIC_FILES: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"

_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@cache
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


async def page(request: web.Request) -> web.Response:
    """The dashboard HTML. Not cached: it is behind operator auth."""
    return web.Response(
        body=_read(PAGE),
        content_type="text/html",
        charset="utf-8",
        headers={
            **_COMMON_HEADERS,
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
        },
    )


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    ctype = STATIC_FILES.get(name)
    if ctype is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=_read(name),
        headers={
            **_COMMON_HEADERS,
            "Content-Type": ctype,
            "Cache-Control": "no-cache",
        },
    )


def add_routes(app: web.Application) -> None:
    """Register `GET /` (the page) and `GET /static/{name}` (whitelisted assets) on `app`."""
    app.router.add_get("/", page, name="dashboard")
    app.router.add_get("/static/{name}", static, name="dashboard-static")
