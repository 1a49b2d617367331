"""The supervisor command channel: a command queued on its container's Redis stream, its
acknowledgement read from a list of its own, and where a new session's events begin.

The supervisor reads ``keys.commands(cid)`` as consumer group ``keys.COMMAND_GROUP`` and
pushes each ``CommandResult`` to ``keys.command_result(cid, id)`` (``supervisor/daemon.py``);
a command names the session it is for, and a supervisor refuses any other
(``supervisor/fence.py``).
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis

from shared import keys
from shared.messages import Command, CommandResult, MessageError
from shared.redis_types import text


class ContainerError(Exception):
    """A container could not be had or did not do what it was told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CommandChannel:
    """Commands to containers' supervisors over Redis (``Containers`` is one)."""

    redis: Redis

    async def submit(self, cid: str, command: Command, blob: bytes | None = None) -> None:
        """Queue a command; the supervisor picks it up even if it is still starting."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if blob is not None:
                pipe.set(keys.command_blob(cid, command.id), blob, ex=keys.COMMAND_BLOB_TTL)
            pipe.xadd(
                keys.commands(cid),
                cast("dict[Any, Any]", command.to_fields()),
                maxlen=keys.COMMANDS_MAXLEN,
                approximate=True,
            )
            await pipe.execute()

    async def send(
        self, cid: str, command: Command, blob: bytes | None = None, timeout: float = 30.0
    ) -> CommandResult:
        """Queue a command and wait for its acknowledgement."""
        await self.submit(cid, command, blob)
        return await self.result(cid, command.id, timeout)

    async def result(self, cid: str, command_id: str, timeout: float = 30.0) -> CommandResult:
        # A dedicated connection: BLPOP holds it for the whole wait.
        reply = await self.redis.blpop([keys.command_result(cid, command_id)], timeout=timeout)
        if reply is None:
            raise ContainerError(f"container {cid} did not answer within {timeout:.0f}s")
        try:
            return CommandResult.from_json(reply[1])
        except MessageError as exc:
            raise ContainerError(f"container {cid} sent a bad result: {exc}") from None

    async def events_cursor(self, cid: str) -> str:
        """The stream id after which events of a session starting now will appear."""
        last = await self.redis.xrevrange(keys.events(cid), count=1)
        return text(last[0][0]) if last else "0-0"
