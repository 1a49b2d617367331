"""Live progress as Server-Sent Events, relayed from the container's event stream.

Only this session's events (by session id, after the stream id the session began at) are
sent, each with ``id:`` = its stream id, so ``Last-Event-ID`` resumes exactly where a
dropped connection stopped. ``: ping`` comments keep proxies from timing the stream out.
The stream ends after ``ready`` or ``error``, when the preview is stopped, or when the
client goes away (Starlette cancels the generator on disconnect).
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

PING_INTERVAL = 15.0
TERMINAL = ("ready", "error")
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


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
        block = (
            None
            if finished
            else max(1, int((PING_INTERVAL - (time.monotonic() - last_write)) * 1000))
        )
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
        if time.monotonic() - last_write >= PING_INTERVAL:
            if not await alive():
                return
            yield b": ping\n\n"
            last_write = time.monotonic()


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
