"""Redis Sentinel: the master killed under traffic, with a real gateway, controller and
preview containers that all find Redis through three sentinels (tests/sentinel_cluster.py).

What must hold: an open preview keeps serving (HTTP and its HMR-like WebSocket) from the
route cache; the API answers 503 with ``Retry-After`` only while no master is known and
then recovers by itself; the controller recreates the per-container ACL users on the
promoted replica (ACL changes are not replicated); supervisors find the new master
through the sentinels and heartbeat again; no session is reaped for the heartbeats the
failover ate; new starts succeed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from websockets.asyncio.client import connect

from gateway.containers.docker_runtime import LABEL_DEPLOYMENT
from shared import keys
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.faults.conftest import System
from tests.gateway.api_helpers import failover_env, start_body
from tests.gateway.controller_fixtures import LABEL_TEST_CASE, remove_labelled
from tests.sentinel_cluster import MASTER, SentinelCluster, sentinel_cluster
from tests.utils import remove_labelled_volumes, run_controller, run_gateway, wait_until

pytestmark = pytest.mark.slow

# A dependency-free dev server with an echoing WebSocket (the shape of an HMR socket).
WS_SERVER = r"""
const http = require("node:http");
const crypto = require("node:crypto");
const port = Number(process.env.PORT || 3000);
const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>hmr</title><h1>hmr</h1>");
});
server.on("upgrade", (req, socket) => {
  const accept = crypto.createHash("sha1")
    .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
    "Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n");
  socket.on("data", (buf) => {  // one small masked text frame at a time: echo it
    if ((buf[0] & 0x0f) === 8) { socket.end(); return; }
    const len = buf[1] & 0x7f, mask = buf.subarray(2, 6), data = Buffer.alloc(len);
    for (let i = 0; i < len; i++) data[i] = buf[6 + i] ^ mask[i % 4];
    socket.write(Buffer.concat([Buffer.from([0x81, len]), data]));
  });
});
server.listen(port);
"""
WS_PROJECT = {
    "package.json": '{"name": "hmr", "private": true, "scripts": {"dev": "node server.js"}}',
    "server.js": WS_SERVER,
}


def sentinel_client(cluster: SentinelCluster) -> Any:
    """The test's own client of the current master, retrying across a failover."""
    return cluster.sync_sentinel().master_for(
        MASTER,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 2),
        retry_on_error=[RedisConnectionError],
    )


@pytest.fixture
def failover_system(test_image: str, tmp_path: Path) -> Iterator[tuple[System, SentinelCluster]]:
    case = secrets.token_hex(4)
    with ExitStack() as stack:
        cluster = stack.enter_context(sentinel_cluster())
        client = sentinel_client(cluster)
        stack.callback(client.close)
        state_dir = tmp_path / "state"
        env = failover_env(
            cluster.nodes[0],
            test_image,
            f"{LABEL_TEST_RUN}={TEST_RUN},{LABEL_TEST_CASE}={case}",
            state_dir,
            pool_min=1,
            pool_max=2,
            **cluster.settings(),
        )
        try:
            controller = stack.enter_context(run_controller(env))
            gateway = stack.enter_context(run_gateway(env))
            stack.callback(lambda: print(f"--- gateway log\n{gateway.log()[-6000:]}"))
            yield System(cluster.nodes[0], client, gateway, controller, state_dir), cluster
        finally:
            stack.close()
            remove_labelled(case)
            # Named after the Sentinel set, not a node: no node's stop removes it.
            deployment = Settings.from_env(env).deployment
            remove_labelled_volumes(f"{LABEL_DEPLOYMENT}={deployment}")


def test_master_killed_under_traffic_fails_over_by_itself(
    failover_system: tuple[System, SentinelCluster],
) -> None:
    system, cluster = failover_system
    sid = system.start_project("hmr", WS_PROJECT)
    preview = system.wait_state(sid, "ready")
    cid = system.container_of(sid)
    browser = system.open(preview)
    assert browser.get("/").status_code == 200
    wait_until(system.pooled, 60, "a warm container in the pool")
    try:
        figures = asyncio.run(failover_under_traffic(system, cluster, sid, preview, browser))
    finally:
        browser.close()

    # The open preview's supervisor found the new master, got its user back, heartbeats.
    wait_until(lambda: system.redis.exists(keys.heartbeat(cid)), 30, "the heartbeat back")
    # ... and the reaper did not fail the session for the heartbeats the failover ate.
    settle = time.monotonic()
    while time.monotonic() - settle < 3.0:
        assert system.redis.hget(keys.session(sid), "state") == b"ready"
        time.sleep(0.3)
    assert system.wait_state(sid, "ready")["error"] is None
    # The start made after the failover becomes ready (pool, commands, ACL all work).
    system.wait_state(figures["started"], "ready")
    # A stop works and the container is reset and kept for its user (its command stream
    # is read).
    assert system.api("DELETE", f"/v1/previews/{sid}").status_code == 204
    wait_until(
        lambda: system.redis.hget(keys.container(cid), "state") == b"reserved",
        60,
        "the container reset and reserved on the new master",
    )
    print(
        f"failover: promoted {figures['promoted']:.1f}s, first start {figures['first_start']:.1f}s"
        f", API 503s {figures['unavailable']} between {figures['first_503']:.1f}s and "
        f"{figures['last_503']:.1f}s after the kill"
    )


async def failover_under_traffic(
    system: System,
    cluster: SentinelCluster,
    sid: str,
    preview: dict[str, Any],
    browser: httpx.Client,
) -> dict[str, Any]:
    host = preview["url"].split("://", 1)[1].rstrip("/")
    cookie = browser.headers["Cookie"]
    async with connect(
        f"ws://{host}/hmr",
        host="127.0.0.1",
        port=system.gateway.port,
        additional_headers={"cookie": cookie},
        origin=f"http://{host}",  # type: ignore[arg-type]
        proxy=None,
        compression=None,
        open_timeout=15,
        ping_interval=None,  # the echo server above answers text frames only
    ) as ws:
        await ws.send("before")
        assert await ws.recv() == "before"

        killed = await asyncio.to_thread(cluster.kill_master)
        down = time.monotonic()
        promoted_at: float | None = None
        promote = asyncio.create_task(asyncio.to_thread(cluster.wait_new_master, killed.port))
        unavailable: list[float] = []
        started: str | None = None
        first_start = 0.0
        n = 0
        while started is None or time.monotonic() - first_start - down < 3.0:
            assert time.monotonic() - down < 90, "no start succeeded within 90 s of the kill"
            if promoted_at is None and promote.done():
                promote.result()
                promoted_at = time.monotonic() - down
            n += 1
            # The open preview: HTTP and its WebSocket, all the time.
            page = await asyncio.to_thread(browser.get, "/")
            assert page.status_code == 200, page.text
            await ws.send(f"m{n}")
            assert await ws.recv() == f"m{n}"
            # The API: an answer or a 503 with Retry-After, never anything else.
            calls: list[tuple[str, str, Any]] = [("GET", f"/v1/previews/{sid}", None)]
            if started is None:
                calls.append(("POST", "/v1/previews", start_body(f"after-{n}")))
            for method, path, body in calls:
                answer = await asyncio.to_thread(system.api, method, path, json=body)
                if answer.status_code == 503:
                    assert answer.json()["error"] == "unavailable", answer.text
                    assert int(answer.headers["retry-after"]) >= 1
                    unavailable.append(time.monotonic() - down)
                    continue
                assert answer.status_code in (200, 202), (method, path, answer.text)
                if method == "POST":
                    started = str(answer.json()["id"])
                    first_start = time.monotonic() - down
            await asyncio.sleep(0.2)
        if promoted_at is None:
            await promote
            promoted_at = time.monotonic() - down
        # The API answered 503 only around the failover: none once a start went through.
        assert all(t <= first_start for t in unavailable), unavailable
        assert started is not None
        await ws.send("after")
        assert await ws.recv() == "after"
    await asyncio.to_thread(cluster.rejoin, killed)
    return {
        "started": started,
        "promoted": promoted_at,
        "first_start": first_start,
        "unavailable": len(unavailable),
        "first_503": min(unavailable, default=0.0),
        "last_503": max(unavailable, default=0.0),
    }
