"""Is the dev server answering? A raw HTTP GET (no client library in the container), and
the exponential backoff schedule used while waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

# A dev server compiles the first page on demand (Next.js: tens of seconds), so once
# connected we wait much longer for the answer than for the connection itself.
CONNECT_TIMEOUT = 2.0
RESPONSE_TIMEOUT = 30.0


@dataclass(frozen=True)
class ProbeResult:
    status: int | None  # None: no HTTP answer
    connected: bool
    error: str = ""

    @property
    def ready(self) -> bool:
        return self.status is not None and self.status < 500


async def probe(
    host: str,
    port: int,
    host_header: str,
    connect_timeout: float = CONNECT_TIMEOUT,
    response_timeout: float = RESPONSE_TIMEOUT,
) -> ProbeResult:
    """GET / with ``Host: host_header``; the status code of the answer, if any."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), connect_timeout
        )
    except (OSError, TimeoutError) as exc:
        return ProbeResult(None, False, str(exc) or type(exc).__name__)
    try:
        request = (
            f"GET / HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: preview-supervisor\r\n"
            "Accept: text/html,*/*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), response_timeout)
    except (OSError, TimeoutError) as exc:
        return ProbeResult(None, True, str(exc) or type(exc).__name__)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return ProbeResult(int(parts[1]), True)
    return ProbeResult(None, True, "not an HTTP answer")


def backoff(first: float = 0.1, factor: float = 2.0, cap: float = 2.0) -> Iterator[float]:
    """0.1, 0.2, 0.4, ... seconds, capped."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)
