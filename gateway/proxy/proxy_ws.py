"""WebSocket relay between a browser (ASGI) and a preview's dev server (HMR).

Accepts with the upstream's chosen subprotocol, then two named relay tasks; the first to
finish ends both. Close codes and reasons cross in both directions; an error is 1011.
Queues are bounded on both sides (hypercorn's app queue, websockets' max_queue) to a
couple of messages, so a slow browser stalls its upstream instead of growing memory.
Message size, idle time and lifetime are limited, and the bytes a client's relays hold
count against its budget (gateway/proxy/ws_budget.py): over it, the biggest holders close with
1008. On shutdown every relay closes with 1001 so the HMR client reconnects (to another
replica). The dev server's handshake response is bounded like an HTTP response head (its
bytes, its header lines, and HANDSHAKE_TIMEOUT); a failed handshake is answered with an
HTTP 502/504 JSON error, as the HTTP proxy answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.typing import Subprotocol

from gateway.asgi_types import Receive, Scope, Send
from gateway.observability import instruments
from gateway.proxy import relay_dial
from gateway.proxy.cookies import strip_ours
from gateway.proxy.proxy_http import target
from gateway.proxy.relay_dial import RelayDialer
from gateway.proxy.upstream import MAX_HEAD_BYTES, MAX_HEAD_LINES
from gateway.proxy.ws_budget import Account, frame_size

log = logging.getLogger(__name__)

# Headers the browser sent that the dev server may care about; the rest are the
# handshake's own (recomputed by our client) or hop-by-hop.
_PASS = frozenset({b"origin", b"cookie", b"user-agent", b"accept-language", b"authorization"})
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
TOO_BIG = 1009
POLICY = 1008
CLOSE_SEND_TIMEOUT = 1.0
UPSTREAM_READ_AHEAD = 2
HANDSHAKE_TIMEOUT = 10.0  # the whole upstream handshake, however slowly it trickles in
_UNSENDABLE = {1005, 1006, 1015}  # reserved codes that must not appear in a close frame


class CountedConnection(ClientConnection):
    """The dev server's side: every byte read from its socket (the library's read-ahead
    too) is taken from the relay's account."""

    account: Account | None = None
    head_bytes = 0  # of the handshake response: bounded like an HTTP response head

    def data_received(self, data: bytes) -> None:
        if self.protocol.state is State.CONNECTING and self.protocol.handshake_exc is None:
            # Feed no more of the handshake response than the bound: websockets alone
            # would take 128 lines of 8 KiB each.
            room = MAX_HEAD_BYTES - self.head_bytes
            if room <= 0:
                self.transport.abort()
                return
            self.head_bytes += min(len(data), room)
            super().data_received(data[:room] if len(data) > room else data)
            if self.protocol.state is State.CONNECTING and self.protocol.handshake_exc is None:
                if self.head_bytes >= MAX_HEAD_BYTES:
                    self.transport.abort()  # connect() fails: no valid response
                return
            data = data[room:]
            if not data:
                return
        super().data_received(data)
        if self.account is not None and self.account.take(len(data)):
            # The client is over its budget: no more from here until it is back under.
            self.transport.pause_reading()
            self.account.resume = self.transport.resume_reading


def encoded_size(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return len(data)
    return len(data) if data.isascii() else len(data.encode())


@dataclass(frozen=True)
class WsLimits:
    max_message_bytes: int = 16 * 1024 * 1024
    idle_timeout: float = 600.0
    max_lifetime: float = 8 * 3600.0


class RelayRegistry:
    """Open relays, so shutdown can close them all with 1001 within a deadline."""

    def __init__(self) -> None:
        self.open: set[asyncio.Task[Any]] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self.open)

    async def close_all(self, deadline: float) -> None:
        self.closing = True
        for task in list(self.open):
            task.cancel(GOING_AWAY)
        if self.open:
            await asyncio.wait(list(self.open), timeout=deadline)


async def proxy_ws(
    scope: Scope,
    receive: Receive,
    send: Send,
    address: str,
    public_host: str,
    limits: WsLimits,
    registry: RelayRegistry,
    account: Account,
    on_activity: Callable[[], None] | None = None,
    keep_idle: Callable[[], Awaitable[bool]] | None = None,
    dialer: RelayDialer | None = None,
) -> None:
    """Relay one WebSocket until either side closes; the bytes it holds count in `account`.
    `keep_idle()` true at the idle timeout keeps the relay open (the preview sleeps).
    An address behind a port relay is reached through `dialer` (relay_dial.py)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    headers: list[tuple[str, str]] = []
    for name, value in scope["headers"]:
        if name in _PASS:
            if name == b"cookie":  # none of ours is the dev server's business
                value = strip_ours(value)
                if not value:
                    continue
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    client = scope.get("client")
    if client:
        headers.append(("X-Forwarded-For", client[0]))
    headers.append(("X-Forwarded-Host", public_host))
    host, _, port = address.rpartition(":")
    uri = f"ws://{public_host}{target(scope).decode('latin-1')}"
    subprotocols = [Subprotocol(p) for p in scope.get("subprotocols", [])]
    behind = relay_dial.parse(address)
    try:
        if behind is None:
            where: dict[str, Any] = {"host": host, "port": int(port)}
        elif dialer is None:
            raise OSError("no dialer for the port relay")
        else:
            where = {"sock": await dialer.dial(behind)}
        upstream = await connect(
            uri,
            **where,
            subprotocols=subprotocols or None,
            additional_headers=headers,
            user_agent_header=None,
            origin=None,
            compression=None,
            proxy=None,
            open_timeout=HANDSHAKE_TIMEOUT,
            ping_interval=20,
            # No pong deadline: a sleeping preview's frozen dev server answers pings only
            # once woken, and its sockets must stay open meanwhile. A dead one is found by
            # its connection breaking, the session ending, or the idle watchdog.
            ping_timeout=None,
            max_size=limits.max_message_bytes,
            # Frames read ahead of a browser that does not keep up: each may be a whole
            # max-size message, and the dev server is the user's own code.
            max_queue=UPSTREAM_READ_AHEAD,
            create_connection=CountedConnection,
        )
    except (InvalidStatus, InvalidHandshake, OSError, TimeoutError) as exc:
        # The address and the library's words for our log; the client gets neither.
        log.info("websocket upstream failed address=%s: %r", address, exc)
        if isinstance(exc, TimeoutError):
            detail = (
                f"the dev server did not complete the WebSocket handshake in {HANDSHAKE_TIMEOUT:g}s"
            )
            await refuse(scope, send, 504, "upstream_timeout", detail)
        elif isinstance(exc, InvalidStatus):
            detail = f"the dev server refused the WebSocket ({exc.response.status_code})"
            await refuse(scope, send, 502, "upstream_error", detail)
        else:
            detail = (
                "the dev server's WebSocket handshake failed (no answer, a malformed one, "
                f"or over {MAX_HEAD_BYTES >> 10} KiB)"
            )
            await refuse(scope, send, 502, "upstream_error", detail)
        return
    assert isinstance(upstream, CountedConnection)
    lines = len(list(upstream.response.headers.raw_items())) if upstream.response else 0
    if lines > MAX_HEAD_LINES:
        upstream.transport.abort()
        log.info("websocket upstream head too long address=%s", address)
        detail = f"the dev server's WebSocket handshake has over {MAX_HEAD_LINES} header lines"
        await refuse(scope, send, 502, "upstream_error", detail)
        return
    upstream.account = account
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    task = asyncio.current_task()
    assert task is not None
    registry.open.add(task)
    try:
        await _relay(receive, send, upstream, limits, account, on_activity, keep_idle)
    except asyncio.CancelledError as exc:
        # Shutdown (or the client vanished): tell both sides we are going away. A client
        # that stopped reading never takes the close frame: do not wait for it. Whoever
        # cancels may name the code and reason (a revoked share: 1008).
        code, reason = _close_for(exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                send({"type": "websocket.close", "code": code, "reason": reason}),
                CLOSE_SEND_TIMEOUT,
            )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(upstream.close(code), CLOSE_SEND_TIMEOUT)
        upstream.transport.abort()  # a dev server blocked sending to us never answers
        if not registry.closing:
            raise
    finally:
        registry.open.discard(task)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(upstream.close(), 2)


def _close_for(exc: asyncio.CancelledError) -> tuple[int, str]:
    """The close a cancellation asks for: `task.cancel((code, reason))`, else 1001."""
    wanted = exc.args[0] if exc.args else None
    if isinstance(wanted, tuple) and len(wanted) == 2:
        return int(wanted[0]), str(wanted[1])
    return GOING_AWAY, "gateway restarting"


async def refuse(scope: Scope, send: Send, status: int, error: str, detail: str) -> None:
    """Answer the browser's handshake with an HTTP error (the ASGI WebSocket Denial
    Response, which hypercorn offers), as the HTTP proxy would; else a close (403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": INTERNAL_ERROR, "reason": detail[:120]})
        return
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def _relay(
    receive: Receive,
    send: Send,
    upstream: CountedConnection,
    limits: WsLimits,
    account: Account,
    on_activity: Callable[[], None] | None,
    keep_idle: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    last_seen = time.monotonic()
    closed_by: dict[str, tuple[int, str]] = {}

    def over_budget() -> tuple[int, str]:
        return POLICY, f"client not reading: {account.client_held() >> 20} MiB waiting for it"

    def touch() -> None:
        nonlocal last_seen
        last_seen = time.monotonic()
        if on_activity is not None:
            on_activity()

    async def browser_to_upstream() -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                closed_by["browser"] = (
                    int(message.get("code", 1000)),
                    str(message.get("reason") or ""),
                )
                return
            if kind != "websocket.receive":
                continue
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if len(data) > limits.max_message_bytes:
                closed_by["limit"] = (TOO_BIG, "message too big")
                return
            touch()
            size = encoded_size(data)
            account.take(size)  # over the budget: `budget` below ends the relay
            await upstream.send(data)
            account.give(size)

    async def upstream_to_browser() -> None:
        try:
            async for data in upstream:
                touch()
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
                account.give(frame_size(encoded_size(data)))
        except ConnectionClosed:
            pass
        rcvd = upstream.protocol.close_rcvd
        closed_by["upstream"] = (rcvd.code, rcvd.reason) if rcvd else (INTERNAL_ERROR, "")

    async def budget() -> None:
        await account.over.wait()
        closed_by["limit"] = over_budget()
        instruments.RATE_LIMITED.labels("websocket_buffer").inc()  # observability hook

    async def watchdog() -> None:
        nonlocal last_seen
        started = time.monotonic()
        while True:
            await asyncio.sleep(min(limits.idle_timeout, 5.0))
            now = time.monotonic()
            if now - last_seen > limits.idle_timeout:
                if keep_idle is not None and await keep_idle():
                    last_seen = now  # asleep: silence is expected, not a dead client
                    continue
                closed_by["limit"] = (GOING_AWAY, "idle timeout")
                return
            if now - started > limits.max_lifetime:
                closed_by["limit"] = (GOING_AWAY, "maximum lifetime reached")
                return

    tasks = [
        asyncio.create_task(browser_to_upstream(), name="ws browser->upstream"),
        asyncio.create_task(upstream_to_browser(), name="ws upstream->browser"),
        asyncio.create_task(watchdog(), name="ws watchdog"),
        asyncio.create_task(budget(), name="ws budget"),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    error = next((t.exception() for t in done if not t.cancelled() and t.exception()), None)
    if error is not None and not isinstance(error, ConnectionClosed):
        log.warning("websocket relay failed: %r", error)
        closed_by.setdefault("error", (INTERNAL_ERROR, "relay error"))
    log.info("websocket relay ended: %s", ", ".join(f"{k} {v[0]}" for k, v in closed_by.items()))
    if "browser" in closed_by:
        code, reason = closed_by["browser"]
        await upstream.close(code if code not in _UNSENDABLE else 1000, reason)
        return
    code, reason = (
        closed_by.get("upstream")
        or closed_by.get("limit")
        or closed_by.get("error", (INTERNAL_ERROR, ""))
    )
    if code in _UNSENDABLE:
        code = INTERNAL_ERROR if code == 1006 else 1000
    # Either side may have stopped reading (that may be why we are closing): bounded waits.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            send({"type": "websocket.close", "code": code, "reason": reason}), CLOSE_SEND_TIMEOUT
        )
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            upstream.close(code if "limit" in closed_by else 1000, reason), CLOSE_SEND_TIMEOUT
        )
    upstream.transport.abort()
