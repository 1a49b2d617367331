"""The "starting" page a browser sees until the dev server is ready, and its status feed.

The page asks ``/__preview/status`` on its own host (same cookie) and reloads itself
once the preview is ready, so the iframe never flashes a 502. The call is a bounded
long-poll: the page sends back the ``version`` of what it shows (``?seen=``) and, while
that is still current, the answer is held until the preview's next event or STATUS_HOLD
(one follower per preview however many pages wait: ``ReadyWaits.news``), so the page
reloads at ``ready``, not at its next poll up to 0.8 s later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import time
from typing import Any, Protocol
from urllib.parse import parse_qs

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.asgi_types import Scope, Send
from gateway.background import Background
from gateway.proxy.pages import page, send_body
from gateway.proxy.routes import Route, RouteCache
from shared import keys
from shared.messages import Event, MessageError
from shared.states import STARTING_STATES

STATUS_HOLD = 10.0  # seconds a status call is held at most while nothing changes
_SEEN_MAX = 32  # characters of a ``seen`` version (longer: not one of ours, not held)

# Asked again at once after a change (the server holds the next call), else no sooner than
# 0.8 s after the last ask: a gateway that does not hold (or an error) is polled as before.
_SCRIPT = """
<script>
(function poll(seen){
  var began = Date.now();
  fetch('/__preview/status?seen=' + encodeURIComponent(seen),
        {credentials:'include',cache:'no-store'}).then(function(r){
    return r.json();
  }).then(function(s){
    if (s.state === 'ready') { location.reload(); return; }
    var p = s.progress || {};
    document.getElementById('msg').textContent = s.error ? s.error : (p.message || s.state);
    document.getElementById('bar').style.width = (p.percent || 0) + '%';
    if (s.state === 'failed') { document.getElementById('title').textContent =
      'The preview could not start'; return; }
    var wait = s.version !== seen ? 100 : Math.max(0, 800 - (Date.now() - began));
    setTimeout(function(){ poll(s.version || ''); }, wait);
  }).catch(function(){ setTimeout(function(){ poll(''); }, 2000); });
})('');
</script>
"""


async def starting_page(send: Send, route: Route) -> None:
    body = page(
        "Starting preview…",
        '<h1 id="title">Starting your preview…</h1>'
        '<div class="bar"><i id="bar" style="width:0%"></i></div>'
        f'<p id="msg">{html.escape(route.state)}</p>'
        "<noscript>This page reloads when the preview is ready.</noscript>" + _SCRIPT,
        refresh=None,
    )
    await send_body(send, 200, body, b"text/html; charset=utf-8", [(b"retry-after", b"1")])


async def last_progress(redis: Redis, route: Route) -> dict[str, object] | None:
    """The newest progress event of this session, if any."""
    if not route.container:
        return None
    entries = await redis.xrevrange(keys.events(route.container), count=50) or []
    for _, fields in entries:
        try:
            event = Event.from_fields(fields or {})
        except MessageError:
            continue
        if event.session_id == route.sid and event.type == "progress":
            return event.data
    return None


async def _status(redis: Redis, route: Route) -> dict[str, object]:
    try:
        progress = await last_progress(redis, route)
    except (RedisError, OSError):
        progress = None
    status: dict[str, object] = {
        "state": route.state,
        "error": route.error or None,
        "progress": progress,
    }
    shown = json.dumps(status, sort_keys=True).encode()
    status["version"] = hashlib.blake2s(shown, digest_size=8).hexdigest()
    return status


def _seen(scope: Scope) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    seen = query.get("seen", [""])[0]
    return seen if 0 < len(seen) <= _SEEN_MAX else None


async def status_json(
    redis: Redis, waits: ReadyWaits, route: Route, scope: Scope, send: Send
) -> None:
    """The starting page's feed: answered at once when it differs from what the page
    shows (``seen``), else held until the preview's next event or STATUS_HOLD."""
    route = await waits.current(route)
    status = await _status(redis, route)
    if status["version"] == _seen(scope) and route.state in STARTING_STATES:
        route = await waits.news(route, STATUS_HOLD)
        status = await _status(redis, route)
    await send_body(send, 200, json.dumps(status).encode(), b"application/json", [])


class Follower(Protocol):
    """The control plane's hook (gateway/sessions/following.py, which this package does
    not import): returns once the preview left its starting states, or at ``timeout``."""

    async def until_started(self, sid: str, timeout: float) -> None: ...

    async def until_news(self, sid: str, timeout: float) -> None: ...


class ReadyWaits:
    """Requests that wait for a starting preview: one waiter per preview (up to
    PREVIEW_HOLD_TIMEOUT), however many requests wait on it. It follows the preview's
    events through the app's ``follower`` hook, so the first byte comes as soon as the dev
    server is ready; without the hook (or when it gives up early) it polls the record with
    a backoff."""

    def __init__(
        self, routes: RouteCache, background: Background, hold_timeout: float, state: Any = None
    ) -> None:
        self._routes = routes
        self._background = background
        self._hold_timeout = hold_timeout
        self._state = state
        self._waits: dict[str, asyncio.Task[Route | None]] = {}
        self._news: dict[str, asyncio.Task[Route | None]] = {}

    async def wait(self, sid: str) -> Route | None:
        task = self._waits.get(sid)
        if task is None:
            task = self._background.spawn(self._poll(sid), f"wait ready {sid}")
            self._waits[sid] = task
            task.add_done_callback(lambda _: self._waits.pop(sid, None))
        return await asyncio.shield(task)

    async def current(self, route: Route) -> Route:
        """The route with the preview's events folded just now (the starting page's status
        feed: it reloads at ``ready``, not a tracker pass later)."""
        follower: Follower | None = getattr(self._state, "follower", None)
        if route.state not in STARTING_STATES or follower is None:
            return route
        with contextlib.suppress(RedisError, OSError):
            await follower.until_started(route.sid, 0)
            self._routes.invalidate(route.sid)
            return await self._routes.get(route.sid) or route
        return route

    async def news(self, route: Route, window: float) -> Route:
        """The route at the preview's next event, once it left its starting states, or
        after ``window``: one follower per preview shared by every call meanwhile (a page
        left open costs a held request, not a Redis reader of its own). Without the hook:
        the route as it is, at once (the page then polls)."""
        follower: Follower | None = getattr(self._state, "follower", None)
        if follower is None:
            return route
        sid = route.sid
        task = self._news.get(sid)
        if task is None:
            task = self._background.spawn(self._next(follower, sid, window), f"news {sid}")
            self._news[sid] = task
            task.add_done_callback(lambda _: self._news.pop(sid, None))
        # wait(), not shield(): a shutdown that cancels the follower answers the page.
        await asyncio.wait({task}, timeout=window + 1.0)
        if task.done() and not task.cancelled() and task.exception() is None:
            return task.result() or route
        return route

    async def _next(self, follower: Follower, sid: str, window: float) -> Route | None:
        with contextlib.suppress(RedisError, OSError):
            await follower.until_news(sid, window)
            self._routes.invalidate(sid)
            return await self._routes.get(sid)
        return None

    async def _poll(self, sid: str) -> Route | None:
        deadline = time.monotonic() + self._hold_timeout
        delay = 0.1
        while True:
            self._routes.invalidate(sid)
            route = await self._routes.get(sid)
            remaining = deadline - time.monotonic()
            if route is None or route.state not in STARTING_STATES or remaining <= 0:
                return route
            follower: Follower | None = getattr(self._state, "follower", None)
            if follower is not None:
                with contextlib.suppress(RedisError, OSError):  # then the polling below
                    await follower.until_started(sid, remaining)
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
