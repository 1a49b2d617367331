"""How the proxy says no: an error page for a browser navigation, JSON for anything else,
a close frame for a WebSocket; each refusal counted (observability hook)."""

from __future__ import annotations

import contextlib

from gateway.asgi_types import Scope, Send
from gateway.errors import ApiError
from gateway.observability import instruments
from gateway.proxy.pages import error_page


async def cut_short(scope: Scope, send: Send, html: bool) -> None:
    """A 503 (retry elsewhere) rather than the server's bare 500, unless the response
    had already begun (then the client sees it end early)."""
    retry = [(b"retry-after", b"1"), (b"connection", b"close")]
    with contextlib.suppress(Exception):
        await error_page(scope, send, 503, "unavailable", "the gateway is restarting", html, retry)


async def refuse(
    scope: Scope,
    send: Send,
    status: int,
    error: str,
    detail: str,
    html: bool,
    retry_after: int = 0,
) -> None:
    instruments.PROXY_REFUSED.labels(str(status)).inc()  # observability hook
    if status == 429:
        instruments.RATE_LIMITED.labels("preview_auth").inc()
    if scope["type"] == "websocket":
        await send(
            {
                "type": "websocket.close",
                "code": 1008 if status < 500 else 1011,
                "reason": detail[:120],
            }
        )
        return
    extra = [(b"retry-after", str(retry_after).encode())] if retry_after else None
    await error_page(scope, send, status, error, detail, html, extra)


async def refuse_resume(scope: Scope, send: Send, exc: ApiError, html: bool) -> None:
    """A resume refused (over the limit: which previews are live; the archive's host
    gone: how to start again), as a page or JSON."""
    if scope["type"] == "websocket" or exc.status != 429:
        await refuse(scope, send, exc.status, exc.error, exc.detail, html)
        return
    instruments.PROXY_REFUSED.labels("429").inc()  # observability hook
    extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await error_page(scope, send, 429, exc.error, exc.detail, html, extra or None)
