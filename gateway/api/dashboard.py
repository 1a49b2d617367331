"""The operator dashboard at ``/admin``: a static page whose script calls the admin API.

Authentication: a browser cannot send a bearer header when it navigates, so the page
itself holds no data and needs none; its script takes an admin JWT from the URL
fragment (``/admin#token=...``, which browsers never send to a server, so it lands in no
log or Referer) or from a form, keeps it in a variable only (no cookie, no storage: a
reload asks again), removes it from the address bar, and sends it as
``Authorization: Bearer`` to the ``/v1/admin/*`` endpoints, which require the admin
scope. ``previewctl dashboard`` prints such a link. No inline script and a strict CSP:
what the page shows comes from users (project ids, failure reasons) and is inserted as
text, never as HTML.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
FILES = {
    "/admin": ("dashboard.html", "text/html; charset=utf-8"),
    "/admin/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/admin/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _route(path: str, filename: str, media_type: str) -> Route:
    body = (STATIC / filename).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    serve.__name__ = f"dashboard_{filename.replace('.', '_')}"
    return Route(path, serve, methods=["GET"])


routes = [_route(path, name, kind) for path, (name, kind) in FILES.items()]
