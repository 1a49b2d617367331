"""Putting a preview to sleep: the owner's ``POST .../sleep`` and the reaper after
``PREVIEW_SLEEP_AFTER`` without use (waking is ``Previews.wake`` and the proxy's
gateway/proxy/waking.py).

The record turns ``sleeping`` and the ``sleep`` command is queued in one script, so a
request that reads the route a moment later already sends its ``wake`` behind the
``sleep`` in the container's stream: the supervisor runs them in that order and the
request is answered by a thawed dev server. A sleep the supervisor refuses (the dev server
was restarting) is undone. The container, its slot and its URL stay as they were.
"""

from __future__ import annotations

import logging
import time

from gateway.containers.containers import ContainerError
from gateway.errors import ApiError
from gateway.observability import instruments
from gateway.proxy.waking import awake
from gateway.sessions.previews import Previews, not_found
from gateway.sessions.store import Session
from shared import keys
from shared.lifecycle import lua_note
from shared.messages import Command
from shared.redis_types import text

log = logging.getLogger(__name__)

SLEEP_TIMEOUT = 15.0
STARTING = frozenset({"assigned", "preparing", "starting"})

# KEYS: session, commands stream, route-changes channel, lifecycle stream.
# ARGV: sid, container, command JSON, stream maxlen, now. -> 'sent' or the state found.
_SLEEP = (
    """
local found = redis.call('HMGET', KEYS[1], 'state', 'container')
if not found[1] then return 'gone' end
if found[1] ~= 'ready' then return found[1] end
if found[2] ~= ARGV[2] then return 'moved' end
redis.call('HSET', KEYS[1], 'state', 'sleeping', 'updated_at', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'sleeps', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'command', ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[1])
"""
    + lua_note("KEYS[4]", "'sleeping'", "ARGV[5]")
    + "return 'sent'\n"
)


class Sleeper:
    def __init__(self, previews: Previews) -> None:
        self.previews = previews
        self.redis = previews.redis
        self._sleep = self.redis.register_script(_SLEEP)

    async def sleep(self, session: Session, trigger: str) -> None:
        """Freeze the preview's dev server; ``session.state`` becomes ``sleeping``.
        ApiError: 409 while it starts or has failed, 404 once stopped."""
        cid = session.container
        command = Command("sleep", {}, session_id=session.id)
        outcome = text(
            await self._sleep(
                keys=[
                    keys.session(session.id),
                    keys.commands(cid),
                    keys.ROUTE_CHANGES,
                    keys.lifecycle(session.id),
                ],
                args=[
                    session.id,
                    cid,
                    command.to_fields()["command"],
                    keys.COMMANDS_MAXLEN,
                    repr(time.time()),
                ],
            )
        )
        if outcome == "sleeping":
            session.state = "sleeping"
            return
        if outcome in STARTING:
            raise ApiError(409, "not_ready", "the preview is still starting; it cannot sleep yet")
        if outcome in ("failed", "moved"):
            raise ApiError(409, "conflict", f"the preview cannot sleep now ({outcome})")
        if outcome != "sent":
            raise not_found()
        session.state = "sleeping"
        session.sleeps += 1  # as the script counted it: this copy may end in a record
        try:
            result = await self.previews.containers.result(cid, command.id, SLEEP_TIMEOUT)
        except ContainerError as exc:
            # Left asleep: the next request sends a wake, which thaws it if it froze.
            raise ApiError(504, "container_timeout", exc.reason) from None
        if not result.ok:
            await awake(self.redis, session.id, cid)
            session.state = "ready"
            raise ApiError(409, "conflict", f"the preview cannot sleep now: {result.error}")
        instruments.SLEEPS.labels(trigger).inc()  # observability hook
        log.info(
            "preview asleep sid=%s user=%s trigger=%s frozen=%s",
            session.id,
            session.user,
            trigger,
            result.result.get("frozen"),
        )
