"""Waking a sleeping preview: one ``wake`` command to its supervisor, the answer awaited
with a blocking read (no polling), then the record back to ``ready`` and every gateway's
route cache told.

Used by the proxy (a request for a sleeping preview's host is held and answered, never
refused) and by the API (``wake``, file writes, restart). Whichever gateway replica gets
the request does all of it: two replicas waking the same preview at once each send a
wake (the supervisor thaws once, answers both) and the first answer moves the record.
``Waking`` holds one such wake, or one resume of a hibernated preview (through the control
plane's hook), per preview and gateway, however many requests wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from gateway.errors import ApiError
from gateway.observability import instruments
from gateway.proxy.routes import Route, RouteCache
from shared import keys
from shared.lifecycle import lua_note, remember
from shared.messages import Command, CommandResult, MessageError
from shared.redis_types import text
from shared.settings import Settings

log = logging.getLogger(__name__)

# KEYS: session, commands stream. ARGV: container, command JSON, stream maxlen.
# Sends only while the session sleeps on that container: a wake never outlives a stop.
_WAKE = """
local found = redis.call('HMGET', KEYS[1], 'state', 'container')
if not found[1] then return 'gone' end
if found[1] ~= 'sleeping' then return found[1] end
if found[2] ~= ARGV[1] then return 'moved' end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'command', ARGV[2])
return 'sent'
"""
# KEYS: session, route-changes channel, lifecycle stream. ARGV: container, now.
# sleeping -> ready, once.
AWAKE = (
    """
local found = redis.call('HMGET', KEYS[1], 'state', 'container')
if found[1] ~= 'sleeping' or found[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'ready', 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'wakes', 1)
redis.call('PUBLISH', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
"""
    + lua_note("KEYS[3]", "'ready'", "ARGV[2]")
    + "return 1\n"
)


class WakeError(Exception):
    """The preview could not be woken; ``detail`` says why in the user's terms."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def awake(redis: Redis, sid: str, cid: str) -> bool:
    """Mark a sleeping session ready again (True when this call did it)."""
    script = redis.register_script(AWAKE)
    return bool(
        await script(
            keys=[keys.session(sid), keys.ROUTE_CHANGES, keys.lifecycle(sid)],
            args=[cid, repr(time.time())],
        )
    )


async def wake(redis: Redis, sid: str, cid: str, timeout: float, trigger: str) -> bool:
    """Wake session ``sid`` on container ``cid``; True when it slept, False when it was
    not asleep (already awake, starting, stopped: the caller reads the route again).
    ``redis`` must allow blocking reads of ``timeout`` seconds. Raises WakeError."""
    began = time.monotonic()
    command = Command("wake", {}, session_id=sid)
    script = redis.register_script(_WAKE)
    outcome = text(
        await script(
            keys=[keys.session(sid), keys.commands(cid)],
            args=[cid, command.to_fields()["command"], keys.COMMANDS_MAXLEN],
        )
    )
    if outcome != "sent":
        return False
    reply = await redis.blpop([keys.command_result(cid, command.id)], timeout=timeout)
    if reply is None:
        raise WakeError(f"the preview did not wake within {timeout:g}s")
    try:
        result = CommandResult.from_json(reply[1])
    except MessageError:
        raise WakeError("the preview's container answered the wake with nonsense") from None
    if not result.ok:
        raise WakeError(result.error or "the preview could not be woken")
    moved = await awake(redis, sid, cid)
    seconds = time.monotonic() - began
    instruments.WAKES.labels(trigger).inc()  # observability hook
    instruments.WAKE_LATENCY.observe(seconds)
    if moved:  # the dashboard's recent wakes: once per wake, by whoever moved the record
        await remember(
            redis,
            keys.RECENT_WAKES,
            {"session": sid, "trigger": trigger, "at": time.time(), "ms": round(seconds * 1000)},
        )
    log.info("preview woken sid=%s trigger=%s ms=%.1f", sid, trigger, seconds * 1000)
    return True


class Resumer(Protocol):
    """What the proxy asks of the control plane to bring a hibernated preview back."""

    async def resume_visit(self, sid: str) -> None: ...


class Waking:
    """The proxy's side of waking and resuming: one task per preview and gateway, however
    many requests wait on it. ``state`` is the app's (its ``blocking_redis``, and the
    control plane's ``resumer`` hook, which this package does not import)."""

    def __init__(
        self, settings: Settings, state: Any, routes: RouteCache, background: Background
    ) -> None:
        self.settings = settings
        self.state = state
        self.routes = routes
        self.background = background
        self._wakes: dict[str, asyncio.Task[Route | str]] = {}
        self._resumes: dict[str, asyncio.Task[ApiError | None]] = {}

    async def wake(self, sid: str, route: Route) -> Route | str:
        """Wake a sleeping preview (one wake per preview here, however many requests
        wait); its route afterwards, or why it could not be woken."""
        task = self._wakes.get(sid)
        if task is None:
            task = self.background.spawn(self._wake(sid, route.container), f"wake {sid}")
            self._wakes[sid] = task
            task.add_done_callback(lambda _: self._wakes.pop(sid, None))
        return await asyncio.shield(task)

    async def resume(self, sid: str) -> ApiError | None:
        """Resume a hibernated preview (one resume per preview here); why not, if not."""
        task = self._resumes.get(sid)
        if task is None:
            task = self.background.spawn(self._resume(sid), f"resume {sid}")
            self._resumes[sid] = task
            task.add_done_callback(lambda _: self._resumes.pop(sid, None))
        return await asyncio.shield(task)

    async def _resume(self, sid: str) -> ApiError | None:
        resumer: Resumer | None = getattr(self.state, "resumer", None)
        if resumer is None:
            return ApiError(503, "not_ready", "this preview is hibernated")
        try:
            await resumer.resume_visit(sid)
        except ApiError as exc:
            return exc
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            return ApiError(503, "unavailable", "state store unreachable")
        return None

    async def _wake(self, sid: str, cid: str) -> Route | str:
        try:
            await wake(self.state.blocking_redis, sid, cid, self.settings.hold_timeout, "request")
            self.routes.invalidate(sid)
            route = await self.routes.get(sid)
        except WakeError as exc:
            log.warning("wake failed sid=%s: %s", sid, exc.detail)
            return exc.detail
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            return "state store unreachable"
        return route if route is not None else "no such preview"

    async def sleeping(self, sid: str) -> bool:
        """Whether the preview sleeps now (its WebSockets stay open, silent)."""
        try:
            route = await self.routes.get(sid)
        except (RedisError, OSError):
            return False
        return route is not None and route.state == "sleeping"
