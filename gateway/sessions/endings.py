"""How the controller ends sessions: fail one with a reason a person can act on, or stop
one (released to the pool) under its lock. Built on the control plane's own pieces
(`Previews.stop`, `teardown.clear`, the `ADVANCE` script of gateway/sessions/store.py) so the
gateways and the controller agree on every state change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Literal

from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.observability.counters import COUNTERS, Counters, decision
from gateway.sessions import teardown
from gateway.sessions.previews import Previews
from gateway.sessions.store import ADVANCE, Session
from shared import keys

log = logging.getLogger(__name__)

# KEYS[1] = lock. ARGV[1] = token. Deletes the lock only while we still hold it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
FAIL_ATTEMPTS = 5  # a gateway folding events may move the record along meanwhile
ContainerFate = Literal["destroy", "forget", "keep"]


@contextlib.asynccontextmanager
async def session_lock(redis: Redis, sid: str, ttl_ms: int) -> AsyncIterator[bool]:
    """Hold ``keys.session_lock(sid)`` for the block; yields False when someone else
    holds it (the caller should decide later rather than wait)."""
    token = secrets.token_hex(8)
    held = bool(await redis.set(keys.session_lock(sid), token, nx=True, px=ttl_ms))
    try:
        yield held
    finally:
        if held:
            await redis.register_script(_UNLOCK)(keys=[keys.session_lock(sid)], args=[token])


class Endings:
    def __init__(
        self,
        redis: Redis,
        containers: Containers,
        previews: Previews,
        counters: Counters = COUNTERS,
    ) -> None:
        self.redis = redis
        self.containers = containers
        self.previews = previews
        self.counters = counters
        self._advance = redis.register_script(ADVANCE)

    async def fail(
        self,
        session: Session,
        code: str,
        reason: str,
        detail: str = "",
        container: ContainerFate = "destroy",
    ) -> bool:
        """Mark the session `failed` with `reason`, free its slot, drop it from the live
        sessions (its record stays a while for the proxy's error page) and destroy (or,
        when its host is unreachable, forget) its container. False when it had already
        been stopped (it is cleaned up all the same)."""
        error = json.dumps({"reason": reason, "detail": detail}, separators=(",", ":"))
        written = False
        for _ in range(FAIL_ATTEMPTS):
            current = await self.previews.load(session.id)
            if current is None or current.state == "stopping":
                break
            if current.state == "failed":
                written = True  # keep the first reason: it is usually the more useful one
                break
            args = [current.cursor, "state", "failed", "error", error]
            args += ["updated_at", repr(time.time())]
            where = [keys.session(session.id), keys.ROUTE_CHANGES, keys.lifecycle(session.id)]
            if await self._advance(keys=where, args=args):
                written = True
                break
        await teardown.clear(self.redis, session, keep_record=True)
        cid = session.container
        if cid and container == "destroy":
            await self.containers.destroy(cid, f"its session failed: {reason}", code)
        elif cid and container == "forget":
            await self.containers.forget(cid)
            decision(log, "container_forgotten", code, reason, counters=self.counters, cid=cid)
        if written:
            if self.previews.records is not None:  # the session's stop record
                await self.previews.records.failed(session, code, reason)
            decision(
                log,
                "session_failed",
                code,
                reason,
                level=logging.WARNING,
                counters=self.counters,
                sid=session.id,
                user=session.user,
                cid=cid,
                host=session.host,
            )
        return written

    async def stop(self, session: Session, code: str, reason: str) -> bool:
        """Stop the session like a user's DELETE (slot freed, container reset and pooled)."""
        stopped = await self.previews.stop(session, code=code, reason=reason)
        if stopped:
            decision(
                log,
                "session_stopped",
                code,
                reason,
                counters=self.counters,
                sid=session.id,
                user=session.user,
                cid=session.container,
            )
        return stopped
