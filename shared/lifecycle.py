"""A preview's state changes after its start, as the Lua the scripts making them share.

Every script that moves a session record into or out of ``sleeping``, ``hibernated`` or
``resuming`` (and the fold that turns it ``ready`` or ``failed``) appends the new state to
``keys.lifecycle(sid)`` in the same script, so the stream holds each change once and in the
order the record went through them; ``GET /v1/previews/{id}/events?follow=1`` relays it.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis

from shared import keys

# What a follower sees; `stopped` is written by the session's cleanup (teardown.clear).
LIFECYCLE_STATES = ("sleeping", "ready", "hibernated", "resuming", "failed", "stopped")
ENDS = frozenset({"failed", "stopped"})


def lua_note(key: str, state: str, at: str) -> str:
    """Lua statements appending ``state`` (a Lua expression) at ``at`` (unix seconds, a Lua
    expression) to the lifecycle stream ``key`` (a Lua expression, e.g. ``KEYS[4]``)."""
    return (
        f"redis.call('XADD', {key}, 'MAXLEN', '~', {keys.LIFECYCLE_MAXLEN}, '*', "
        f"'state', {state}, 'at', {at})\n"
        f"redis.call('EXPIRE', {key}, {keys.LIFECYCLE_TTL})\n"
    )


async def remember(redis: Redis, key: str, item: dict[str, object]) -> None:
    """Prepend ``item`` to one of the dashboard's capped recent lists (keys.RECENT_*)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush(key, json.dumps(item, separators=(",", ":")))
        pipe.ltrim(key, 0, keys.RECENT_TRANSITIONS - 1)
        await pipe.execute()
