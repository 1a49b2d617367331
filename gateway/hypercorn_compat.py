"""Eight fixes to hypercorn's internals, applied once at start-up; the proxy and shutdown
tests pin the behaviour, so an upgrade that changes these internals fails loudly.

- Hypercorn answers a client's close frame itself and then tells the application only 1000
  or 1006 (pgjones/hypercorn#127), so a proxy cannot relay the browser's code to the dev
  server. We record the peer's close frame on the stream and put its code and reason
  (ASGI 2.5's `reason`) on `websocket.disconnect`.
- Closing a connection waits until its unsent data is flushed, so a client that stops
  reading (a stuck tab with WebSockets full of HMR messages) holds its connection, and
  the gateway's shutdown, forever. We abort such a connection after a grace: a short one
  once the server is shutting down.
- A request whose body the app never read (a refusal) fills the stream's queue, and
  hypercorn's `http.disconnect` then waits on it forever: the connection is wedged. We drop
  the unread messages.
- A connection the client closes while idle between keep-alive requests keeps its socket
  until keep_alive_timeout (75 s), so a client opening and closing connections exhausts
  the gateway's file descriptors. We stop the idle timer once the connection's reading is
  over.
- HTTP/2 priorities: Chromium chains its streams with exclusive dependencies, and
  hypercorn's priority tree then left a page's modules pending forever (4 of 12 loads of
  a 400-module Vite app through the gateway never finished; none with priorities
  ignored). RFC 9113 (5.3.2) deprecates that scheme and lets a server ignore it: every
  stream is served alike, in turn (a round robin; the tree's upkeep was 7% of the CPU at
  100 streams even then), and a response's last DATA frame ends its stream.
- Writes: hypercorn writes every piece on its own (an HTTP/1.1 response's head, then its
  body; an HTTP/2 HEADERS frame, each DATA frame, the end of each stream), each a send(2)
  and, over TLS, a record of its own. Loopback sends were a third of the proxy's CPU.
  What a connection is given to write in one turn of the event loop now goes out in one
  send at the end of that turn; past WRITE_HIGH bytes it is written at once and drained,
  so a client that does not read still holds the writer back as before.
- A response the app ends without its last body message (the proxy, when a dev server
  breaks off mid-body) was left open: HTTP/1.1 in mid-body (the client waits for bytes
  that never come), an HTTP/2 stream without END_STREAM. The connection is closed, the
  stream reset, so the client sees a broken transfer, never a short one that looks whole.
- The keep-alive timer was a task, cancelled and awaited as each request began and made
  anew as each ended (with asyncio.wait_for's inner task: four tasks per request). It is
  a timer handle now; the server's shutdown fires the armed ones at once, as the task
  returned when hypercorn's `terminated` event was set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import h2.errors
import h2.exceptions
import h11
from hypercorn.asyncio import tcp_server, worker_context
from hypercorn.asyncio.worker_context import EventWrapper
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import h2 as h2_protocol
from hypercorn.protocol import h11 as h11_protocol
from hypercorn.protocol import http_stream, ws_stream
from hypercorn.protocol.events import StreamClosed
from priority import priority
from wsproto.events import CloseConnection
from wsproto.events import Event as WSEvent

_PATCHED = "_preview_gateway_patched"
CLOSE_GRACE = 30.0  # to flush what a slow but live client has still to read
CLOSE_GRACE_TERMINATED = 1.0
INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR  # an HTTP/2 stream cut short
WRITE_HIGH = 64 * 1024  # bytes gathered in one turn before writing (and draining) at once


def install() -> None:
    _install_close_codes()
    _install_close_grace()
    _install_unread_body_close()
    _install_release_on_eof()
    _install_ignore_priorities()
    _install_write_coalescing()
    _install_idle_timer()
    _install_abort_unended()


class _Terminated(EventWrapper):
    """A worker's `terminated` event that also fires the idle connections' timers."""

    def __init__(self) -> None:
        super().__init__()
        self.idle: set[IdleTimer] = set()

    async def set(self) -> None:
        await super().set()
        for timer in list(self.idle):
            timer.fire()


class IdleTimer:
    """hypercorn's TCPServer.idle_task (restart, stop) as a timer handle: when it fires
    the connection is closed, as hypercorn's `_idle_timeout` closed it."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._handle: asyncio.TimerHandle | None = None

    def _armed(self) -> set[IdleTimer]:
        return getattr(self._server.context.terminated, "idle", set())

    async def restart(self, task_group: Any = None, action: Any = None) -> None:
        self._cancel()
        if self._server.context.terminated.is_set():
            self.fire()
            return
        delay = self._server.config.keep_alive_timeout
        self._handle = asyncio.get_running_loop().call_later(delay, self.fire)
        self._armed().add(self)

    async def stop(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed().discard(self)

    def fire(self) -> None:
        self._cancel()
        task = asyncio.get_running_loop().create_task(self._server._initiate_server_close())
        _closing.add(task)  # a strong reference until it is done
        task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


def _install_idle_timer() -> None:
    server_cls: Any = tcp_server.TCPServer
    if getattr(server_cls, "_preview_gateway_idle_timer", False):
        return
    original_server_init = server_cls.__init__
    context_cls: Any = worker_context.WorkerContext
    original_context_init = context_cls.__init__

    def server_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_server_init(self, *args, **kwargs)
        self.idle_task = IdleTimer(self)

    def context_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_context_init(self, *args, **kwargs)
        self.terminated = _Terminated()

    server_cls.__init__ = server_init
    context_cls.__init__ = context_init
    server_cls._preview_gateway_idle_timer = True


def _flush_pending(server: Any) -> None:
    """Write what `server` gathered this turn, in one send."""
    pending: list[bytes] = server._preview_pending
    if not pending:
        return
    data = pending[0] if len(pending) == 1 else b"".join(pending)
    pending.clear()
    server._preview_pending_size = 0
    transport = server.writer.transport
    if transport.is_closing():
        return  # going away: its reader sees the end and closes the connection
    try:
        transport.write(data)
    except (ConnectionError, RuntimeError):
        transport.abort()  # the same: the reader ends, the connection closes


def _install_write_coalescing() -> None:
    cls: Any = tcp_server.TCPServer
    if getattr(cls, "_preview_gateway_coalesced", False):
        return
    original_protocol_send = cls.protocol_send
    original_close = cls._close

    async def protocol_send(self: Any, event: Event) -> None:
        if not isinstance(event, RawData):
            await original_protocol_send(self, event)
            return
        pending: list[bytes] | None = getattr(self, "_preview_pending", None)
        if pending is None:
            pending = self._preview_pending = []
        if not pending:
            self.loop.call_soon(_flush_pending, self)
            self._preview_pending_size = 0
        pending.append(event.data)
        self._preview_pending_size += len(event.data)
        size = self._preview_pending_size + self.writer.transport.get_write_buffer_size()
        if size >= WRITE_HIGH:
            _flush_pending(self)
            # Hypercorn's own write of nothing: drains, and turns a broken connection
            # into its Closed as it always did.
            await original_protocol_send(self, RawData(data=b""))

    async def _close(self: Any) -> None:
        if getattr(self, "_preview_pending", None):
            _flush_pending(self)  # a response's last bytes before the end of the stream
        await original_close(self)

    cls.protocol_send = protocol_send
    cls._close = _close
    cls._preview_gateway_coalesced = True


class RoundRobin:
    """What hypercorn's send task asks of its priority tree (insert, block, unblock,
    remove, next), without priorities: the streams with data take turns. The tree's
    removal walked a list of every open stream (7% of the CPU at 100 streams)."""

    def __init__(self) -> None:
        self._streams: set[int] = set()
        self._ready: dict[int, None] = {}  # unblocked streams in turn order

    def insert_stream(self, stream_id: int, *args: Any, **kwargs: Any) -> None:
        if stream_id in self._streams:
            raise priority.DuplicateStreamError(stream_id)
        self._streams.add(stream_id)
        self._ready[stream_id] = None

    def _known(self, stream_id: int) -> None:
        if stream_id not in self._streams:
            raise priority.MissingStreamError(stream_id)

    def remove_stream(self, stream_id: int) -> None:
        self._known(stream_id)
        self._streams.discard(stream_id)
        self._ready.pop(stream_id, None)

    def block(self, stream_id: int) -> None:
        self._known(stream_id)
        self._ready.pop(stream_id, None)

    def unblock(self, stream_id: int) -> None:
        self._known(stream_id)
        self._ready.setdefault(stream_id, None)

    def reprioritize(self, stream_id: int, *args: Any, **kwargs: Any) -> None:
        self._known(stream_id)

    def __iter__(self) -> RoundRobin:
        return self

    def __next__(self) -> int:
        if not self._ready:
            raise priority.DeadlockError("no stream has data")
        stream_id = next(iter(self._ready))
        del self._ready[stream_id]
        self._ready[stream_id] = None  # its next turn comes after every other's
        return stream_id


def _install_ignore_priorities() -> None:
    """Every stream is served alike, in turn (RoundRobin); PRIORITY frames and the
    priority in HEADERS change nothing. And a response's last DATA frame carries
    END_STREAM (hypercorn sent an empty DATA frame after it, each a frame to build)."""
    cls: Any = h2_protocol.H2Protocol
    if getattr(cls, _PATCHED, False):
        return
    original_init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.priority = RoundRobin()

    async def _priority_updated(self: Any, event: Any) -> None:
        return None

    async def _send_data(self: Any, stream_id: int) -> None:
        # hypercorn 0.18's H2Protocol._send_data, with END_STREAM on the last DATA frame.
        try:
            buffer = self.stream_buffers[stream_id]
            chunk_size = min(
                self.connection.local_flow_control_window(stream_id),
                self.connection.max_outbound_frame_size,
            )
            data = await buffer.pop(max(0, chunk_size))
            done = buffer.complete
            if data:
                self.connection.send_data(stream_id, data, end_stream=done)
            elif done:
                self.connection.end_stream(stream_id)
            else:
                self.priority.block(stream_id)
            if data or done:
                await self._flush()
            if done:
                del self.stream_buffers[stream_id]
                self.priority.remove_stream(stream_id)
        except (h2.exceptions.StreamClosedError, KeyError, h2.exceptions.ProtocolError):
            # The stream or the connection closed while this waited: drop the stream.
            await self.stream_buffers[stream_id].close()
            del self.stream_buffers[stream_id]
            self.priority.remove_stream(stream_id)

    cls.__init__ = __init__
    cls._priority_updated = _priority_updated
    cls._send_data = _send_data
    setattr(cls, _PATCHED, True)


def _install_release_on_eof() -> None:
    """Hypercorn 0.17+ (asyncio) runs a connection inside an `asyncio.TaskGroup` and closes
    its socket only after that group exits (`TCPServer.run`'s `finally: _close()`). The
    keep-alive timer (`_idle_timeout`, restarted on `Updated(idle=True)` after every
    response) is a task of that group, and nothing stops it when `_read_data` returns at
    the client's EOF: the group waits for it, so the fd and buffers stay until
    keep_alive_timeout. (Older hypercorn ran that timer as a plain loop task outside the
    group, so EOF closed the socket at once, as pgjones/hypercorn#235 describes; we found
    no upstream issue or fix for this as of 0.18.0.) Once reading is over, nothing can
    arrive for the timer to wait for: stop it, and do not restart it for an
    `Updated(idle=True)` that a finishing request may still send. A request still
    being answered has been told `http.disconnect` by hypercorn and keeps the group (and
    the socket) until its app task returns, as before; live keep-alive clients never reach
    EOF and keep their timer."""
    cls: Any = tcp_server.TCPServer
    if getattr(cls, "_preview_gateway_release_on_eof", False):
        return
    original_read_data = cls._read_data
    original_protocol_send = cls.protocol_send

    async def _read_data(self: Any) -> None:
        await original_read_data(self)  # not on cancellation: the group is going anyway
        self._preview_read_done = True
        await self.idle_task.stop()

    async def protocol_send(self: Any, event: Event) -> None:
        if isinstance(event, Updated) and event.idle and getattr(self, "_preview_read_done", False):
            return
        await original_protocol_send(self, event)

    cls._read_data = _read_data
    cls.protocol_send = protocol_send
    cls._preview_gateway_release_on_eof = True


def _install_unread_body_close() -> None:
    """An app that answers without reading the request body (a 401, 404, 413...) leaves it
    in the stream's queue (max_app_queue_size messages); once that is full,
    hypercorn's own `http.disconnect` put blocks forever, so the connection neither closes
    nor serves its next keep-alive request. Drop what the app never read instead."""
    cls: Any = http_stream.HTTPStream
    if getattr(cls, _PATCHED, False):
        return
    original_handle = cls.handle

    async def handle(self: Any, event: Any) -> None:
        if isinstance(event, StreamClosed):
            queue = getattr(getattr(self, "app_put", None), "__self__", None)
            while isinstance(queue, asyncio.Queue) and queue.full():
                queue.get_nowait()
        await original_handle(self, event)

    cls.handle = handle
    setattr(cls, _PATCHED, True)


def _install_close_grace() -> None:
    cls: Any = tcp_server.TCPServer
    if getattr(cls, _PATCHED, False):
        return
    original_close = cls._close

    async def _close(self: Any) -> None:
        grace = CLOSE_GRACE_TERMINATED if self.context.terminated.is_set() else CLOSE_GRACE
        abort = asyncio.get_running_loop().call_later(grace, self.writer.transport.abort)
        try:
            await original_close(self)
        finally:
            abort.cancel()

    cls._close = _close
    setattr(cls, _PATCHED, True)


def _install_close_codes() -> None:
    cls: Any = ws_stream.WSStream
    if getattr(cls, _PATCHED, False):
        return
    original_events = cls._handle_events
    original_handle = cls.handle

    async def _handle_events(self: Any) -> None:
        events = self.connection.events

        def capture() -> Iterator[WSEvent]:
            for event in events():
                if isinstance(event, CloseConnection):
                    self._peer_close = (event.code, event.reason or "")
                yield event

        self.connection.events = capture
        try:
            await original_events(self)
        finally:
            del self.connection.events

    async def handle(self: Any, event: Any) -> None:
        peer = getattr(self, "_peer_close", None)
        if isinstance(event, StreamClosed) and peer and self.app_put is not None:
            put = self.app_put

            async def app_put(message: dict[str, Any]) -> None:
                if message.get("type") == "websocket.disconnect":
                    message = {**message, "code": peer[0], "reason": peer[1]}
                await put(message)

            self.app_put = app_put
        await original_handle(self, event)

    cls._handle_events = _handle_events
    cls.handle = handle
    setattr(cls, _PATCHED, True)


def _install_abort_unended() -> None:
    """StreamClosed on an HTTP response still in its body: close the HTTP/1.1 connection,
    reset the HTTP/2 stream (a finished one has its buffer complete, or gone, by then:
    EndBody waits until the buffer is drained)."""
    h11_cls: Any = h11_protocol.H11Protocol
    if getattr(h11_cls, "_preview_gateway_abort_unended", False):
        return
    h11_send = h11_cls.stream_send
    h2_cls: Any = h2_protocol.H2Protocol
    h2_send = h2_cls.stream_send

    async def h11_stream_send(self: Any, event: Any) -> None:
        cut = isinstance(event, StreamClosed) and self.connection.our_state is h11.SEND_BODY
        await h11_send(self, event)
        if cut:
            await self.send(Closed())

    async def h2_stream_send(self: Any, event: Any) -> None:
        # An HTTP response only: a WebSocket's stream ends with its close frame unended.
        if isinstance(event, StreamClosed) and isinstance(
            self.streams.get(event.stream_id), http_stream.HTTPStream
        ):
            buffer = self.stream_buffers.get(event.stream_id)
            if buffer is not None and not buffer._complete:
                # Already closed, the stream or the connection: nothing to reset.
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.connection.reset_stream(event.stream_id, INTERNAL_ERROR)
                    await self._flush()
                # Its next send turn finds it closed and drops it, as after a client's reset.
                await buffer.close()
                with contextlib.suppress(priority.MissingStreamError):
                    self.priority.unblock(event.stream_id)
                await self.has_data.set()
        await h2_send(self, event)

    h11_cls.stream_send = h11_stream_send
    h2_cls.stream_send = h2_stream_send
    h11_cls._preview_gateway_abort_unended = True
