"""Graceful shutdown of the real processes: SIGTERM to a gateway that is proxying a slow
request and a WebSocket, and to a controller that holds the leader lease.

tests/gateway/test_proxy_ws.py checks the 1001 close on its own; here it happens while an
HTTP request is in flight, and the process's exit and its listening socket are timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis as redis_sync
from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from tests.gateway.proxy_fixtures import ProxyEnv
from tests.gateway.test_proxy_ws import cookie_for, ws_connect
from tests.utils import (
    GatewayProcess,
    RedisServer,
    async_wait_until,
    free_port,
    run_gateway,
    settings_env,
    spawn_controller,
    wait_until,
)

DRAIN = 4.0


@dataclass
class SlowUpstream:
    """A dev server whose `/slow?s=N` answers after N seconds; other paths are an echoing
    WebSocket."""

    port: int
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest_asyncio.fixture
async def slow_upstream() -> AsyncIterator[SlowUpstream]:
    up = SlowUpstream(0)

    async def process_request(ws: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith("/slow"):
            return None
        up.slow_started.set()
        with contextlib.suppress(TimeoutError):  # until the delay, or the test's end
            await asyncio.wait_for(up.finished.wait(), float(request.path.split("s=", 1)[1]))
        return ws.respond(200, "done\n")

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
        up.port = next(iter(server.sockets)).getsockname()[1]
        yield up
        up.finished.set()


@contextlib.contextmanager
def proxy_gateway(redis_server: RedisServer, **overrides: Any) -> Iterator[ProxyEnv]:
    """A gateway of its own (settings `overrides`) with the proxy tests' helpers."""
    port = free_port()
    values = dict(
        redis_url=redis_server.url,
        signing_secret="test-signing-secret",
        preview_port=port,
        drain_timeout=DRAIN,
        **overrides,
    )
    client = redis_sync.Redis.from_url(redis_server.url)
    try:
        with run_gateway(settings_env(**values), port=port) as gateway:
            yield ProxyEnv(gateway, client, Settings.from_env({}, **values))
    finally:
        client.close()


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def preview_client(env: ProxyEnv, sid: str, cookie: str) -> httpx.AsyncClient:
    headers = {"host": env.host(sid), "cookie": cookie}
    return httpx.AsyncClient(base_url=env.gateway.url, headers=headers, timeout=30)


async def sigterm_during(
    gateway: GatewayProcess, up: SlowUpstream, request: Awaitable[httpx.Response]
) -> tuple[asyncio.Task[httpx.Response], float]:
    """Start `request`, and SIGTERM the gateway once the dev server has it."""
    up.slow_started.clear()
    task = asyncio.create_task(request)
    await asyncio.wait_for(up.slow_started.wait(), 10)
    gateway.process.send_signal(signal.SIGTERM)
    return task, time.monotonic()


async def exit_after(gateway: GatewayProcess, began: float) -> tuple[int, float]:
    code = await asyncio.to_thread(gateway.process.wait, DRAIN + 10)
    return code, time.monotonic() - began


async def test_sigterm_finishes_requests_closes_websockets_and_stops_accepting(
    redis_server: RedisServer, redis: Redis, slow_upstream: SlowUpstream
) -> None:
    with proxy_gateway(redis_server) as env:
        gateway = env.gateway
        sid = env.session(slow_upstream.address)
        cookie = cookie_for(env, sid)
        ws = await ws_connect(env, sid, cookie)
        await ws.send("before")
        assert await ws.recv() == "before"
        async with preview_client(env, sid, cookie) as client:
            assert (await client.get("/slow?s=0")).status_code == 200  # an idle keep-alive
            slow, began = await sigterm_during(gateway, slow_upstream, client.get("/slow?s=3"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), DRAIN)
            assert (ws.close_code, ws.close_reason) == (1001, "gateway restarting")
            await async_wait_until(
                lambda: asyncio.to_thread(refuses, gateway.port), 2, "the listener to close"
            )
            assert not slow.done(), "the in-flight request was cut short"
            response = await slow
        assert (response.status_code, response.text) == (200, "done\n")
        code, took = await exit_after(gateway, began)
    assert code == 0, gateway.log()
    # The idle keep-alive connection did not hold the exit up to the deadline.
    assert took < DRAIN, f"exit {took:.1f}s after SIGTERM; drain deadline {DRAIN}s"


async def test_a_request_longer_than_the_drain_deadline_is_cut_at_the_deadline(
    redis_server: RedisServer, redis: Redis, slow_upstream: SlowUpstream
) -> None:
    with proxy_gateway(redis_server) as env:
        gateway = env.gateway
        sid = env.session(slow_upstream.address)
        async with preview_client(env, sid, cookie_for(env, sid)) as client:
            slow, began = await sigterm_during(gateway, slow_upstream, client.get("/slow?s=60"))
            code, took = await exit_after(gateway, began)
            cut = await slow
    assert cut.status_code == 503 and cut.json()["error"] == "unavailable", cut.text
    assert code == 0, gateway.log()
    assert DRAIN - 0.5 < took < DRAIN + 3, f"exit {took:.1f}s after SIGTERM (drain {DRAIN}s)"


# --- the controller's lease -------------------------------------------------------------


def talks_to(pid: int, port: int) -> bool:
    """Whether process `pid` has an established TCP connection to 127.0.0.1:`port`."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            sockets.add(os.readlink(fd))
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01" and f"socket:[{fields[9]}]" in sockets:
            return True
    return False


@contextlib.contextmanager
def controller_processes(
    redis_server: RedisServer, test_image: str, tmp_path: Path, count: int, ttl: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Real controllers (python -m gateway.controller.main) that only compete for the lease: no
    pool, and no Docker engine, so their orphan sweep cannot touch containers that other
    test runs on this engine made."""
    env = {
        **os.environ,
        **settings_env(
            redis_url=redis_server.url,
            docker_hosts=f"unix://{tmp_path}/no-engine.sock",
            image=test_image,
            controller_interval=0.3,
            leader_ttl=ttl,
            pool_min=0,
            pool_max=0,
            controller_metrics_bind="",
            state_dir=str(tmp_path),
            log_format="text",
        ),
    }
    processes = []
    try:
        for i in range(count):
            processes.append(spawn_controller(env, tmp_path / f"controller{i}.log"))
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_sigterm_releases_the_controller_lease_for_an_immediate_takeover(
    redis_server: RedisServer, redis: Redis, test_image: str, tmp_path: Path
) -> None:
    ttl = 12.0  # a standby claims every ttl/3; a crashed leader is replaced after ttl

    async def holder_pid() -> int | None:
        holder = await redis.get(keys.LEADER)
        return int(text(holder).split(":")[1]) if holder else None

    with controller_processes(redis_server, test_image, tmp_path, 2, ttl) as processes:
        by_pid = {p.pid: p for p in processes}
        first = await async_wait_until(holder_pid, 20, "a leader")
        assert first in by_pid
        leader = by_pid.pop(first)
        # The standby is up (a slow start would look like a slow takeover).
        port = redis_server.port
        wait_until(lambda: all(talks_to(pid, port) for pid in by_pid), 30, "the standby")
        leader.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = await asyncio.to_thread(leader.wait, 15)
        released = time.monotonic() - began
        logs = "".join(p.read_text() for p in tmp_path.glob("controller*.log"))
        assert code == 0, logs
        assert await holder_pid() != first, "the lease outlived its holder"

        async def successor() -> int | None:
            pid = await holder_pid()
            return pid if pid != first else None

        second = await async_wait_until(successor, ttl, "another controller to lead")
        took_over = time.monotonic() - began
    assert second in by_pid, logs
    # Released on the way out: the standby took it at its next claim, not at expiry.
    assert took_over < ttl / 3 + 2, f"takeover {took_over:.1f}s after SIGTERM (ttl {ttl}s)"
    assert released < 5, f"the leader took {released:.1f}s to exit"
