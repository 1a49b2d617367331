"""The "starting" page a browser sees until the dev server is ready, and its status feed.

The page polls ``/__preview/status`` on its own host (same cookie) and reloads itself
once the preview is ready, so the iframe never flashes a 502.
"""

from __future__ import annotations

import html
import json

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.asgi_types import Send
from gateway.proxy.pages import page, send_body
from gateway.proxy.routes import Route
from shared import keys
from shared.messages import Event, MessageError

_SCRIPT = """
<script>
(function poll(){
  fetch('/__preview/status',{credentials:'include',cache:'no-store'}).then(function(r){
    return r.json();
  }).then(function(s){
    if (s.state === 'ready') { location.reload(); return; }
    var p = s.progress || {};
    document.getElementById('msg').textContent = s.error ? s.error : (p.message || s.state);
    document.getElementById('bar').style.width = (p.percent || 0) + '%';
    if (s.state === 'failed') { document.getElementById('title').textContent =
      'The preview could not start'; return; }
    setTimeout(poll, 800);
  }).catch(function(){ setTimeout(poll, 2000); });
})();
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


async def status_json(redis: Redis, route: Route, send: Send) -> None:
    try:
        progress = await last_progress(redis, route)
    except (RedisError, OSError):
        progress = None
    body = json.dumps(
        {"state": route.state, "error": route.error or None, "progress": progress}
    ).encode()
    await send_body(send, 200, body, b"application/json", [])
