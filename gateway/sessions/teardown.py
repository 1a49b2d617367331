"""The one cleanup of an ended session, whichever way it ended: stopped (after its
container was released), failed by the controller, a start undone, or a start abandoned
by a gateway that died. What differs between those is decided by the callers (the record
kept a while for a failed one; the container released, destroyed or forgotten); the keys
cleaned here are the same for all, so that no path leaves one behind.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from gateway.sessions import slots
from gateway.sessions.store import Session
from shared import keys


async def clear(redis: Redis, session: Session, keep_record: bool = False) -> None:
    """Free the session's slot (and wake its user's waiting starts), drop it from the live
    sessions (and the hibernated ones) with its activity keys, delete its record
    (`keep_record`: let it expire after STOPPED_SESSION_TTL, for the proxy's error page and
    its owner's GET) and tell every gateway that its route changed. Idempotent."""
    await slots.release(redis, session.user, session.id, session.project_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.srem(keys.SESSIONS, session.id)
        pipe.delete(keys.activity(session.id), keys.requested(session.id))
        pipe.zrem(keys.user_hibernated(session.user), session.id)
        pipe.zrem(keys.HIBERNATED, session.id)
        # Its followers' end: they read it and close (a reconnect within the TTL too).
        lifecycle = keys.lifecycle(session.id)
        pipe.xadd(
            lifecycle,
            {"state": "stopped", "at": repr(time.time())},
            maxlen=keys.LIFECYCLE_MAXLEN,
            approximate=True,
        )
        pipe.expire(lifecycle, keys.LIFECYCLE_ENDED_TTL)
        if keep_record:
            pipe.expire(keys.session(session.id), keys.STOPPED_SESSION_TTL)
        else:
            pipe.delete(keys.session(session.id))
        pipe.publish(keys.ROUTE_CHANGES, session.id)
        await pipe.execute()
