"""A lean HTTP/1.1 client for proxying to dev servers: keep-alive pool, streaming both ways.

About 410 lines, kept whole: the connection protocol, the response and the pool share
private state (a connection goes back to the pool from the response) on the hot path.

General-purpose clients (httpx, aiohttp) cost more per request than hypercorn itself on
this path (bench/bench_proxy.py measures a naive httpx proxy beside ours). This one does only
what a reverse proxy needs: write the request head as bytes, stream the body, parse the
response with httptools (llhttp, in C), hand body chunks over a small bounded queue (reading
pauses when it is full), and put the connection back in the pool when the response ended
cleanly. No cookies, no redirects, no decompression.

The dev server is the user's own code, so what it sends is bounded as it arrives: a
response head (with any 1xx heads before it) of at most MAX_HEAD_BYTES and MAX_HEAD_LINES
header lines, else the connection is dropped at the bound and the request fails, and never
more than MAX_HEAD_BYTES parsed without body progress later (trailers, chunk extensions).
httptools builds a header value by concatenation, so an unbounded one costs memory and
quadratic CPU on the gateway's only event loop: that is what stalled every user.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable
from typing import cast

import httptools

from gateway.proxy import relay_dial
from gateway.proxy.relay_dial import RelayDialer


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange."""


class UpstreamRefused(UpstreamError):
    """Connecting was refused (nothing listens): usually a dev server that is down."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamBadResponse(UpstreamError):
    """The upstream answered with bytes we will not relay (malformed or over a bound).

    Messages never name the upstream's address: they reach the client's error page."""


MAX_HEAD_BYTES = 64 * 1024
MAX_HEAD_LINES = 100
_QUEUE_HIGH = 16  # body chunks buffered before reading from the upstream pauses
# ... or bytes: a socket read may be 256 KiB, and an HTTP/2 client holds up to
# H2_MAX_STREAMS responses per connection (gateway/server/listen.py) that it may not read.
_QUEUE_BYTES = 256 * 1024
_EOF = b""


class _Stop(Exception):
    """Raised in a parser callback to stop parsing at once (the reason is already set)."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool_key: str) -> None:
        self.pool_key = pool_key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reusable = False
        self._head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: collections.deque[bytes] = collections.deque()
        self._queued = 0  # bytes in _body
        self._body_ready = asyncio.Event()
        self._done = False
        self._error: Exception | None = None
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._can_write = True
        self.received = 0  # bytes of the current exchange: 0 means it may be retried
        self._in_head = True  # the final (non-1xx) head is not complete yet
        self._lines = 0  # header lines of the head (or trailer section) being parsed
        self._unframed = 0  # bytes parsed without progress (head, trailers, chunk sizes)
        self._progress = False

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._done or self._error is not None:
            # Bytes after the response ended (or after we gave up on it): whatever they
            # are, the next request must not read them as its answer.
            self._reusable = False
            self.close()
            return
        self.received += len(data)
        view = memoryview(data)
        while view:
            # While in the head, feed no more than the bound allows: the head is refused
            # at its 64 KiB + 1st byte, whatever size the socket reads come in.
            part = view[: MAX_HEAD_BYTES - self._unframed] if self._in_head else view
            view = view[len(part) :]
            self._progress = False
            try:
                self.parser.feed_data(part)
            except httptools.HttpParserError as exc:  # HttpParserUpgrade included
                if self._done:  # more bytes after a complete response
                    self._reusable = False
                    self.close()
                elif self._error is None:
                    self._abort(
                        UpstreamBadResponse(f"malformed response from the dev server: {exc}")
                    )
                return
            self._unframed = 0 if self._progress else self._unframed + len(part)
            if self._unframed >= MAX_HEAD_BYTES:
                what = "response head" if self._in_head else "trailer section"
                self._abort(
                    UpstreamBadResponse(
                        f"the dev server's {what} is over {MAX_HEAD_BYTES >> 10} KiB"
                    )
                )
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._done:
            self._fail(UpstreamError("upstream closed the connection mid-response"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamError("upstream closed while we wrote"))

    def pause_writing(self) -> None:
        self._can_write = False

    def resume_writing(self) -> None:
        self._can_write = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._done:
            raise _Stop  # a second response to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        self._lines += 1
        if self._lines > MAX_HEAD_LINES:
            what = "response head" if self._in_head else "trailer section"
            self._abort(
                UpstreamBadResponse(
                    f"the dev server's {what} has over {MAX_HEAD_LINES} header lines"
                )
            )
            raise _Stop
        if self._in_head:
            self._headers.append((name, value))
        # Trailers are counted, not kept: we do not relay them.

    def on_headers_complete(self) -> None:
        self._lines = 0
        if not self._in_head:
            return  # the end of the trailer section
        status = self.parser.get_status_code()
        if status == 101:
            # We never ask to upgrade a plain request (Upgrade is hop-by-hop, dropped).
            self._abort(UpstreamBadResponse("the dev server switched protocols unasked"))
            raise _Stop
        if 100 <= status < 200:
            # Informational (100 Continue, 103 Early Hints): not relayed; the final head
            # follows. Their bytes count towards the same bound, so an endless series
            # of them is cut like one endless head.
            self._headers = []
            return
        self._in_head = False
        self._progress = True
        if self._head is not None and not self._head.done():
            self._head.set_result((status, self._headers))

    def on_body(self, body: bytes) -> None:
        self._progress = True
        self._body.append(body)
        self._queued += len(body)
        self._body_ready.set()
        full = len(self._body) >= _QUEUE_HIGH or self._queued >= _QUEUE_BYTES
        if full and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._in_head:
            return  # an informational response ended
        self._progress = True
        self._done = True
        self._reusable = self.parser.should_keep_alive()
        self._body_ready.set()

    # --- used by the pool ---------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        if self._error is None:  # the first reason is the one worth reporting
            self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._body_ready.set()
        self._reusable = False

    def _abort(self, exc: Exception) -> None:
        """Give up on this connection now: nothing more is read from it."""
        self._fail(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def start(self) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]]:
        self.parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._body.clear()
        self._queued = 0
        self._body_ready.clear()
        self._done = False
        self._error = None
        self._reusable = False
        self.received = 0
        self._in_head = True
        self._lines = self._unframed = 0
        self._head = asyncio.get_running_loop().create_future()
        return self._head

    async def write(self, data: bytes) -> None:
        assert self.transport is not None
        if self.closed:
            raise UpstreamError("upstream closed the connection")
        self.transport.write(data)
        if not self._can_write:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            while self._body:
                chunk = self._body.popleft()
                self._queued -= len(chunk)
                low = len(self._body) < _QUEUE_HIGH // 2 and self._queued < _QUEUE_BYTES // 2
                if self._paused and low and self.transport:
                    self._paused = False
                    self.transport.resume_reading()
                yield chunk
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._body_ready.clear()
            await self._body_ready.wait()

    @property
    def reusable(self) -> bool:
        return self._done and self._reusable and not self.closed and not self._paused

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(future: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class UpstreamResponse:
    """Status, headers and a body to iterate once; `release()` must always follow."""

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Connection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        head_only: bool,
    ) -> None:
        self._pool = pool
        self._conn = conn
        self.status = status
        self.headers = headers
        self._head_only = head_only
        self._released = False

    async def body(self) -> AsyncIterator[bytes]:
        if self._head_only or self.status in (204, 304) or 100 <= self.status < 200:
            return
        async for chunk in self._conn.body():
            yield chunk

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._head_only or not self._conn.reusable:
            self._conn.close()
        else:
            self._pool._put(self._conn)


class UpstreamPool:
    """Idle keep-alive connections per upstream address ("host:port"). As many are kept
    as one HTTP/2 page may ask for at once (H2_MAX_STREAMS): with fewer, each burst of a
    page's modules closed the rest after it and opened them again for the next load."""

    def __init__(
        self,
        max_idle_per_host: int = 100,
        connect_timeout: float = 5.0,
        head_timeout: float = 60.0,
        dialer: RelayDialer | None = None,
    ) -> None:
        self.max_idle = max_idle_per_host
        self.connect_timeout = connect_timeout
        self.head_timeout = head_timeout
        self.dialer = dialer  # for other ports behind a port relay (relay_dial.py)
        self._idle: dict[str, list[_Connection]] = {}

    async def _open(self, address: str) -> tuple[asyncio.Transport, _Connection]:
        loop = asyncio.get_running_loop()
        target = relay_dial.parse(address)
        if target is not None and self.dialer is not None:
            sock = await self.dialer.dial(target)
            return await loop.create_connection(lambda: _Connection(address), sock=sock)
        host, _, port = address.rpartition(":")
        return await loop.create_connection(lambda: _Connection(address), host, int(port))

    async def _connect(self, address: str) -> _Connection:
        try:
            transport, conn = await asyncio.wait_for(self._open(address), self.connect_timeout)
        # Messages without the address: they reach the client's error page (the caller
        # logs the address).
        except ConnectionRefusedError as exc:
            raise UpstreamRefused("the dev server refused the connection") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout("connecting to the dev server timed out") from exc
        except OSError as exc:
            # Not str(exc): asyncio's names the address ("Connect call failed (ip, port)").
            reason = exc.strerror or "unreachable"
            raise UpstreamError(f"cannot connect to the dev server: {reason}") from exc
        conn.transport = transport
        return conn

    def _get_idle(self, address: str) -> _Connection | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def _put(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.pool_key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    def drop(self, address: str) -> None:
        """Close idle connections to an address (its container went away)."""
        for conn in self._idle.pop(address, []):
            conn.close()

    async def request(
        self,
        address: str,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
        head_only: bool = False,
    ) -> UpstreamResponse:
        """Send a request (head already serialised) and wait for the response head.

        A reused connection that turns out closed before any response byte is retried once
        on a fresh connection, but only for requests without a body (they are replayable).
        """
        conn = self._get_idle(address)
        reused = conn is not None
        for attempt in (0, 1):
            if conn is None:
                conn = await self._connect(address)
            head_future = conn.start()
            try:
                await conn.write(head)
                if body is not None:
                    async for chunk in body:
                        if chunk:
                            await conn.write(
                                b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
                            )
                    if chunked:
                        await conn.write(b"0\r\n\r\n")
                # A timer handle, not wait_for: this runs once per proxied request.
                timer = asyncio.get_running_loop().call_later(
                    self.head_timeout, _expire, head_future
                )
                try:
                    status, headers = await head_future
                finally:
                    timer.cancel()
            except TimeoutError:
                conn.close()
                raise UpstreamTimeout(
                    f"the dev server sent no complete response head in {self.head_timeout:g}s"
                ) from None
            except UpstreamError:
                conn.close()
                # Only a reused connection closed before any response byte: the server
                # timed it out. One that answered badly is not asked twice.
                if reused and attempt == 0 and body is None and not conn.received:
                    conn, reused = None, False
                    continue
                raise
            return UpstreamResponse(self, conn, status, headers, head_only)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def serialize_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
