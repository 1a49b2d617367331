"""Host-based routing: ``{id}.{PREVIEW_DOMAIN}`` is that preview, anything else the API.

For a preview host: find its route (cached), authenticate (the `preview_token` query
parameter once, then a per-host cookie), then proxy HTTP or WebSocket to the dev server.
While the preview is still starting, a browser navigation gets a self-refreshing page and
other requests wait (one Redis poller per preview, however many requests wait on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

from limits import parse as parse_limit
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.datastructures import State

from gateway import instruments
from gateway.asgi_types import Receive, Scope, Send, header
from gateway.pages import error_page, send_body
from gateway.proxy_http import proxy_http, wants_html
from gateway.proxy_ws import RelayRegistry, WsLimits, proxy_ws
from gateway.routes import Route, RouteCache
from gateway.signed import sign, verify
from gateway.starting import starting_page, status_json
from gateway.upstream import UpstreamPool
from gateway.views import public_host
from gateway.ws_budget import Budgets
from shared import keys
from shared.settings import Settings

log = logging.getLogger(__name__)

COOKIE_PURPOSE = "cookie"
ACTIVITY_EVERY = 5.0  # seconds between activity writes per preview
STARTING = frozenset({"assigned", "preparing", "starting"})
STATUS_PATH = "/__preview/status"
TOO_MANY_FAILURES = "too many failed attempts; wait a minute"

# token → user id for the preview `sid`, or None (preview token or the user's own JWT).
TokenCheck = Callable[[str, str], Awaitable[str | None]]


def cookie_name(sid: str) -> str:
    return f"pv_{sid}"


class PreviewRouter:
    """The ASGI entry point: wraps the API app and serves preview hosts itself."""

    def __init__(self, api: Starlette, settings: Settings, check_token: TokenCheck) -> None:
        self.api = api
        self.settings = settings
        self.check_token = check_token
        self.suffix = "." + settings.domain.lower()
        self.pool = UpstreamPool(head_timeout=settings.upstream_head_timeout)
        self.relays = RelayRegistry()
        self.limits = WsLimits(
            settings.ws_max_message_bytes, settings.ws_idle_timeout, settings.ws_max_lifetime
        )
        self.routes: RouteCache | None = None
        rule = parse_limit(settings.rate_limit_auth_failures)
        self.auth_limit, self.auth_window = rule.amount, rule.get_expiry()
        self._waits: dict[str, asyncio.Task[Route | None]] = {}
        self._activity: dict[str, float] = {}
        self._ws_per_client: dict[str, int] = {}
        self.ws_budgets = Budgets(settings.ws_buffer_per_client)
        self._background: set[asyncio.Task[object]] = set()

    # --- dispatch -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.api(scope, self._lifespan_receive(receive), send)
            return
        sid = self.preview_id(scope)
        if sid is None:
            await self.api(scope, receive, send)
            return
        if self.routes is None:
            self.routes = RouteCache(self.state.redis)
            self.routes.start()
        await self.serve(sid, scope, receive, send)

    @property
    def state(self) -> State:
        return self.api.state

    def preview_id(self, scope: Scope) -> str | None:
        raw = header(scope, b"host")
        if raw is None:
            return None
        host = raw.decode("latin-1").lower().rsplit(":", 1)[0]
        if host.endswith(self.suffix):
            label = host[: -len(self.suffix)]
            if label and "." not in label:
                return label
        return None

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> dict[str, object]:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.shutdown()
            return dict(message)

        return wrapped

    async def shutdown(self) -> None:
        """Close WebSockets with 1001 within the drain deadline, then upstream sockets."""
        await self.relays.close_all(self.settings.drain_timeout)
        if self.routes is not None:
            await self.routes.stop()
        self.pool.close()

    # --- one preview request ------------------------------------------------------------

    async def serve(self, sid: str, scope: Scope, receive: Receive, send: Send) -> None:
        is_ws = scope["type"] == "websocket"
        html = not is_ws and wants_html(scope)
        assert self.routes is not None
        try:
            route = await self.routes.get(sid)
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            await self.refuse(scope, send, 503, "unavailable", "state store unreachable", html)
            return
        if route is None:
            await self.refuse(scope, send, 404, "not_found", "no such preview", html)
            return
        token = self.query_token(scope)
        if token is not None and not is_ws:
            if await self.too_many_failures(scope, failed=False):
                await self.refuse(scope, send, 429, "rate_limited", TOO_MANY_FAILURES, html)
                return
            await self.login(sid, route, token, scope, send, html)
            return
        user = self.cookie_user(sid, scope)
        if user is None or user != route.user:
            if await self.too_many_failures(scope, failed=True):
                await self.refuse(scope, send, 429, "rate_limited", TOO_MANY_FAILURES, html)
                return
            await self.refuse(
                scope,
                send,
                401,
                "unauthorized",
                "open this preview from its link (the token is missing or expired)",
                html,
            )
            return
        if is_ws and not self.origin_ok(scope):
            await self.refuse(scope, send, 403, "forbidden", "cross-origin WebSocket", False)
            return
        if scope["path"] == STATUS_PATH and not is_ws:
            await status_json(self.state.redis, route, send)
            return
        if route.state in STARTING:
            if html and scope["method"] == "GET":
                await starting_page(send, route)
                return
            route = await self.wait_ready(sid)
            if route is None or route.state != "ready":
                detail = route.error if route and route.error else "the preview is not ready"
                await self.refuse(scope, send, 503, "not_ready", detail, html)
                return
        if route.state != "ready" or not route.address:
            detail = route.error or f"the preview is {route.state}"
            await self.refuse(scope, send, 503, "not_ready", detail, html)
            return
        self.touch(sid)
        # The dev server sees the preview's canonical host, the one its allowed-hosts
        # were configured with at prepare, never the client's spelling of it.
        host = public_host(self.settings, sid)
        if is_ws:
            await self.websocket(sid, route, scope, receive, send, host)
        else:
            began = time.monotonic()
            try:
                status = await proxy_http(
                    scope,
                    receive,
                    send,
                    self.pool,
                    route.address,
                    host.encode(),
                    cookie_name(sid).encode(),
                    self.settings.preview_scheme,
                )
            except asyncio.CancelledError:
                if self.relays.closing:  # cut at the drain deadline
                    await self.cut_short(scope, send, html)
                raise
            instruments.proxied(status, time.monotonic() - began)  # observability hook

    async def websocket(
        self, sid: str, route: Route, scope: Scope, receive: Receive, send: Send, host: str
    ) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        if self._ws_per_client.get(client, 0) >= self.settings.ws_max_per_client:
            instruments.RATE_LIMITED.labels("websockets_per_client").inc()  # observability hook
            await send({"type": "websocket.close", "code": 1008, "reason": "too many WebSockets"})
            return
        self._ws_per_client[client] = self._ws_per_client.get(client, 0) + 1
        account = self.ws_budgets.account(client)
        instruments.WEBSOCKETS.inc()  # observability hook (and the decrement below)
        instruments.WEBSOCKETS_OPEN.inc()
        try:
            await proxy_ws(
                scope,
                receive,
                send,
                route.address,
                host,
                cookie_name(sid).encode(),
                self.limits,
                self.relays,
                account,
                on_activity=lambda: self.touch(sid),
            )
        finally:
            account.close()
            instruments.WEBSOCKETS_OPEN.dec()
            left = self._ws_per_client[client] - 1
            if left:
                self._ws_per_client[client] = left
            else:
                del self._ws_per_client[client]

    # --- auth ---------------------------------------------------------------------------

    @staticmethod
    def query_token(scope: Scope) -> str | None:
        query: bytes = scope.get("query_string", b"")
        if b"preview_token=" not in query:
            return None
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name == "preview_token":
                return value
        return None

    async def login(
        self, sid: str, route: Route, token: str, scope: Scope, send: Send, html: bool
    ) -> None:
        """Trade the URL's token for a cookie on this host, and drop the token from the URL."""
        user = await self.check_token(token, sid)
        if user is None or user != route.user:
            await self.too_many_failures(scope, failed=True)
            log.info(
                "preview login refused sid=%s client=%s", sid, (scope.get("client") or ("?",))[0]
            )
            await self.refuse(
                scope,
                send,
                401,
                "invalid_token",
                "the preview link has expired or is not yours: open it again",
                html,
            )
            return
        value = sign(
            self.settings.signing_secret, COOKIE_PURPOSE, sid, user, self.settings.cookie_ttl
        )
        cookie = f"{cookie_name(sid)}={value}; Path=/; Max-Age={self.settings.cookie_ttl}; HttpOnly"
        if self.secure_context(scope):
            # What an iframe needs: sent in third-party context, partitioned by top site.
            cookie += "; Secure; SameSite=None; Partitioned"
        else:
            # Browsers drop SameSite=None without Secure; on plain http (not localhost) the
            # preview then works top-level but not inside a cross-site iframe.
            cookie += "; SameSite=Lax"
        query = [
            (k, v)
            for k, v in parse_qsl(
                scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            )
            if k != "preview_token"
        ]
        location = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        if query:
            location += "?" + urlencode(query)
        await send_body(
            send,
            302,
            b"",
            b"text/plain",
            [(b"location", location.encode()), (b"set-cookie", cookie.encode())],
        )

    def secure_context(self, scope: Scope) -> bool:
        """https, or a *.localhost host, which browsers treat as secure even over http."""
        if self.settings.preview_scheme == "https" or scope.get("scheme") == "https":
            return True
        host = self.public_host(scope).lower().rsplit(":", 1)[0]
        return host == "localhost" or host.endswith(".localhost")

    def cookie_user(self, sid: str, scope: Scope) -> str | None:
        prefix = cookie_name(sid) + "="
        for name, value in scope["headers"]:
            if name != b"cookie":
                continue
            assert isinstance(value, bytes)
            for part in value.decode("latin-1").split(";"):
                part = part.strip()
                if part.startswith(prefix):
                    return verify(
                        self.settings.signing_secret, COOKIE_PURPOSE, sid, part[len(prefix) :]
                    )
        return None

    def origin_ok(self, scope: Scope) -> bool:
        """A preview's WebSockets come from its own pages (the HMR client), nowhere else."""
        raw = header(scope, b"origin")
        if raw is None:
            return True  # non-browser clients send no Origin; the cookie still had to match
        origin = raw.decode("latin-1").lower().split("://", 1)[-1]
        return origin == self.public_host(scope).lower()

    def public_host(self, scope: Scope) -> str:
        return (header(scope, b"host") or b"").decode("latin-1")

    @staticmethod
    async def cut_short(scope: Scope, send: Send, html: bool) -> None:
        """A 503 (retry elsewhere) rather than the server's bare 500, unless the response
        had already begun (then the client sees it end early)."""
        retry = [(b"retry-after", b"1"), (b"connection", b"close")]
        with contextlib.suppress(Exception):
            await error_page(
                scope, send, 503, "unavailable", "the gateway is restarting", html, retry
            )

    async def refuse(
        self, scope: Scope, send: Send, status: int, error: str, detail: str, html: bool
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
        extra = [(b"retry-after", str(self.auth_window).encode())] if status == 429 else None
        await error_page(scope, send, status, error, detail, html, extra)

    async def too_many_failures(self, scope: Scope, failed: bool) -> bool:
        """Failed authentications per client address have their own, stricter limit; a
        client over it is refused before its token is even checked."""
        client = (scope.get("client") or ("?",))[0]
        key = keys.auth_failures(client)
        try:
            if failed:
                async with self.state.redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, self.auth_window, nx=True)
                    count, _ = await pipe.execute()
            else:
                count = int(await self.state.redis.get(key) or 0)
        except (RedisError, OSError):
            return False  # the limit is a guard, not a dependency
        # Checking: refuse once the limit is used up. Counting: this failure is allowed
        # through as a 401 while it is within the limit.
        return int(count) > self.auth_limit if failed else int(count) >= self.auth_limit

    # --- readiness and activity -------------------------------------------------------------

    async def wait_ready(self, sid: str) -> Route | None:
        task = self._waits.get(sid)
        if task is None:
            task = asyncio.create_task(self._poll_ready(sid), name=f"wait ready {sid}")
            self._waits[sid] = task
            task.add_done_callback(lambda _: self._waits.pop(sid, None))
        return await asyncio.shield(task)

    async def _poll_ready(self, sid: str) -> Route | None:
        assert self.routes is not None
        deadline = time.monotonic() + self.settings.hold_timeout
        delay = 0.1
        while True:
            self.routes.invalidate(sid)
            route = await self.routes.get(sid)
            if route is None or route.state not in STARTING or time.monotonic() > deadline:
                return route
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def touch(self, sid: str) -> None:
        """Mark the preview used (for idle reaping), at most once per ACTIVITY_EVERY."""
        now = time.monotonic()
        if now - self._activity.get(sid, 0.0) < ACTIVITY_EVERY:
            return
        self._activity[sid] = now
        task = asyncio.create_task(self._write_activity(sid))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_activity(self, sid: str) -> None:
        try:
            await self.state.redis.set(keys.activity(sid), repr(time.time()), ex=86400)
        except (RedisError, OSError) as exc:
            log.debug("activity not recorded sid=%s: %s", sid, exc)
