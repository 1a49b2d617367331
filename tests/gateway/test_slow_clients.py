"""Clients that do not keep up, against the real gateway: one reading a large response at a
trickle, one opening WebSockets past its cap and never reading them while the dev server
sends. Backpressure must reach the upstream (the gateway's memory stays flat) and other
clients must not notice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest_asyncio
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_env, rss_kib, upstream
from tests.gateway.test_metrics import value
from tests.gateway.test_proxy_ws import cookie_for
from tests.gateway.test_shutdown import DRAIN, proxy_gateway
from tests.utils import RedisServer, wait_until

__all__ = ["proxy_env", "upstream"]

MIB = 1024 * 1024


def ws_open(
    env: ProxyEnv, sid: str, cookie: str, path: str = "/", local: str = "127.0.0.1"
) -> connect:
    """A browser-like WebSocket from address `local`; max_queue=1: once a message waits
    unread, the client stops reading its socket (as a stuck tab would)."""
    host = env.host(sid)
    return connect(
        f"ws://{host}{path}",
        host="127.0.0.1",
        port=env.gateway.port,
        local_addr=(local, 0),
        additional_headers={"cookie": cookie},
        origin=f"http://{host}",  # type: ignore[arg-type]
        proxy=None,
        compression=None,
        open_timeout=10,
        max_queue=1,
        max_size=None,
    )


async def stalled(progress: Callable[[], int], timeout: float = 10) -> None:
    """Wait until `progress` (bytes or messages sent) stops growing for a second."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while len(seen) < 4 or seen[-1] != seen[-4]:
        assert time.monotonic() < deadline, f"sends never stalled: {seen[-4:]}"
        seen.append(progress())
        await asyncio.sleep(0.25)


async def latency(client: httpx.AsyncClient) -> float:
    began = time.monotonic()
    response = await client.get("/headers")
    assert response.status_code == 200
    return time.monotonic() - began


async def test_a_slow_reader_of_a_large_response_is_paced_not_buffered(
    proxy_env: ProxyEnv, upstream: Upstream
) -> None:
    sid = proxy_env.session(upstream.address)
    pid = proxy_env.gateway.process.pid
    cookie = cookie_for(proxy_env, sid)
    headers = {"host": proxy_env.host(sid), "cookie": cookie}
    async with httpx.AsyncClient(base_url=proxy_env.gateway.url, headers=headers) as other:
        await other.get("/big", params={"mb": 1})  # warm up
        before = rss_kib(pid)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_env.gateway.port)
        writer.write(
            f"GET /big?mb=50 HTTP/1.1\r\nHost: {proxy_env.host(sid)}\r\n"
            f"Cookie: {cookie}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        received, delays, peak = 0, [], before
        trickle_until = time.monotonic() + 4
        while time.monotonic() < trickle_until:  # 64 KiB every 0.1 s: ~0.6 MiB/s
            received += len(await reader.read(64 * 1024))
            delays.append(await latency(other))
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.1)
        while chunk := await reader.read(MIB):
            received += len(chunk)
            if received >= 50 * MIB:
                break
        writer.close()
    growth = (peak - before) / 1024
    print(
        f"\n[slow reader] gateway RSS +{growth:.1f} MiB; small requests meanwhile: "
        f"max {max(delays) * 1000:.0f} ms, n={len(delays)}"
    )
    assert received == 50 * MIB
    assert growth < 16, f"gateway RSS grew {growth:.0f} MiB for one slow reader"
    assert max(delays) < 1.0, delays


@dataclass
class Flood:
    """A dev server whose every WebSocket sends 1 MiB messages as fast as it may (it is
    the user's own code: it may); at /sink it reads nothing, at /echo it echoes."""

    port: int = 0
    sent: list[int] = field(default_factory=list)  # bytes sent, per connection
    closes: list[tuple[int, str]] = field(default_factory=list)  # from the gateway
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest_asyncio.fixture
async def flood() -> AsyncIterator[Flood]:
    up = Flood()
    payload = b"x" * MIB

    async def handler(ws: ServerConnection) -> None:
        index = len(up.sent)
        up.sent.append(0)
        path = ws.request.path if ws.request is not None else "/"
        try:
            if path.startswith("/echo"):
                async for message in ws:
                    await ws.send(message)
                return
            if path.startswith("/sink"):  # never reads what the browser sends
                await up.finished.wait()
                ws.transport.abort()  # its paused socket would not see the peer go
                return
            while True:
                await ws.send(payload)
                up.sent[index] += len(payload)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                up.closes.append((exc.rcvd.code, exc.rcvd.reason))

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        up.port = next(iter(server.sockets)).getsockname()[1]
        yield up
        up.finished.set()


async def test_many_websockets_never_read_hit_the_cap_and_stall_the_dev_server(
    redis_server: RedisServer, redis: Redis, flood: Flood
) -> None:
    cap = 8
    with proxy_gateway(redis_server, ws_max_per_client=cap) as env:
        pid = env.gateway.process.pid
        sid = env.session(flood.address)
        cookie = cookie_for(env, sid)
        before = rss_kib(pid)
        # max_queue=1: the client stops reading its socket once one message is queued.
        sockets: list[ClientConnection] = []
        for _ in range(cap):
            sockets.append(await ws_open(env, sid, cookie))
        try:
            refused = None
            try:
                async with ws_open(env, sid, cookie) as extra:
                    await extra.recv()
            except InvalidStatus as exc:
                refused = exc.response.status_code
            except ConnectionClosed as exc:
                refused = exc.rcvd.code if exc.rcvd else None
            await stalled(lambda: sum(flood.sent))  # the dev server's sends
            growth = (rss_kib(pid) - before) / 1024
            per_socket = max(flood.sent[:cap]) / MIB
            # Another client (another address) still gets a working WebSocket.
            async with ws_open(env, sid, cookie, "/echo", "127.0.0.2") as ws:
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), 5) == "still here"
            # ... and SIGTERM is not held up by the sockets nobody reads.
            env.gateway.process.send_signal(signal.SIGTERM)
            began = time.monotonic()
            code = await asyncio.to_thread(env.gateway.process.wait, DRAIN + 15)
            stopped = time.monotonic() - began
        finally:
            for ws in sockets:
                ws.transport.abort()
    print(
        f"\n[unread websockets] {cap} sockets: gateway RSS +{growth:.1f} MiB, "
        f"at most {per_socket:.1f} MiB sent per socket before the stall; "
        f"exit {stopped:.1f}s after SIGTERM"
    )
    # Refused before the handshake completes: hypercorn turns the close into HTTP 403.
    assert refused == 403, refused
    assert code == 0 and stopped < DRAIN + 3, f"exit {code} {stopped:.1f}s after SIGTERM"
    # A few messages held per socket (16+ each before the read-ahead was cut to 2).
    assert growth < 80, f"gateway RSS grew {growth:.0f} MiB for {cap} unread WebSockets"


async def test_websockets_sending_to_a_dev_server_that_never_reads_are_stalled(
    redis_server: RedisServer, redis: Redis, flood: Flood
) -> None:
    count = 8
    with proxy_gateway(redis_server, ws_max_per_client=count) as env:
        pid = env.gateway.process.pid
        sid = env.session(flood.address)
        cookie = cookie_for(env, sid)
        before = rss_kib(pid)
        sent = [0] * count
        payload = b"y" * MIB
        sockets = [await ws_open(env, sid, cookie, "/sink") for _ in range(count)]

        async def send_all(i: int) -> None:
            while True:
                await sockets[i].send(payload)
                sent[i] += 1

        senders = [asyncio.create_task(send_all(i)) for i in range(count)]
        try:
            await stalled(lambda: sum(sent))
            assert not any(t.done() for t in senders), [t.exception() for t in senders]
            growth = (rss_kib(pid) - before) / 1024
        finally:
            for ws in sockets:
                ws.transport.abort()
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
    print(
        f"\n[unread dev server] {count} sockets: gateway RSS +{growth:.1f} MiB, "
        f"{max(sent)} MiB sent per socket before the stall"
    )
    # hypercorn queues 2 messages per connection ahead of the app (10 by default: +116 MiB)
    assert growth < 80, f"gateway RSS grew {growth:.0f} MiB for {count} stalled senders"


async def unread_sockets(
    redis_server: RedisServer, flood: Flood, count: int, **settings: int
) -> tuple[float, float]:
    """Open `count` WebSockets from one address that never read while the dev server
    floods them, next to one (opened first) that echoes; once the dev server's sends have
    stalled: the gateway's RSS growth and the bytes its relays count as held (MiB). The
    echoing one must still work then."""
    with proxy_gateway(redis_server, ws_max_per_client=count + 1, **settings) as env:
        pid = env.gateway.process.pid
        sid = env.session(flood.address)
        cookie = cookie_for(env, sid)
        before = rss_kib(pid)
        lively = await ws_open(env, sid, cookie, "/echo")
        sockets = [lively, *[await ws_open(env, sid, cookie) for _ in range(count)]]
        try:
            await stalled(lambda: sum(flood.sent))
            growth = (rss_kib(pid) - before) / 1024
            metrics = httpx.get(f"{env.gateway.url}/metrics").text
            held = value(metrics, "preview_websocket_buffered_bytes") or 0.0
            budget = settings.get("ws_buffer_per_client")
            if budget is not None:  # the relays told to close have closed by now

                def within() -> tuple[float] | None:
                    text = httpx.get(f"{env.gateway.url}/metrics").text
                    now = value(text, "preview_websocket_buffered_bytes") or 0.0
                    return (now,) if now <= budget else None

                (held,) = await asyncio.to_thread(wait_until, within, 15, "held within budget")
            # A neighbour behind the same address that reads is not made to pay.
            await lively.send("still here")
            assert await asyncio.wait_for(lively.recv(), 5) == "still here"
            return growth, held / MIB
        finally:
            for ws in sockets:
                ws.transport.abort()
            flood.sent.clear()


async def test_a_clients_unread_websockets_are_held_to_its_byte_budget(
    redis_server: RedisServer, redis: Redis, flood: Flood
) -> None:
    count, budget = 12, 4 * MIB
    # Baseline in the same run: the default budget (64 MiB) is too large to matter here.
    unbounded, held = await unread_sockets(redis_server, flood, count)
    assert not [code for code, _ in flood.closes if code == 1008]
    bounded, held_bounded = await unread_sockets(
        redis_server, flood, count, ws_max_message_bytes=2 * MIB, ws_buffer_per_client=budget
    )
    limited = [reason for code, reason in flood.closes if code == 1008]
    print(
        f"\n[websocket byte budget] {count} unread sockets, 1 MiB messages: default budget: "
        f"gateway RSS +{unbounded:.1f} MiB, {held:.1f} MiB counted as held; 4 MiB budget: "
        f"RSS +{bounded:.1f} MiB ({bounded / max(unbounded, 0.1):.2f}x), "
        f"{held_bounded:.1f} MiB held, {len(limited)} closed with 1008"
    )
    # The count sees what the RSS sees (the library's read-ahead included) ...
    assert held > unbounded / 2, (held, unbounded)
    # ... and the relays holding the most were closed, telling the dev server why, until
    # the client was within its budget (its reading neighbour kept working).
    assert limited and all("not reading" in reason for reason in limited), flood.closes
    assert held_bounded <= budget / MIB
    # RSS: what the relays held is given back; the rest is the peak while the biggest
    # holders were closing (1-2 s each) and new sockets filled, kept by the allocator.
    assert bounded < 0.7 * unbounded, (bounded, unbounded)
