"""Is the dev server answering? A raw HTTP GET (no client library in the container), and
the exponential backoff schedule used while waiting for it.

HTTP/1.0 (as the warm-up's requests): Node then answers without chunked encoding and
closes, so a body is simply read to EOF. The probe that finds the server ready may keep
the entry page it was answered, so the warm-up starts from it rather than asking the dev
server to render it again (Next.js renders every request: 40 to 500 ms on one CPU). A page
that streams on past BODY_TIMEOUT is kept as far as it came: `ready` does not wait for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

# A dev server compiles the first page on demand (Next.js: tens of seconds), so once
# connected we wait much longer for the answer than for the connection itself.
CONNECT_TIMEOUT = 2.0
RESPONSE_TIMEOUT = 30.0
MAX_BODY = 8 << 20  # bytes read of one answer (a pre-bundled dependency can be megabytes)
# The entry page's body once its status is in. A server render streams its page, and one
# that waits on a slow data source (or a route that is an event stream) may never end; its
# head, where the scripts are, has come long before.
BODY_TIMEOUT = 5.0


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer
    content_type: str = ""
    body: bytes = b""


@dataclass(frozen=True)
class ProbeResult:
    status: int | None  # None: no HTTP answer
    connected: bool
    error: str = ""
    page: Answer | None = None  # the whole answer, when asked for and it was a 2xx

    @property
    def ready(self) -> bool:
        return self.status is not None and self.status < 500


async def probe(
    host: str,
    port: int,
    host_header: str,
    connect_timeout: float = CONNECT_TIMEOUT,
    response_timeout: float = RESPONSE_TIMEOUT,
    keep_page: bool = False,
) -> ProbeResult:
    """GET / with ``Host: host_header``; the status code of the answer, if any, and with
    ``keep_page`` a 2xx answer's type and body, as much of it as came within BODY_TIMEOUT
    (and the response timeout)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), connect_timeout
        )
    except (OSError, TimeoutError) as exc:
        return ProbeResult(None, False, str(exc) or type(exc).__name__)
    try:
        request = (
            f"GET / HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: preview-supervisor\r\n"
            "Accept: text/html,*/*\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + response_timeout
        line = await asyncio.wait_for(reader.readline(), response_timeout)
        status = status_of(line)
        page = None
        if keep_page and status is not None and 200 <= status < 300:
            # The status is known: a body that fails only goes unkept, one that comes late
            # is kept as far as it came.
            with contextlib.suppress(*READ_ERRORS):
                left = deadline - asyncio.get_running_loop().time()
                page = await read_rest(reader, status, within=min(BODY_TIMEOUT, max(left, 0.0)))
    except (OSError, TimeoutError, ValueError) as exc:
        return ProbeResult(None, True, str(exc) or type(exc).__name__)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if status is None:
        return ProbeResult(None, True, "not an HTTP answer")
    return ProbeResult(status, True, page=page)


# ValueError: a line longer than the reader's limit (readline raises it, not LimitOverrunError).
READ_ERRORS = (
    OSError,
    TimeoutError,
    ValueError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)


def status_of(line: bytes) -> int | None:
    """The status code of an HTTP status line, None if it is not one."""
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


async def read_rest(
    reader: asyncio.StreamReader, status: int | None, within: float | None = None
) -> Answer:
    """After the status line (``status``, from ``status_of``): the answer, with its
    content type (lower case) and its body read to EOF, at most MAX_BODY bytes. No
    status: not an HTTP answer, nothing read. ``within`` seconds: the headers must have
    come by then (TimeoutError), the body is cut there."""
    if status is None:
        return Answer(None)
    loop = asyncio.get_running_loop()
    end = None if within is None else loop.time() + within

    def left() -> float | None:
        return None if end is None else max(end - loop.time(), 0.0)

    content_type = ""
    while (line := await asyncio.wait_for(reader.readline(), left())) not in (
        b"\r\n",
        b"\n",
        b"",
    ):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-type" and not content_type:
            content_type = value.strip().lower()
    body = b""
    with contextlib.suppress(TimeoutError):
        while len(body) < MAX_BODY and (
            more := await asyncio.wait_for(reader.read(MAX_BODY - len(body)), left())
        ):
            body += more
    return Answer(status, content_type, body)


def backoff(first: float = 0.1, factor: float = 2.0, cap: float = 2.0) -> Iterator[float]:
    """0.1, 0.2, 0.4, ... seconds, capped."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)
