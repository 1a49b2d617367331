"""Hibernating a sleeping preview and resuming it (the owner's ``hibernate`` and ``wake``,
the reaper after PREVIEW_HIBERNATE_AFTER asleep, a start at the limit, the proxy on a visit).

Hibernate: the preview is put to sleep (a consistent snapshot), its supervisor packs the
workspace to the host's cache volume (supervisor/hibernation.py), then one script turns the
record ``hibernated`` with the archive's name, checksum and host, out of the live sessions,
for PREVIEW_RESUME_WINDOW; its slot is freed and its container released as on a stop.

Resume: one script takes a slot (the limit counts it: over it, a 429 naming the live
previews) and turns the record ``resuming``; a container is taken as for a start, and its
``prepare`` restores the archive (the supervisor checks it is this owner's and whole), the
dependencies and the dev server; the record then follows the events to ``ready`` at the
same id and URL, and the browser's cookie is still good. The archive is named after the
owner key (one user's one project) and the session, and only the gateway names it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from gateway.containers.containers import ContainerError, HostGone, affinity
from gateway.containers.docker_runtime import DockerRuntimeError
from gateway.errors import ApiError
from gateway.observability import instruments
from gateway.sessions import slots
from gateway.sessions.previews import Previews, not_found
from gateway.sessions.sleeping import Sleeper
from gateway.sessions.start import Starter, StartRequest
from gateway.sessions.store import Session
from shared import keys
from shared.lifecycle import lua_note, remember
from shared.redis_types import text
from shared.states import session_state_of_record

log = logging.getLogger(__name__)

HIBERNATE_TIMEOUT = 300.0

# KEYS: session, SESSIONS, user hibernated, route changes, lifecycle, HIBERNATED.
# ARGV: sid, container, archive JSON, window end, ttl, now.
_HIBERNATED = (
    """
local found = redis.call('HMGET', KEYS[1], 'state', 'container')
if found[1] ~= 'sleeping' or found[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'hibernated', 'archive', ARGV[3], 'container', '',
  'address', '', 'updated_at', ARGV[6], 'events_from', '', 'events_seen', '', 'prepare_id', '')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('EXPIREAT', KEYS[3], math.ceil(tonumber(ARGV[4])))
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
redis.call('PUBLISH', KEYS[4], ARGV[1])
"""
    + lua_note("KEYS[5]", "'hibernated'", "ARGV[6]")
    + "return 1\n"
)
# KEYS: session, slots, user_project, SESSIONS, user hibernated, route changes, lifecycle,
# HIBERNATED. ARGV: sid, now, lease expiry, limit, user_project ttl.
# -> {'ok'} | {'full', sid...} | {'hot', sid} | {state}
_RESUME = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'hibernated' then return {state or 'gone'} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
local current = redis.call('GET', KEYS[3])
if current and current ~= ARGV[1] and redis.call('ZSCORE', KEYS[2], current) then
  return {'hot', current}
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  local active = redis.call('ZRANGE', KEYS[2], 0, -1)
  table.insert(active, 1, 'full')
  return active
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(ARGV[3])))
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5])
redis.call('HSET', KEYS[1], 'state', 'resuming', 'updated_at', ARGV[2], 'error', '',
  'created_at', ARGV[2], 'timings', '{}', 'sleeps', 0, 'wakes', 0)
redis.call('PERSIST', KEYS[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('PUBLISH', KEYS[6], ARGV[1])
"""
    + lua_note("KEYS[7]", "'resuming'", "ARGV[2]")
    + "return {'ok'}\n"
)
# KEYS: session, SESSIONS, user hibernated, route changes, lifecycle, HIBERNATED.
# ARGV: sid, window end, ttl, now.
# A resume that got no container: hibernated again, for the rest of its window.
_UNDO = (
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'resuming' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'hibernated', 'container', '', 'address', '')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[4], ARGV[1])
"""
    + lua_note("KEYS[5]", "'hibernated'", "ARGV[4]")
    + "return 1\n"
)
# KEYS: session, route changes. ARGV: field/value pairs. Only while it is resuming.
_ATTACH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'resuming' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('PUBLISH', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
return 1
"""


def archive_name(session: Session) -> str:
    """Per user, project and preview; the supervisor checks the owner part again."""
    return f"{affinity(session.user, session.project_id)}-{session.id}"


class Hibernator:
    def __init__(self, previews: Previews, starter: Starter, sleeper: Sleeper) -> None:
        self.previews = previews
        self.starter = starter
        self.sleeper = sleeper
        self.redis = previews.redis
        self.settings = previews.settings
        self._hibernated = self.redis.register_script(_HIBERNATED)
        self._resume = self.redis.register_script(_RESUME)
        self._undo = self.redis.register_script(_UNDO)
        self._attach = self.redis.register_script(_ATTACH)

    # --- hibernate ----------------------------------------------------------------------

    async def hibernate(self, session: Session, trigger: str) -> None:
        """Pack, release, keep the record; ``session.state`` becomes ``hibernated``."""
        if session.state == "hibernated":
            return
        if session.state == "ready":
            await self.sleeper.sleep(session, trigger)
        if session.state != "sleeping":
            raise ApiError(409, "not_ready", f"the preview is {session.state}; it cannot hibernate")
        began = time.monotonic()
        owner = affinity(session.user, session.project_id)
        args = {
            "archive": archive_name(session),
            "owner": owner,
            "max_age": self.settings.resume_window,
        }
        result = (
            await self.previews.command(session, "hibernate", args, timeout=HIBERNATE_TIMEOUT)
        ).result
        period = dataclasses.replace(session)  # as it was: the records name its period
        archive = {
            "name": args["archive"],
            "sha256": str(result.get("sha256") or ""),
            "bytes": int(result.get("bytes") or 0),
            "host": session.host,
        }
        session.archive = archive
        ttl = int(self.settings.resume_window)
        now = time.time()
        moved = await self._hibernated(
            keys=[
                keys.session(session.id),
                keys.SESSIONS,
                keys.user_hibernated(session.user),
                keys.ROUTE_CHANGES,
                keys.lifecycle(session.id),
                keys.HIBERNATED,
            ],
            args=[
                session.id,
                session.container,
                json.dumps(archive, separators=(",", ":")),
                repr(now + ttl),
                ttl,
                repr(now),
            ],
        )
        if not moved:  # woken (or stopped) while it was being packed: it stays as it is
            current = await self.previews.load(session.id)
            raise ApiError(
                409, "conflict", f"the preview is {current.state if current else 'gone'} now"
            )
        cid = session.container
        session.state, session.container = "hibernated", ""
        await slots.release(self.redis, session.user, session.id, session.project_id)
        self.previews.background.spawn(
            self.previews.containers.release(cid, session.user, owner, session=session.id),
            f"release {session.id}",
        )
        instruments.HIBERNATIONS.labels(trigger).inc()  # observability hook
        if self.previews.records is not None:  # the container's part of it ends here
            await self.previews.records.stopped(period, "hibernated", trigger)
        log.info(
            "preview hibernated sid=%s user=%s trigger=%s bytes=%d ms=%d",
            session.id,
            session.user,
            trigger,
            archive["bytes"],
            (time.monotonic() - began) * 1000,
        )

    async def hibernate_lru(self, user: str, among: list[str]) -> bool:
        """Hibernate the least recently used sleeping preview of ``among`` (a start at
        the limit); False when none of them sleeps."""
        found = [s for s in [await self.previews.load(sid) for sid in among] if s is not None]
        sleeping = sorted(
            (s for s in found if s.user == user and s.state == "sleeping"),
            key=lambda s: s.updated_at,
        )
        for session in sleeping:
            try:
                await self.hibernate(session, "limit")
                return True
            except ApiError as exc:
                log.info("could not hibernate sid=%s for a start: %s", session.id, exc.detail)
        return False

    # --- resume -------------------------------------------------------------------------

    async def resume(self, session: Session, trigger: str) -> None:
        """Take a slot and a container and restore the preview; it is ``resuming`` when
        this returns (the rest follows its events). ApiError: 429 over the limit."""
        limit = self.previews.slots.limit
        now = time.time()
        reply = await self._resume(
            keys=[
                keys.session(session.id),
                keys.user_slots(session.user),
                keys.user_project(session.user, session.project_id),
                keys.SESSIONS,
                keys.user_hibernated(session.user),
                keys.ROUTE_CHANGES,
                keys.lifecycle(session.id),
                keys.HIBERNATED,
            ],
            args=[
                session.id,
                repr(now),
                repr(now + self.previews.slots.lease),
                limit,
                keys.USER_PROJECT_TTL,
            ],
        )
        outcome = [text(r) for r in reply]
        if outcome[0] == "full":
            raise ApiError(
                429,
                "too_many_previews",
                f"you already have {len(outcome) - 1} live previews ({', '.join(outcome[1:])}); "
                "stop one to resume this one",
                limit=limit,
                active=outcome[1:],
            )
        if outcome[0] == "hot":
            raise ApiError(409, "conflict", f"this project is live again as preview {outcome[1]}")
        if outcome[0] != "ok":
            if outcome[0] in ("gone", "stopping"):
                raise not_found()
            session.state = session_state_of_record(outcome[0])
            return  # already resuming or live
        session.state = "resuming"
        began = time.monotonic()
        try:
            await self._restore(session, began)
        except ApiError:
            await self._back(session)
            raise
        except (ContainerError, DockerRuntimeError, OSError) as exc:
            log.warning("resume failed sid=%s: %s", session.id, exc)
            await self._back(session)
            raise ApiError(
                503,
                "no_capacity",
                "no preview container is available; try again shortly",
                headers={"Retry-After": "5"},
            ) from None
        instruments.RESUMES.labels(trigger).inc()  # observability hook
        await remember(
            self.redis,
            keys.RECENT_RESUMES,
            {"session": session.id, "user": session.user, "trigger": trigger, "at": now},
        )
        log.info("preview resuming sid=%s user=%s trigger=%s", session.id, session.user, trigger)

    async def _restore(self, session: Session, began: float) -> None:
        archive = session.archive or {}
        owner = affinity(session.user, session.project_id)
        try:
            # Where the archive is: its pooled container, else a new one there.
            assigned = await self.previews.containers.acquire(
                session.user, owner, str(archive.get("host") or "")
            )
        except HostGone as exc:
            log.warning("resume sid=%s: the archive's %s", session.id, exc.reason)
            raise ApiError(
                503,
                "archive_host_unavailable",
                "the host holding this preview's saved workspace is gone or unreachable: "
                "start the preview again (from its project), or try again later",
            ) from None
        # As a start's (start.py): the visitor waits on this dev server's start too.
        await self.previews.containers.boost.grant(assigned.host, assigned.cid)
        source: dict[str, Any] = {
            "type": "hibernated",
            "archive": str(archive.get("name") or ""),
            "sha256": str(archive.get("sha256") or ""),
        }
        request = StartRequest(session.project_id, source, {})
        prepare, _ = self.starter.prepare_command(session, request)
        fields: dict[str, str] = {
            "container": assigned.cid,
            "host": assigned.host,
            "address": assigned.address,
            "from_pool": "1" if assigned.from_pool else "0",
            "events_from": await self.previews.containers.events_cursor(assigned.cid),
            "events_seen": "",
            "prepare_id": prepare.id,
            "timings": f'{{"acquire":{round((time.monotonic() - began) * 1000)}}}',
        }
        pairs = [item for pair in fields.items() for item in pair]
        if not await self._attach(keys=[keys.session(session.id), keys.ROUTE_CHANGES], args=pairs):
            self.previews.background.spawn(
                self.previews.containers.release(assigned.cid, session.user, owner),
                f"release {assigned.cid}",
            )
            raise ApiError(404, "not_found", "the preview was stopped while it was resuming")
        session.container, session.host = assigned.cid, assigned.host
        session.events_from, session.events_seen = fields["events_from"], ""
        session.prepare_id, session.timings = prepare.id, {}
        await self.redis.hset(keys.container(assigned.cid), "session", session.id)
        await self.previews.containers.submit(assigned.cid, prepare)

    async def _back(self, session: Session) -> None:
        ttl = int(self.settings.resume_window)
        await slots.release(self.redis, session.user, session.id, session.project_id)
        await self._undo(
            keys=[
                keys.session(session.id),
                keys.SESSIONS,
                keys.user_hibernated(session.user),
                keys.ROUTE_CHANGES,
                keys.lifecycle(session.id),
                keys.HIBERNATED,
            ],
            args=[session.id, repr(time.time() + ttl), ttl, repr(time.time())],
        )
        session.state = "hibernated"

    async def resume_visit(self, sid: str) -> None:
        """The proxy's hook: the preview's owner (their cookie was checked) visits it."""
        session = await self.previews.load(sid)
        if session is None:
            raise not_found()
        if session.state == "hibernated":
            await self.resume(session, "visit")
