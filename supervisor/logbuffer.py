"""Output of installs and the dev server: a bounded ring buffer of lines, read from child
pipes, and a throttled snapshot of its tail in Redis for the gateway's ``/logs``."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.messages import LOG_LINES

log = logging.getLogger(__name__)

MAX_LINE = 4000  # characters kept of one line (minified bundles print huge ones)
SNAPSHOT_LINES = 200
# CSI and OSC escape sequences: colours, cursor movement, terminal titles.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def clean(line: str) -> str:
    line = _ANSI.sub("", line).rstrip("\r\n")
    # A progress bar redraws itself with \r: the last frame is what a person saw.
    line = line.rsplit("\r", 1)[-1]
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + "…"


class LogBuffer:
    """The last ``maxlen`` lines of output; ``version`` changes whenever a line is added."""

    def __init__(self, maxlen: int = LOG_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=maxlen)
        self.version = 0
        self.appended_at: float | None = None  # monotonic time of the last line
        self.on_change: Callable[[], None] | None = None  # publish_snapshots' wake-up

    def append(self, line: str) -> None:
        self._lines.append(clean(line))
        self.appended_at = time.monotonic()
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def tail(self, n: int) -> list[str]:
        if n <= 0:
            return []
        return list(self._lines)[-n:]

    def clear(self) -> None:
        self._lines.clear()
        self._changed()


async def pump(stream: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Feed ``stream``'s lines to ``on_line`` until EOF. Reads in chunks, so a line longer
    than the reader's limit cannot break it."""
    pending = b""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            on_line(raw.decode(errors="replace"))
        if len(pending) > 4 * MAX_LINE:
            on_line(pending.decode(errors="replace"))
            pending = b""
    if pending:
        on_line(pending.decode(errors="replace"))


async def publish_snapshots(
    redis: Redis, cid: str, buffer: LogBuffer, interval: float = 1.0
) -> None:
    """Refresh ``keys.logs(cid)`` at most once per ``interval`` while lines arrive. Woken
    by the buffer, not by a timer: a quiet (or frozen) dev server costs no wake-ups."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:
        # Lines may come from worker threads (to_thread): the event belongs to the loop.
        if not changed.is_set():
            loop.call_soon_threadsafe(changed.set)

    buffer.on_change = wake
    published = buffer.version
    try:
        while True:
            await changed.wait()
            changed.clear()
            if buffer.version == published:
                continue
            version = buffer.version
            try:
                await redis.set(
                    keys.logs(cid), "\n".join(buffer.tail(SNAPSHOT_LINES)), ex=keys.LOGS_TTL
                )
                published = version
            except RedisError as exc:
                log.warning("logs snapshot not written: %s", exc)
                changed.set()  # the lines are still to publish
            await asyncio.sleep(interval)  # at most one write per interval
    finally:
        buffer.on_change = None
