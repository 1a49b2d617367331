"""Finding, refreshing, commanding and stopping previews (starting is gateway/sessions/start.py).

A session is visible to its owner while its record exists, is not stopping, and its slot
lease is held; anything else, including another user's session, is a 404.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from gateway.containers.containers import ContainerError, Containers, affinity
from gateway.containers.docker_runtime import DockerRuntimeError
from gateway.errors import ApiError
from gateway.observability.recorder import Recorder
from gateway.proxy.waking import WakeError, wake
from gateway.sessions import slots, teardown
from gateway.sessions.store import ADVANCE, Session, event_entries, fold, merge_result
from shared import keys
from shared.messages import WRONG_SESSION, Command, CommandResult, Heartbeat, MessageError
from shared.redis_types import record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

# KEYS: session, SESSIONS, route-changes channel. ARGV: sid, now, ttl. One stopper wins.
_STOP = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'stopping' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'stopping', 'updated_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""
# The re-check of ownership right before a command is queued (after the request's body
# was read), in the same step as the XADD: the session still exists, is this user's, is
# not stopping, holds its slot (a failed one need not: its owner may read its logs) and
# is still on the container the request began with.
# KEYS: session, user slots, commands stream. ARGV: sid, user, cid, now, command, maxlen.
_SEND = """
local found = redis.call('HMGET', KEYS[1], 'id', 'user', 'state', 'container')
if found[1] ~= ARGV[1] or found[2] ~= ARGV[2] or not found[3] or found[3] == 'stopping' then
  return 'gone'
end
if found[3] ~= 'failed' then
  local lease = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not lease or tonumber(lease) <= tonumber(ARGV[4]) then return 'gone' end
end
if found[4] ~= ARGV[3] then return 'moved' end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'command', ARGV[5])
return 'sent'
"""
FOLD_BATCH = 500
MAX_ID = 64
# Commands that use the dev server or change what it serves: they wake a sleeping preview
# first, and count as use (keys.requested: PREVIEW_SLEEP_AFTER starts again).
WAKING_COMMANDS = frozenset({"write_files", "restart"})
WAKE_TIMEOUT = 30.0


def not_found() -> ApiError:
    return ApiError(404, "not_found", "no such preview")


class Previews:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        containers: Containers,
        background: Background,
        records: Recorder | None = None,
    ) -> None:
        self.settings = settings
        self.records = records  # preview records (observability/recorder.py); None: not kept
        self.redis = redis
        self.containers = containers
        self.background = background
        self.slots = slots.Slots(
            redis, settings.max_concurrent_per_user, settings.slot_lease_seconds
        )
        self._stop = redis.register_script(_STOP)
        self._advance = redis.register_script(ADVANCE)
        self._send = redis.register_script(_SEND)

    # --- reading ------------------------------------------------------------------------

    async def load(self, sid: str) -> Session | None:
        found = record(await self.redis.hgetall(keys.session(sid)))
        return Session.from_record(found) if found.get("id") == sid else None

    async def owned(self, user: str, sid: str) -> Session:
        """The caller's live session, else 404 (another user's id looks like no id)."""
        if len(sid) > MAX_ID:
            raise not_found()
        session = await self.load(sid)
        if session is None or session.user != user or session.state == "stopping":
            raise not_found()
        # A session the controller failed gave its slot back; its record stays a while so
        # that its owner can read why. A hibernated one has none until it resumes.
        if session.state not in ("failed", "hibernated") and not await self.slots.holds(user, sid):
            raise not_found()
        return session

    async def list(self, user: str) -> list[Session]:
        """The user's live previews, then their hibernated ones."""
        now = time.time()
        hibernated = keys.user_hibernated(user)
        await self.redis.zremrangebyscore(hibernated, "-inf", now)
        found_ids: Any = await self.redis.zrange(hibernated, 0, -1)
        sids = list(dict.fromkeys(await self.slots.active(user) + [text(s) for s in found_ids]))
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(keys.session(sid))
            replies = await pipe.execute()
        found = [Session.from_record(record(r)) for r in replies if r]
        return [s for s in found if s.user == user and s.state != "stopping"]

    async def refresh(self, session: Session) -> Heartbeat | None:
        """Fold the session's new events into it and its record; renew its slot lease while
        its container heartbeats for it. Returns that heartbeat."""
        if not session.container:
            return None
        cid = session.container
        want_result = bool(session.prepare_id) and "devserver" not in session.timings
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(keys.events(cid), "(" + session.cursor, "+", FOLD_BATCH)
            pipe.get(keys.heartbeat(cid))
            if want_result:
                pipe.lindex(keys.command_result(cid, session.prepare_id), 0)
            replies = await pipe.execute()
        entries, heartbeat = replies[0], Heartbeat.read(replies[1])
        mine = event_entries(entries, session.id)
        changes = fold(session, (event for _, event in mine))
        if mine:
            # Write everything the events decide, not just what differs from our snapshot:
            # another gateway may have written a state from part of these events meanwhile.
            derived = session.to_record()
            changes.update({k: derived[k] for k in ("state", "error", "timings", "dependencies")})
        if want_result and replies[2] is not None and session.state in ("ready", "failed"):
            try:
                before = dict(session.timings), session.dependencies
                merge_result(session, CommandResult.from_json(replies[2]).result)
                if (dict(session.timings), session.dependencies) != before:
                    changes["timings"] = json.dumps(session.timings, separators=(",", ":"))
                    changes["dependencies"] = session.dependencies
            except MessageError:
                pass
        if heartbeat is not None and heartbeat.session_id == session.id:
            await slots.renew(self.redis, session.user, session.id, self.slots.lease)
            if heartbeat.state == "crashed" and session.state == "ready":
                session.state = "failed"
                session.error = {"reason": "crashed", "detail": heartbeat.last_error or ""}
                changes.update(state="failed", error=json.dumps(session.error))
        last = text(entries[-1][0]) if entries else session.cursor
        if changes or entries:
            pairs = [item for pair in changes.items() for item in pair]
            await self._advance(
                keys=[keys.session(session.id), keys.ROUTE_CHANGES, keys.lifecycle(session.id)],
                args=[last, *pairs],
            )
            session.events_seen = last
        if self.records is not None:
            # Observability hook: the start's record, once it ended and its timings are in.
            result_known = not want_result or replies[2] is not None
            await self.records.start_seen(session, result_known)
        return heartbeat

    # --- stopping and commands ----------------------------------------------------------

    async def stop(self, session: Session, code: str = "user", reason: str = "") -> bool:
        """Free the slot now; release the container in the background. False when another
        request stopped it first. `code`/`reason` say why (for the stop record)."""
        stopped = await self._stop(
            keys=[keys.session(session.id), keys.SESSIONS, keys.ROUTE_CHANGES],
            args=[session.id, repr(time.time()), keys.STOPPED_SESSION_TTL],
        )
        await slots.release(self.redis, session.user, session.id, session.project_id)
        if not stopped:
            return False
        log.info(
            "preview stopped sid=%s user=%s project=%s code=%s reason=%r",
            session.id,
            session.user,
            session.project_id,
            code,
            reason or code,
        )
        if self.records is not None:  # observability hook: the stop record
            await self.records.stopped(session, code, reason)
        self.background.spawn(self._release(session), f"release {session.id}")
        return True

    async def _release(self, session: Session) -> None:
        try:
            if session.container:
                await self.containers.release(
                    session.container,
                    session.user,
                    affinity(session.user, session.project_id),
                    session=session.id,
                )
        except (ContainerError, DockerRuntimeError, RedisError) as exc:
            log.error("release failed sid=%s cid=%s: %s", session.id, session.container, exc)
        finally:
            await teardown.clear(self.redis, session)

    async def wake(self, session: Session, trigger: str = "api") -> None:
        """Wake a sleeping preview (nothing when it is awake); ``session.state`` follows."""
        try:
            # The containers' client: its reads may block as long as the wake takes.
            woke = await wake(
                self.containers.redis, session.id, session.container, WAKE_TIMEOUT, trigger
            )
        except WakeError as exc:
            raise ApiError(503, "not_ready", exc.detail) from None
        if woke or session.state == "sleeping":
            current = await self.load(session.id)
            session.state = current.state if current is not None else "stopping"

    async def used(self, sid: str) -> None:
        """The owner used the preview through the API (a write, a restart, a wake)."""
        await self.redis.set(keys.requested(sid), repr(time.time()), ex=86400)

    async def command(
        self,
        session: Session,
        kind: str,
        args: dict[str, Any],
        blob: bytes | None = None,
        timeout: float = 30.0,
    ) -> CommandResult:
        """Send a command to the session's container and wait for its acknowledgement.

        Ownership is checked again as the command is queued: a request that read its body
        across a DELETE, or across its container moving, sends nothing (404 / 409); and the
        supervisor refuses a command of a session it no longer serves (409)."""
        cid = session.container
        if not cid:
            raise ApiError(409, "not_ready", "the preview has no container yet; retry shortly")
        if kind in WAKING_COMMANDS:
            await self.used(session.id)
            if session.state == "sleeping":
                await self.wake(session)
        command = Command(kind, args, session_id=session.id)
        if blob is not None:
            await self.redis.set(keys.command_blob(cid, command.id), blob, ex=keys.COMMAND_BLOB_TTL)
        outcome = text(
            await self._send(
                keys=[keys.session(session.id), keys.user_slots(session.user), keys.commands(cid)],
                args=[
                    session.id,
                    session.user,
                    cid,
                    repr(time.time()),
                    command.to_fields()["command"],
                    keys.COMMANDS_MAXLEN,
                ],
            )
        )
        if outcome != "sent":
            if blob is not None:
                await self.redis.delete(keys.command_blob(cid, command.id))
            log.info("command %s refused sid=%s cid=%s: %s", kind, session.id, cid, outcome)
            if outcome == "moved":
                raise ApiError(
                    409,
                    "container_changed",
                    "the preview moved to another container during the request; "
                    "nothing was done, retry",
                )
            raise not_found()
        try:
            result = await self.containers.result(cid, command.id, timeout)
        except ContainerError as exc:
            raise ApiError(504, "container_timeout", exc.reason) from None
        if not result.ok and result.result.get("code") == WRONG_SESSION:
            raise ApiError(
                409,
                "session_ended",
                "the preview's container no longer serves this preview (it was stopped); "
                "nothing was done",
            )
        if not result.ok:
            raise ApiError(409, "command_failed", result.error or f"{kind} failed")
        return result
