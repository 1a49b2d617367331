"""Share viewers on a preview's host: opening a link, the viewer's cookie, the notice, and
ending every viewer's access when the share is revoked, expires or the preview stops.

- ``?preview_share={id}`` (a ``public`` link) or ``?share_token=...`` (a signed-in viewer's
  single-use URL) is traded for a host-only cookie ``pv_s_{id}`` that names the share:
  each request re-checks that the share still exists, is unexpired and is for this host,
  so a revocation (published, see ``gateway/proxy/shares.py``) or an expiry refuses the
  next request on every replica, and open WebSockets of the share are closed (1008).
- A ``public`` link shows a one-page notice to a browser navigation once per browser (a
  ``pv_n_`` mark on the host), never to subresources, scripts or WebSockets, which would
  break on a page they cannot read.
- Opening links is limited per client address (PREVIEW_RATE_LIMIT_SHARE_VIEWS): 429.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from redis.asyncio import Redis

from gateway.asgi_types import Message, Scope, Send, header
from gateway.proxy import cookies, shares
from gateway.proxy.pages import page
from gateway.proxy.preview_auth import (
    FailureLimits,
    PreviewAuth,
    client_address,
    same_host_location,
)
from gateway.proxy.preview_tokens import spend
from gateway.proxy.proxy_http import wants_html
from gateway.proxy.refusals import refuse
from gateway.proxy.vhosts import Destination
from shared import keys
from shared.settings import Settings

log = logging.getLogger(__name__)

VIEWER = "pv_s_"
NOTICE_SEEN = "pv_n_"
NOTICE_TTL = 365 * 86400
POLICY_VIOLATION = 1008
GOING_AWAY = 1001
GONE = "this share link does not exist, has expired or was revoked"
SIGN_IN = "this share link is for signed-in viewers: open it from the app it was shared in"
ENDED = "the share link was revoked or has expired"
# One more view in the preview's record (for its stop record and the dashboard), never
# re-creating a record that is gone. KEYS: session.
_COUNT_VIEW = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'share_views', 1) end
"""


@dataclass
class Opened:
    """The outcome of opening a link: a refusal (`status` >= 400) or a cookie."""

    status: int
    error: str = ""
    detail: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    location: str = ""  # where the viewer goes next (this host, without the link)
    retry: int = 0  # a 429's Retry-After
    notice: bool = False


def link_param(scope: Scope) -> tuple[str, str] | None:
    """The share link's parameter in the query (`preview_share` or `share_token`), if any."""
    query: bytes = scope.get("query_string", b"")
    if b"preview_share=" not in query and b"share_token=" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in (shares.LINK_PARAM, shares.TOKEN_PARAM):
            return name, value
    return None


def is_navigation(scope: Scope) -> bool:
    """A browser loading a page (top-level or in a frame): Fetch Metadata when the browser
    sends it, else an HTML-accepting GET. Scripts, images, fetch() and WebSockets are not."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return False
    mode = header(scope, b"sec-fetch-mode")
    if mode is not None:
        dest = header(scope, b"sec-fetch-dest")
        return mode == b"navigate" and dest in (None, b"document", b"iframe", b"frame")
    return wants_html(scope)


def notice_page(location: str) -> bytes:
    body = (
        "<h1>A live preview of someone's project</h1>"
        "<p>Someone shared a preview of the project they are working on: what follows is "
        "their code, running now, not a site of ours. Do not enter passwords or other "
        "personal details you would not give to whoever sent you this link.</p>"
        f'<p><a id="continue" href="{html.escape(location)}">Continue to the preview</a></p>'
    )
    return page("A shared preview", body)


class ShareAccess:
    def __init__(self, settings: Settings, auth: PreviewAuth) -> None:
        self.settings = settings
        self.auth = auth
        self.cache: shares.ShareCache | None = None
        # share id -> open relays of its viewers (task -> preview id)
        self.sockets: dict[str, dict[asyncio.Task[Any], str]] = {}

    def records(self, redis: Redis) -> shares.ShareCache:
        if self.cache is None:
            self.cache = shares.ShareCache(redis)
        return self.cache

    # --- opening a link -------------------------------------------------------------

    async def open(
        self,
        redis: Redis,
        limits: FailureLimits,
        where: Destination,
        owner: str,
        param: str,
        value: str,
        scope: Scope,
    ) -> Opened:
        """Check a link (RedisError when the store does not answer) and make its cookie
        for this host (the preview's main one, or one of its ports)."""
        sid, label = where.sid, where.label
        over = await limits.over("share_views", keys.share_views(client_address(scope)))
        if over is not None:
            detail = f"too many share links opened; retry in {over[1]} s"
            return Opened(429, "rate_limited", detail, retry=over[1])
        viewer = ""
        nonce = ""
        if param == shares.TOKEN_PARAM:
            parts = shares.open_token_parts(self.settings, value)
            if parts is None:
                return Opened(401, "invalid_token", "this share URL is invalid or has expired")
            share_id, viewer, nonce = parts
        else:
            share_id = value
        share = await self.records(redis).get(share_id)
        if share is None or not share.admits(sid, owner, where.port):
            return Opened(404, "not_found", GONE)
        if param == shares.LINK_PARAM and share.access != "public":
            return Opened(401, "sign_in_required", SIGN_IN)
        if nonce and not await spend(redis, self.settings, nonce):
            return Opened(401, "invalid_token", "this share URL was used already")
        await redis.eval(_COUNT_VIEW, 1, keys.session(sid))
        log.info(
            "share opened share=%s sid=%s access=%s viewer=%s",
            share.id[:6],
            sid,
            share.access,
            viewer or "-",
        )
        https = self.auth.https(scope)
        headers = [(b"set-cookie", self.viewer_cookie(label, share, scope).encode())]
        notice = (
            share.access == "public"
            and is_navigation(scope)
            and not cookies.candidates(scope["headers"], label, NOTICE_SEEN)
        )
        if notice:
            seen = cookies.cookie_name(label, https, NOTICE_SEEN)
            mark = self.auth.set_cookie(seen, "1", NOTICE_TTL, scope)
            headers.append((b"set-cookie", mark.encode()))
            headers.append((b"referrer-policy", b"no-referrer"))  # the link is in the URL
        location = same_host_location(scope)
        if not notice:
            headers.append((b"location", location.encode("latin-1")))
        return Opened(200 if notice else 302, headers=headers, location=location, notice=notice)

    def viewer_cookie(self, label: str, share: shares.Share, scope: Scope) -> str:
        """The Set-Cookie value that makes this browser a viewer of `share` on one host."""
        value, ttl = shares.cookie_value(self.settings, label, share)
        name = cookies.cookie_name(label, self.auth.https(scope), VIEWER)
        return self.auth.set_cookie(name, value, ttl, scope)

    # --- every later request ---------------------------------------------------------

    async def viewer(
        self, redis: Redis, where: Destination, owner: str, scope: Scope
    ) -> shares.Share | None:
        """The share this request's viewer cookie names, while it admits this host."""
        values = cookies.candidates(scope["headers"], where.label, VIEWER)
        if not values:
            return None
        records = self.records(redis)
        for value in values:
            share_id = shares.cookie_share_id(self.settings, where.label, value)
            if share_id is None:
                continue
            share = await records.get(share_id)
            if share is not None and share.admits(where.sid, owner, where.port):
                return share
        return None

    # --- ending access ------------------------------------------------------------------

    async def viewer_http(
        self,
        share: shares.Share,
        sid: str,
        scope: Scope,
        send: Send,
        relay: Callable[[Send], Coroutine[Any, Any, int]],
    ) -> int:
        """A share viewer's HTTP request, in a task the share's revocation or expiry, or
        the preview's end, cancels as it does WebSockets: a response already streaming
        (SSE, chunked) stops there (its connection or HTTP/2 stream is closed before the
        body's end); one not begun yet is refused."""
        begun = 0

        async def tracked(message: Message) -> None:
            nonlocal begun
            if message["type"] == "http.response.start":
                begun = int(message["status"])
            await send(message)

        task = asyncio.create_task(relay(tracked), name=f"share http {sid}")
        self.watch(share, sid, task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we were cancelled ourselves (the relay was with us)
            if not begun:
                await refuse(scope, send, 401, "unauthorized", ENDED, wants_html(scope))
                return 401
            return begun

    def watch(self, share: shares.Share, sid: str, task: asyncio.Task[Any]) -> None:
        """End this viewer's WebSocket or streaming response when the share expires
        (revocation and the preview's end come through `revoked` and `preview_ended`)."""
        relays = self.sockets.setdefault(share.id, {})
        relays[task] = sid
        timer = asyncio.get_running_loop().call_later(
            max(0.0, share.expires_at - time.time()),
            task.cancel,
            (POLICY_VIOLATION, "the share link has expired"),
        )

        def done(_: object) -> None:
            timer.cancel()
            relays.pop(task, None)
            if not relays:
                self.sockets.pop(share.id, None)

        task.add_done_callback(done)

    def revoked(self, share_id: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(share_id)
        for task in list(self.sockets.get(share_id, {})):
            task.cancel((POLICY_VIOLATION, "the share link was revoked"))

    def watching(self, sid: str) -> bool:
        return any(sid in relays.values() for relays in self.sockets.values())

    def preview_ended(self, sid: str) -> None:
        for relays in list(self.sockets.values()):
            for task, of in list(relays.items()):
                if of == sid:
                    task.cancel((GOING_AWAY, "the preview stopped"))
