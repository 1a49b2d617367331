"""The WebSocket side of the preview proxy: relay, subprotocols, close codes, limits, drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.settings import Settings
from tests.gateway.proxy_fixtures import ProxyEnv, proxy_env
from tests.utils import async_wait_until, free_port, run_gateway, settings_env

__all__ = ["proxy_env"]


@dataclass
class WsUpstream:
    server: Server
    port: int
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest_asyncio.fixture
async def ws_upstream() -> AsyncIterator[WsUpstream]:
    state: dict[str, WsUpstream] = {}

    async def handler(ws: ServerConnection) -> None:
        up = state["up"]
        up.hosts.append(ws.request.headers.get("host", "") if ws.request else "")
        try:
            async for message in ws:
                if message == "close-me":
                    await ws.close(4001, "bye")
                    return
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            up.closes.append((ws.close_code, ws.close_reason or ""))

    def select(ws: ServerConnection, offered: object) -> str | None:
        return "vite-hmr" if "vite-hmr" in offered else None  # type: ignore[operator]

    server = await serve(
        handler,
        "127.0.0.1",
        0,
        select_subprotocol=select,  # type: ignore[arg-type]
        compression=None,
    )
    port = server.sockets[0].getsockname()[1] if server.sockets else 0
    up = WsUpstream(server, port)
    state["up"] = up
    try:
        yield up
    finally:
        server.close()
        await server.wait_closed()


def ws_connect(
    env: ProxyEnv,
    sid: str,
    cookie: str,
    port: int | None = None,
    origin: str | None = None,
    subprotocols: list[str] | None = None,
) -> connect:
    host = env.host(sid)
    headers = {"cookie": cookie}
    return connect(
        f"ws://{host}/hmr?x=1",
        host="127.0.0.1",
        port=port or env.gateway.port,
        additional_headers=headers,
        origin=origin or f"http://{host}",  # type: ignore[arg-type]
        subprotocols=subprotocols,
        proxy=None,
        compression=None,
        open_timeout=10,
    )


def cookie_for(env: ProxyEnv, sid: str, user: str = "alice") -> str:
    with env.login(sid, user) as client:
        return str(client.headers["cookie"])


async def test_relay_text_binary_and_subprotocol(
    proxy_env: ProxyEnv, ws_upstream: WsUpstream
) -> None:
    sid = proxy_env.session(ws_upstream.address)
    async with ws_connect(
        proxy_env, sid, cookie_for(proxy_env, sid), subprotocols=["vite-hmr"]
    ) as ws:
        assert ws.subprotocol == "vite-hmr"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
    assert ws_upstream.hosts[-1] == proxy_env.host(sid)  # Host as on the HTTP path


async def test_close_codes_cross_both_ways(proxy_env: ProxyEnv, ws_upstream: WsUpstream) -> None:
    sid = proxy_env.session(ws_upstream.address)
    cookie = cookie_for(proxy_env, sid)
    async with ws_connect(proxy_env, sid, cookie) as ws:
        await ws.send("close-me")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4001, "bye")
    async with ws_connect(proxy_env, sid, cookie) as ws:
        await ws.send("ping")
        await ws.recv()
        await ws.close(4002, "later")
    await async_wait_until(async_true(lambda: len(ws_upstream.closes) == 2), 5, "upstream close")
    assert ws_upstream.closes[-1] == (4002, "later"), ws_upstream.closes


def async_true(check):  # type: ignore[no-untyped-def]
    async def wrapped() -> bool:
        return bool(check())

    return wrapped


async def test_foreign_origin_and_foreign_cookie_are_refused(
    proxy_env: ProxyEnv, ws_upstream: WsUpstream
) -> None:
    a = proxy_env.session(ws_upstream.address, user="alice")
    b = proxy_env.session(ws_upstream.address, user="bob")
    cookie_a = cookie_for(proxy_env, a)
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(proxy_env, a, cookie_a, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(proxy_env, b, cookie_a.replace(f"pv_{a}=", f"pv_{b}=")):
            pass
    assert refused.value.response.status_code == 403
    assert ws_upstream.hosts == []  # nothing reached the dev server


async def test_oversized_message_closes_with_1009(
    proxy_env: ProxyEnv, ws_upstream: WsUpstream
) -> None:
    sid = proxy_env.session(ws_upstream.address)
    async with ws_connect(proxy_env, sid, cookie_for(proxy_env, sid)) as ws:
        await ws.send(b"x" * (17 * 1024 * 1024))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1009


async def test_sigterm_closes_websockets_with_1001(
    proxy_env: ProxyEnv, ws_upstream: WsUpstream, redis_server: object
) -> None:
    port = free_port()
    values = dict(
        redis_url=proxy_env.settings.redis_url,
        signing_secret=proxy_env.settings.signing_secret,
        preview_port=port,
        drain_timeout=3.0,
    )
    with run_gateway(settings_env(**values), port=port) as gateway:
        env = ProxyEnv(gateway, proxy_env.redis, Settings.from_env({}, **values))
        sid = env.session(ws_upstream.address)
        cookie = cookie_for(env, sid)
        sockets: list[ClientConnection] = []
        for _ in range(3):
            sockets.append(await ws_connect(env, sid, cookie, port=port))
        for ws in sockets:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        gateway.process.send_signal(signal.SIGTERM)
        for ws in sockets:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1001
        await asyncio.to_thread(gateway.process.wait, 10)
        assert gateway.process.returncode == 0
