"""Host-based routing: ``{id}.{PREVIEW_DOMAIN}`` is that preview, the API hosts the API
(gateway/proxy/vhosts.py), nothing else.

The client address is resolved first (gateway/proxy/clients.py: trusted proxies), for everything
downstream. For a preview host: find its route (cached), authenticate (the single-use
`preview_token` query parameter once, then a per-host cookie; gateway/proxy/cookies.py), then
proxy HTTP or WebSocket to the dev server.
While the preview is still starting, a browser navigation gets a self-refreshing page and
other requests wait (one Redis poller per preview, however many requests wait on it).
A request for a sleeping preview wakes it and is held meanwhile (one wake per preview and
gateway, however many requests wait on it; gateway/proxy/waking.py). A visit to a hibernated
one resumes it through the app's ``resumer`` hook (the control plane's, which this package
does not import) and is then answered like one to a starting preview.

The request's decision path is here; refusals (gateway/proxy/refusals.py), activity marks
(gateway/proxy/activity.py), readiness waits (gateway/proxy/starting.py) and WebSocket
relays with their per-client caps (gateway/proxy/sockets.py) are not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.datastructures import State

from gateway.asgi_types import Receive, Scope, Send
from gateway.background import Background
from gateway.observability import instruments
from gateway.proxy import cookies
from gateway.proxy.activity import Activity
from gateway.proxy.clients import ClientResolver
from gateway.proxy.pages import send_body
from gateway.proxy.port_grants import HOP_PATH, Grantee, PortGrants
from gateway.proxy.ports import PortTable, preflight_headers, sibling_preflight
from gateway.proxy.preview_auth import (
    EXPIRED,
    PreviewAuth,
    client_address,
    query_token,
    same_origin,
)
from gateway.proxy.proxy_http import proxy_http, wants_html
from gateway.proxy.refusals import cut_short, refuse, refuse_resume
from gateway.proxy.relay_dial import RelayDialer
from gateway.proxy.routes import Route, RouteCache
from gateway.proxy.share_access import (
    ENDED,
    VIEWER,
    ShareAccess,
    is_navigation,
    link_param,
    notice_page,
)
from gateway.proxy.shares import Share
from gateway.proxy.sockets import PreviewSockets
from gateway.proxy.starting import ReadyWaits, starting_page, status_json
from gateway.proxy.upstream import UpstreamPool
from gateway.proxy.vhosts import Destination, HostRules, public_host
from gateway.proxy.waking import Waking
from shared import keys
from shared.settings import Settings
from shared.states import STARTING_STATES

log = logging.getLogger(__name__)


WAKE_ATTEMPTS = 3
# Seconds the last activity writes may take at shutdown; readiness waits are then cancelled.
SHUTDOWN_DEADLINE = 2.0
STATUS_PATH = "/__preview/status"
TOO_MANY_FAILURES = "too many failed attempts; retry in {retry} s"


class PreviewRouter:
    """The ASGI entry point: wraps the API app and serves preview hosts itself."""

    def __init__(self, api: Starlette, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self.hosts = HostRules(settings)
        self.clients = ClientResolver(settings.trusted_proxies)
        self.auth = PreviewAuth(settings)
        self.shares = ShareAccess(settings, self.auth)
        self.grants = PortGrants(settings, self.auth, self.shares)
        self.pool = UpstreamPool(
            head_timeout=settings.upstream_head_timeout,
            dialer=RelayDialer(settings.signing_secret),
        )
        self.routes: RouteCache | None = None
        self.waking: Waking
        self.ready: ReadyWaits
        self.ports: PortTable | None = None
        self.background = Background()  # readiness waits, activity writes, route listener
        self.activity = Activity(lambda: self.state.redis, self.background)
        self.sockets = PreviewSockets(settings, self.activity, self.shares, self.pool.dialer)
        self.relays = self.sockets.relays

    # --- dispatch -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.api(scope, self._lifespan_receive(receive), send)
            return
        self.clients.resolve(scope)
        where = self.hosts.classify(scope)
        if where.kind == "api":
            await self.api(scope, receive, send)
            return
        html = scope["type"] == "http" and wants_html(scope)
        if where.kind == "refused":
            detail = "this host name is not served here"
            await refuse(scope, send, 421, "misdirected_request", detail, html)
            return
        if not where.sid:
            await refuse(scope, send, 404, "not_found", "no such preview", html)
            return
        if self.routes is None:
            self.routes = RouteCache(self.state.redis, self.changed)
            self.routes.start(self.background)
            self.waking = Waking(self.settings, self.state, self.routes, self.background)
            self.ready = ReadyWaits(
                self.routes, self.background, self.settings.hold_timeout, self.state
            )
            self.ports = PortTable(self.state.redis)
        await self.serve(where, scope, receive, send)

    @property
    def state(self) -> State:
        return self.api.state

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
        await self.background.close(SHUTDOWN_DEADLINE)  # the route listener first
        self.pool.close()

    # --- one preview request ------------------------------------------------------------

    async def serve(self, where: Destination, scope: Scope, receive: Receive, send: Send) -> None:
        """One request to a preview's host: its main one, or `{id}-{port}` for another
        port, each with cookies and tokens of its own (bound to the host's label)."""
        sid, label = where.sid, where.label
        is_ws = scope["type"] == "websocket"
        html = not is_ws and wants_html(scope)
        assert self.routes is not None
        try:
            route = await self.routes.get(sid)
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            await refuse(scope, send, 503, "unavailable", "state store unreachable", html)
            return
        if route is None:
            await refuse(scope, send, 404, "not_found", "no such preview", html)
            return
        if not is_ws and sibling_preflight(self.hosts, where, scope):
            await send_body(send, 204, b"", b"text/plain", preflight_headers(scope))
            return
        if not is_ws and scope["path"] == HOP_PATH and where.port is not None:
            await self.port_hop(where, route, None, scope, send, html)  # the token's trade
            return
        token = query_token(scope)
        if token is not None and not is_ws:
            await self.login(label, route, token, scope, send, html)
            return
        link = link_param(scope)
        if link is not None and not is_ws:
            await self.open_share(where, route, link, scope, send, html)
            return
        viewer: Share | None = None
        if not self.auth.cookie_ok(label, route.user, scope):
            try:
                viewer = await self.shares.viewer(self.state.redis, where, route.user, scope)
            except (RedisError, OSError):
                instruments.REDIS_ERRORS.inc()  # observability hook
                await refuse(scope, send, 503, "unavailable", "state store unreachable", html)
                return
            if viewer is None and where.port is not None and is_navigation(scope):
                # The main host's cookie may stand for this one (gateway/proxy/port_grants.py).
                await send_body(send, 302, b"", b"text/plain", self.grants.to_main(where, scope))
                return
            if viewer is None:
                detail = "open this preview from its link (the token is missing or expired)"
                if cookies.candidates(scope["headers"], label, VIEWER):
                    detail = ENDED
                await self.fail(sid, scope, send, 401, "unauthorized", detail, html)
                return
        if is_ws and not same_origin(scope):
            await refuse(scope, send, 403, "forbidden", "cross-origin WebSocket", False)
            return
        grantee = Grantee(route.user, viewer)
        if scope["path"] == HOP_PATH and not is_ws:
            await self.port_hop(where, route, grantee, scope, send, html)
            return
        if scope["path"] == STATUS_PATH and not is_ws:
            await status_json(self.state.redis, self.ready, route, scope, send)
            return
        for _ in range(WAKE_ATTEMPTS):  # put to sleep again meanwhile: wake it again
            if route.state != "sleeping":
                break
            woken = await self.waking.wake(sid, route)
            if isinstance(woken, str):
                await refuse(scope, send, 503, "not_ready", woken, html)
                return
            route = woken
        if route.state == "hibernated":
            resumed = await self.waking.resume(sid)
            if resumed is not None:
                await refuse_resume(scope, send, resumed, html)
                return
            self.routes.invalidate(sid)
            again = await self.routes.get(sid)
            if again is None:
                await refuse(scope, send, 404, "not_found", "no such preview", html)
                return
            route = again
        if route.state in STARTING_STATES:
            if html and scope["method"] == "GET":
                await starting_page(send, route)
                return
            route = await self.ready.wait(sid)
            if route is None or route.state != "ready":
                detail = route.error if route and route.error else "the preview is not ready"
                await refuse(scope, send, 503, "not_ready", detail, html)
                return
        if route.state != "ready" or not route.address:
            detail = route.error or f"the preview is {route.state}"
            await refuse(scope, send, 503, "not_ready", detail, html)
            return
        if where.port is None and not is_ws:
            hop = await self.grants.first_hop(self.state.redis, self.ports, route, grantee, scope)
            if hop is not None:
                await send_body(send, 302, b"", b"text/plain", hop)
                return
        address = route.address
        if where.port is not None:
            found = await self.port_address(route, where.port, scope, send, html)
            if found is None:
                return
            address = found
        self.activity.touch(sid, request=True)
        # The dev server sees the preview's canonical host, the one its allowed-hosts
        # were configured with at prepare, never the client's spelling of it.
        host = public_host(self.settings, label)
        if is_ws:
            keep_idle = lambda: self.waking.sleeping(sid)  # noqa: E731
            socket = self.sockets.relay(sid, address, host, keep_idle, scope, receive, send)
            if viewer is not None:
                await self.sockets.watched(viewer, sid, socket, send)
            else:
                await socket
        else:
            began = time.monotonic()

            def relay(out: Send) -> Coroutine[Any, Any, int]:
                return proxy_http(
                    scope,
                    receive,
                    out,
                    self.pool,
                    address,
                    host.encode(),
                    self.settings.preview_scheme,
                    self.settings.compress,
                )

            try:
                if viewer is not None:
                    status = await self.shares.viewer_http(viewer, sid, scope, send, relay)
                else:
                    status = await relay(send)
            except asyncio.CancelledError:
                if self.relays.closing:  # cut at the drain deadline
                    await cut_short(scope, send, html)
                raise
            instruments.proxied(status, time.monotonic() - began)  # observability hook

    async def port_address(
        self, route: Route, port: int, scope: Scope, send: Send, html: bool
    ) -> str | None:
        """Where an open port of the route's preview is; None after a 404 (not open, or
        not this preview's) or a 503."""
        assert self.ports is not None
        try:
            address = await self.ports.upstream(route, port)
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            await refuse(scope, send, 503, "unavailable", "state store unreachable", html)
            return None
        if address is None:
            detail = f"nothing of this preview listens on port {port}"
            await refuse(scope, send, 404, "not_found", detail, html)
        return address

    async def port_hop(
        self,
        where: Destination,
        route: Route,
        grantee: Grantee | None,
        scope: Scope,
        send: Send,
        html: bool,
    ) -> None:
        """`/__preview/hop`: on a port host, trade a token for its cookie; on the main
        host, mint one for an authenticated browser (gateway/proxy/port_grants.py)."""
        assert self.ports is not None
        hop = await self.grants.hop(self.state.redis, self.ports, where, route, grantee, scope)
        if hop.status == 302:
            await send_body(send, 302, b"", b"text/plain", hop.headers)
        elif hop.status == 401:
            await self.fail(where.sid, scope, send, 401, hop.error, hop.detail, html)
        else:
            await refuse(scope, send, hop.status, hop.error, hop.detail, html)

    def changed(self, name: str) -> None:
        """A published change (gateway/proxy/routes.py): a revoked share ends its viewers'
        access now; a preview that stopped ends its viewers' WebSockets."""
        if not name:
            if self.shares.cache is not None:
                self.shares.cache.clear()
        elif name.startswith(keys.SHARE_CHANGE_PREFIX):
            self.shares.revoked(name[len(keys.SHARE_CHANGE_PREFIX) :])
        elif self.shares.watching(name):
            self.background.spawn(self._check_viewers(name), f"share viewers {name}")

    async def _check_viewers(self, sid: str) -> None:
        assert self.routes is not None
        try:
            route = await self.routes.get(sid)
        except (RedisError, OSError):
            return  # cached routes keep serving through an outage; so do their viewers
        if route is None or not route.live:
            self.shares.preview_ended(sid)

    # --- auth ---------------------------------------------------------------------------

    async def login(
        self, sid: str, route: Route, token: str, scope: Scope, send: Send, html: bool
    ) -> None:
        """Trade the URL's single-use token for a cookie on this host, and drop the token
        from the URL (redirecting to this host only)."""
        try:
            user, detail = await self.auth.token_user(self.state.redis, sid, token)
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            await refuse(scope, send, 503, "unavailable", "state store unreachable", html)
            return
        if user is not None and user == route.user:
            headers = self.auth.redirect_headers(sid, user, scope)
        elif self.auth.cookie_ok(sid, route.user, scope):
            # Signed in already (a reloaded link): the spent token adds nothing, nor harm.
            headers = self.auth.redirect_headers(sid, None, scope)
        else:
            log.info("preview login refused sid=%s client=%s", sid, client_address(scope))
            await self.fail(sid, scope, send, 401, "invalid_token", detail or EXPIRED, html)
            return
        await send_body(send, 302, b"", b"text/plain", headers)

    async def open_share(
        self,
        where: Destination,
        route: Route,
        link: tuple[str, str],
        scope: Scope,
        send: Send,
        html: bool,
    ) -> None:
        """Trade a share link (or a signed-in viewer's single-use URL) for a viewer's
        cookie on this host; a public link's first navigation in a browser sees the notice."""
        try:
            opened = await self.shares.open(
                self.state.redis, self.state.rate_limits, where, route.user, *link, scope
            )
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            await refuse(scope, send, 503, "unavailable", "state store unreachable", html)
            return
        if opened.status == 429:
            await refuse(scope, send, 429, opened.error, opened.detail, html, opened.retry)
        elif opened.status >= 400:
            await self.fail(
                where.sid, scope, send, opened.status, opened.error, opened.detail, html
            )
        elif opened.notice:
            body = notice_page(opened.location)
            await send_body(send, 200, body, b"text/html; charset=utf-8", opened.headers)
        else:
            await send_body(send, 302, b"", b"text/plain", opened.headers)

    async def fail(
        self, sid: str, scope: Scope, send: Send, status: int, error: str, detail: str, html: bool
    ) -> None:
        """Refuse a failed authentication: `status` while this client is within its limit
        on this preview, 429 past it (gateway/proxy/preview_auth.py)."""
        retry = await self.auth.over_limit(self.state.rate_limits, sid, scope)
        if retry is not None:
            status, error, detail = 429, "rate_limited", TOO_MANY_FAILURES.format(retry=retry)
        await refuse(scope, send, status, error, detail, html, retry or 0)

    # --- readiness and activity -------------------------------------------------------------
