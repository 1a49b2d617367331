"""Small pages a person sees in the preview iframe: errors and "starting"."""

from __future__ import annotations

import html
import json

from gateway.asgi_types import Scope, Send

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;margin:0;display:grid;place-items:center;"
    "min-height:100vh;background:#f6f7f9;color:#1d2330}main{max-width:34rem;padding:2rem}"
    "h1{font-size:1.2rem}pre{white-space:pre-wrap;background:#fff;border:1px solid #dde;"
    "padding:.75rem;font-size:12px;max-height:16rem;overflow:auto}"
    ".bar{height:6px;background:#dde;border-radius:3px}.bar>i{display:block;height:6px;"
    "background:#3b6ef5;border-radius:3px;transition:width .4s}"
)


def page(title: str, body: str, refresh: float | None = None) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{refresh:g}">' if refresh else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{html.escape(title)}'
        f"</title><style>{_STYLE}</style></head><body><main>{body}</main></body></html>"
    ).encode()


async def send_body(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def error_page(
    scope: Scope,
    send: Send,
    status: int,
    error: str,
    detail: str,
    as_html: bool,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """A JSON error for API clients, a readable page for a browser; returns the status."""
    if as_html:
        titles = {
            401: "Sign-in needed",
            403: "Not allowed",
            404: "No such preview",
            429: "Too many attempts",
            502: "The dev server is not answering",
            503: "Preview unavailable",
            504: "The dev server took too long",
        }
        title = titles.get(status, "Preview error")
        body = page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p>")
        await send_body(send, status, body, b"text/html; charset=utf-8", extra or [])
    else:
        body = json.dumps({"error": error, "detail": detail}).encode()
        await send_body(send, status, body, b"application/json", extra or [])
    return status
