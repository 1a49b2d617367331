"""Starting a preview: the only path that takes a slot and a container.

1. One Lua script: hot-start check, slot reservation, the new session's record.
2. A container from the warm pool (or a new one), attached to the record unless the
   session was stopped meanwhile.
3. `prepare` queued (for an archive source: when the archive arrives), answer at once.
Any failure after (1) gives the slot and the container back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway.containers.containers import Assigned, ContainerError, affinity
from gateway.containers.docker_runtime import DockerRuntimeError
from gateway.errors import ApiError
from gateway.proxy.vhosts import public_host
from gateway.sessions import slots, teardown
from gateway.sessions.previews import Previews
from gateway.sessions.store import Session, new_id
from shared import keys
from shared.messages import Command
from shared.redact import public_url, url_secrets

log = logging.getLogger(__name__)
NO_CAPACITY_RETRY_AFTER = 5  # seconds: about what a pool refill takes

# KEYS: session, route-changes channel. ARGV = field/value pairs. Only while the start
# still owns the session (it was not stopped meanwhile).
_ATTACH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'assigned' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('PUBLISH', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
return 1
"""
# KEYS: session. ARGV: prepare id. Hands the pending prepare to exactly one caller, and
# only while the session is live (an upload read across a DELETE must start nothing).
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'stopping' then return false end
local pending = redis.call('HGET', KEYS[1], 'pending')
if not pending or pending == '' then return false end
redis.call('HSET', KEYS[1], 'pending', '', 'prepare_id', ARGV[1])
return pending
"""


@dataclass(frozen=True)
class StartRequest:
    """What to start, as the API validated it (``gateway.api.validation.parse_start``)."""

    project_id: str
    source: dict[str, str]
    env: dict[str, str]


class Starter:
    def __init__(self, previews: Previews) -> None:
        self.previews = previews
        self.redis = previews.redis
        self.containers = previews.containers
        self.settings = previews.settings
        self._attach = self.redis.register_script(_ATTACH)
        self._claim = self.redis.register_script(_CLAIM)
        # At the limit: hibernate one of these (the user's, by id) to make room; True when
        # it did (gateway/sessions/hibernation.py sets it: it is built on this class).
        self.make_room: Callable[[str, list[str]], Awaitable[bool]] | None = None

    async def start(self, user: str, request: StartRequest, wait: int) -> tuple[int, Session]:
        """(202, new session), or (200, the live session of the same project)."""
        for _ in range(3):
            session = Session(id=new_id(), user=user, project_id=request.project_id)

            async def attempt(session: Session = session) -> slots.Reservation:
                session.created_at = session.updated_at = time.time()
                record = session.to_record()
                return await self.previews.slots.reserve(
                    user, request.project_id, session.id, record
                )

            reservation = await attempt()
            if (
                reservation.outcome == "full"
                and self.make_room is not None
                and await self.make_room(user, list(reservation.active))
            ):
                reservation = await attempt()  # a sleeping one of theirs hibernated
            if reservation.outcome == "full" and wait > 0:
                deadline = asyncio.get_running_loop().time() + wait
                reservation = await slots.wait_for_slot(self.redis, user, attempt, deadline)
            if reservation.outcome == "full":
                raise ApiError(
                    429,
                    "too_many_previews",
                    f"you already have {len(reservation.active)} live previews; stop one "
                    "(DELETE /v1/previews/{id}) or retry later",
                    headers={"Retry-After": str(reservation.retry_after)},
                    limit=self.previews.slots.limit,
                    active=list(reservation.active),
                )
            if reservation.outcome == "ok":
                await self._launch(session, request)
                return 202, session
            existing = await self.previews.load(reservation.sid)
            if existing is not None and existing.user == user and existing.state != "failed":
                return 200, existing
            # The project's session failed (or vanished): stop it and start afresh.
            await self.previews.stop(existing or Session(reservation.sid, user, request.project_id))
        raise ApiError(409, "conflict", "the project kept changing state; try again")

    async def _launch(self, session: Session, request: StartRequest) -> None:
        began = time.monotonic()
        try:
            assigned = await self.containers.acquire(
                session.user, affinity(session.user, request.project_id)
            )
        except (ContainerError, DockerRuntimeError, RedisError) as exc:
            # A warning, not an error: under a burst every refusal would be a Sentry event.
            # On-call hears of it once, through the pool_depleted / start_error_rate alerts.
            log.warning("start refused sid=%s: no container: %s", session.id, exc)
            await self._abandon(session)
            if self.previews.records is not None:  # observability hook: the start record
                await self.previews.records.start_refused(session, "no_capacity", str(exc))
            raise ApiError(
                503,
                "no_capacity",
                "no preview container is available; try again shortly",
                headers={"Retry-After": str(NO_CAPACITY_RETRY_AFTER)},
            ) from None
        except BaseException:
            self.previews.background.spawn(self._abandon(session), f"abandon {session.id}")
            raise
        if not assigned.from_pool and self.previews.records is not None:
            # Observability hook: the pool ran dry (an alert, off the start's path).
            self.previews.background.spawn(
                self.previews.records.pool_missed(request.project_id, assigned.host),
                f"pool alert {session.id}",
            )
        # Before the prepare is queued, so the tracker's drop on `ready` cannot precede it.
        await self.containers.boost.grant(assigned.host, assigned.cid)
        try:
            prepare, secret = self._prepare(session, request)
            if request.source["type"] == "archive":
                session.pending = json.dumps(prepare.args, separators=(",", ":"))
            else:
                session.prepare_id = prepare.id
            await self._assign(session, assigned, began)
            if not session.pending:
                await self.containers.submit(assigned.cid, prepare, secret)
            else:
                # The files come first (write_files), so the session must be the
                # container's current one before its prepare (supervisor/fence.py).
                claim = Command("claim", {}, session_id=session.id)
                await self.containers.submit(assigned.cid, claim)
        except (ContainerError, RedisError) as exc:
            log.error("start failed sid=%s cid=%s: %s", session.id, assigned.cid, exc)
            self._abandon_later(session, assigned.cid)
            if self.previews.records is not None:  # observability hook: the start record
                await self.previews.records.start_refused(session, "failed", str(exc))
            raise ApiError(503, "unavailable", "the preview could not be started; retry") from None
        except BaseException:
            self._abandon_later(session, assigned.cid)
            raise
        log.info(
            "preview started sid=%s user=%s project=%s cid=%s from_pool=%s acquire_ms=%d",
            session.id,
            session.user,
            session.project_id,
            assigned.cid,
            assigned.from_pool,
            session.timings["acquire"],
        )

    async def _assign(self, session: Session, assigned: Assigned, began: float) -> None:
        """Put the container on the record, unless the session was stopped meanwhile."""
        session.container, session.host = assigned.cid, assigned.host
        session.address, session.from_pool = assigned.address, assigned.from_pool
        session.events_from = await self.containers.events_cursor(assigned.cid)
        session.timings = {"acquire": round((time.monotonic() - began) * 1000)}
        session.updated_at = time.time()
        fields = session.to_record()
        names = [
            *("container", "host", "address", "from_pool", "events_from", "timings"),
            *("prepare_id", "pending", "updated_at"),
        ]
        pairs = [item for name in names for item in (name, fields[name])]
        attached = await self._attach(
            keys=[keys.session(session.id), keys.ROUTE_CHANGES], args=pairs
        )
        if not attached:
            raise ApiError(404, "not_found", "the preview was stopped while it was starting")
        await self.redis.hset(keys.container(assigned.cid), "session", session.id)

    def prepare_command(
        self, session: Session, request: StartRequest
    ) -> tuple[Command, bytes | None]:
        """The prepare command for `request` (a resume's too: gateway/sessions/hibernation.py)."""
        return self._prepare(session, request)

    def _prepare(self, session: Session, request: StartRequest) -> tuple[Command, bytes | None]:
        """The prepare command, and its blob: a git URL with credentials. Those must not
        stay in the command stream, which lives as long as the container; the blob is
        deleted once the command has run."""
        s = self.settings
        source: dict[str, object] = dict(request.source)
        secret = None
        if source["type"] == "git" and url_secrets(request.source["url"]):
            secret = request.source["url"].encode()
            source.update(url=public_url(request.source["url"]), url_in_blob=True)
        args = {
            "session_id": session.id,
            "project_id": session.project_id,
            "owner": affinity(session.user, session.project_id),
            "source": source,
            "env": request.env,
            "public_host": public_host(s, session.id),
            "public_port": s.preview_port or (443 if s.preview_scheme == "https" else 80),
            "public_scheme": s.preview_scheme,
        }
        return Command("prepare", args, session_id=session.id), secret

    async def prepare_pending(self, session: Session, blob: bytes | None) -> bool:
        """For an archive source: queue the waiting `prepare` (with the archive as its
        blob, or from files already written). False when it was not waiting."""
        command = Command("prepare", {}, session_id=session.id)
        pending = await self._claim(keys=[keys.session(session.id)], args=[command.id])
        if not pending:
            return False
        command.args = {**json.loads(pending), "blob": blob is not None}
        session.pending, session.prepare_id = "", command.id
        await self.containers.submit(session.container, command, blob)
        return True

    def _abandon_later(self, session: Session, cid: str | None) -> None:
        self.previews.background.spawn(self._abandon(session, cid), f"abandon {session.id}")

    async def _abandon(self, session: Session, cid: str | None = None) -> None:
        """Undo a start that could not finish: free the slot, drop the record, give the
        container back."""
        try:
            await teardown.clear(self.redis, session)
            if cid:
                await self.containers.release(
                    cid,
                    session.user,
                    affinity(session.user, session.project_id),
                    session=session.id,
                )
        except (RedisError, ContainerError, DockerRuntimeError) as exc:
            log.error("could not undo start sid=%s: %s", session.id, exc)
