"""Live progress as Server-Sent Events, relayed from the container's event stream.

Only this session's events (by session id, after the stream id the session began at) are
sent, each with ``id:`` = its stream id, so ``Last-Event-ID`` resumes exactly where a
dropped connection stopped. ``: ping`` comments keep proxies from timing the stream out.
The stream ends after ``ready`` or ``error``, when the preview is stopped, or when the
client goes away (Starlette cancels the generator on disconnect).

``?follow=1`` keeps it open after ``ready``: the preview's later state changes, read from
its lifecycle stream (``keys.lifecycle``, written by the scripts that make them) with one
blocking read at a time, are sent as events named after the state (``sleeping``,
``ready``, ``hibernated``, ``resuming``, ``failed``, ``stopped``), with ``id: L<stream
id>`` so that a reconnect resumes there; ``failed`` or ``stopped`` ends it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from starlette.responses import StreamingResponse

from gateway.errors import ApiError
from gateway.sessions.store import Session, event_entries
from shared import keys
from shared.lifecycle import ENDS, LIFECYCLE_STATES
from shared.redis_types import text

PING_INTERVAL = 15.0
FOLLOWERS_PER_USER = 10  # open follow streams per user and gateway
TERMINAL = ("ready", "error")
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
LIFECYCLE_ID = re.compile(r"^L(\d{1,20}-\d{1,20})$")


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def start_cursor(session: Session, last_event_id: str | None) -> str:
    """Where to read from: the session's start, or a later `Last-Event-ID`."""
    begin = session.events_from or "0-0"
    if last_event_id is None or last_event_id == "":
        return begin
    if not STREAM_ID.fullmatch(last_event_id):
        raise ApiError(400, "bad_request", "Last-Event-ID must be an id this stream sent")
    return last_event_id if _id(last_event_id) > _id(begin) else begin


def frame(stream_id: str, kind: str, data: dict[str, object]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {stream_id}\nevent: {kind}\ndata: {payload}\n\n".encode()


def _until_ping(last_write: float) -> int:
    """Milliseconds a read may block before the next ``: ping`` is due."""
    return max(1, int((PING_INTERVAL - (time.monotonic() - last_write)) * 1000))


async def _quiet(last_write: float, alive: Callable[[], Awaitable[bool]]) -> bool | None:
    """Whether a ping is due after nothing was sent since ``last_write``; None when the
    preview is gone meanwhile (the stream ends)."""
    if time.monotonic() - last_write < PING_INTERVAL:
        return False
    return True if await alive() else None


async def relay(
    redis: Redis,
    session: Session,
    cursor: str,
    alive: Callable[[], Awaitable[bool]],
    finished: bool,
) -> AsyncIterator[bytes]:
    """The SSE byte stream. `finished`: the session is already ready/failed, so once the
    backlog is sent there is nothing left to wait for. `redis` must allow reads blocking
    for PING_INTERVAL (no shorter socket timeout)."""
    stream = keys.events(session.container)
    yield b"retry: 2000\n\n"
    last_write = time.monotonic()
    while True:
        block = None if finished else _until_ping(last_write)
        reply: Any = await redis.xread({stream: cursor}, count=200, block=block)
        entries: list[Any] = reply[0][1] if reply else []
        if entries:
            last = entries[-1][0]
            cursor = last.decode() if isinstance(last, bytes) else str(last)
        for stream_id, event in event_entries(entries, session.id):
            yield frame(stream_id, event.type, event.data)
            last_write = time.monotonic()
            if event.type in TERMINAL:
                return
        if finished and not entries:
            return
        quiet = await _quiet(last_write, alive)
        if quiet is None:
            return
        if quiet:
            yield b": ping\n\n"
            last_write = time.monotonic()


def resumed_lifecycle(last_event_id: str | None) -> str | None:
    """The lifecycle stream id a follower's ``Last-Event-ID`` names (None: it names none,
    the start's events come first)."""
    found = LIFECYCLE_ID.fullmatch(last_event_id or "")
    return found.group(1) if found else None


async def lifecycle_now(redis: Redis, sid: str) -> str:
    """The newest lifecycle entry's id: what a new follower's current state already says."""
    newest: Any = await redis.xrevrange(keys.lifecycle(sid), count=1)
    return text(newest[0][0]) if newest else "0-0"


class Followers:
    """Open ``follow`` streams per user at this gateway: each holds a blocking Redis
    connection for as long as the preview lives, so one user gets at most ``limit``."""

    def __init__(self, limit: int = FOLLOWERS_PER_USER) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def take(self, user: str) -> None:
        if self.open.get(user, 0) >= self.limit:
            raise ApiError(
                429,
                "too_many_streams",
                f"at most {self.limit} followed event streams at once; close one first",
            )
        self.open[user] = self.open.get(user, 0) + 1

    async def held(self, user: str, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``body``, counted for ``user`` (taken already) until it ends or is cancelled."""
        try:
            async for chunk in body:
                yield chunk
        finally:
            left = self.open.get(user, 1) - 1
            if left > 0:
                self.open[user] = left
            else:
                self.open.pop(user, None)


def _fields(raw: Any) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


async def follow(
    redis: Redis,
    sid: str,
    cursor: str,
    alive: Callable[[], Awaitable[bool]],
    last: str = "",
) -> AsyncIterator[bytes]:
    """The preview's state changes after ``cursor``, until it fails or stops. ``last``: the
    state the client already knows (not sent twice in a row: a start's ``ready`` is also in
    the lifecycle stream). ``redis`` as for ``relay``."""
    stream = keys.lifecycle(sid)
    last_write = time.monotonic()
    while True:
        reply: Any = await redis.xread({stream: cursor}, count=50, block=_until_ping(last_write))
        for raw_id, fields in reply[0][1] if reply else []:
            cursor = text(raw_id)
            state, at = _change(_fields(fields), last)
            if state:
                last, last_write = state, time.monotonic()
                yield frame(f"L{cursor}", state, {"state": state, "at": at})
            if state in ENDS:
                return
        if (quiet := await _quiet(last_write, alive)) is None:
            return
        if quiet:
            yield b": ping\n\n"
            last_write = time.monotonic()


def _change(entry: dict[str, str], last: str) -> tuple[str, float]:
    """A lifecycle entry's news: its state and time, or "" when it is none (a state no
    client knows, or the one it heard last)."""
    state = entry.get("state", "")
    if state not in LIFECYCLE_STATES or state == last:
        return "", 0.0
    try:
        return state, float(entry.get("at") or 0)
    except ValueError:
        return state, 0.0


async def followed(
    redis: Redis,
    session: Session,
    cursor: str,
    since: str,
    alive: Callable[[], Awaitable[bool]],
    replay: bool,
) -> AsyncIterator[bytes]:
    """A ``follow`` stream: the start's events as ``relay`` sends them (``replay``; a
    preview asleep, hibernated or resuming without a container yet gets its current state
    instead), then its state changes after ``since`` until it fails or stops."""
    last = ""
    if not replay:
        yield b"retry: 2000\n\n"
        # The state the client last heard: a repeat of it is not news.
        seen: Any = await redis.xrange(keys.lifecycle(session.id), since, since, count=1)
        last = _fields(seen[0][1]).get("state", "") if seen else ""
    elif session.state in ("sleeping", "hibernated") or not session.container:
        yield b"retry: 2000\n\n"
        last = session.state
        yield frame(f"L{since}", last, {"state": last, "at": session.updated_at})
    else:
        async for chunk in relay(redis, session, cursor, alive, session.state == "ready"):
            yield chunk
        if session.state == "failed":
            return
        last = "ready"  # or its start failed: then `failed` follows and ends it
    async for chunk in follow(redis, session.id, since, alive, last):
        yield chunk


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
