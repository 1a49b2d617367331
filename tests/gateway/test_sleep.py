"""Sleep and wake through real gateways, Redis and containers: the owner's sleep and wake,
a request to a sleeping preview held and answered by another gateway replica, a file
write and a restart waking it, another user's id a 404, sleep while starting a 409; and
the reaper putting an unused preview to sleep without taking it for dead, across a
controller failover."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from gateway.sessions.sleeping import Sleeper
from gateway.sessions.store import Session
from shared import keys
from shared.messages import Heartbeat
from shared.settings import Settings
from tests.gateway.api_helpers import bearer, fake_session, start_body
from tests.gateway.conftest import GatewayFactory
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    running,
    start,
    starter_for,
    wait_state,
)
from tests.gateway.test_api import tar_of, wait_ready
from tests.utils import GatewayProcess, async_wait_until, wait_until

SIGNING = "sleep-test-signing-secret"


def api(gw: GatewayProcess, method: str, path: str, user: str = "alice", **kw: Any) -> Any:
    return httpx.request(method, f"{gw.url}{path}", headers=bearer(user), timeout=60, **kw)


def start_ready(gw: GatewayProcess, project: str) -> tuple[str, dict[str, Any]]:
    """A preview of `project` started through the API, once ready: its id and itself."""
    created = api(gw, "POST", "/v1/previews", json=start_body(project))
    assert created.status_code == 202, created.text
    sid: str = created.json()["id"]
    return sid, wait_ready(gw, sid, timeout=120)


def open_preview(preview: dict[str, Any], *gateways: GatewayProcess) -> list[httpx.Client]:
    """Clients holding the preview's cookie, as a browser after the open_url redirect (the
    first gateway trades the token), one per gateway replica."""
    host = preview["url"].split("://", 1)[1].rstrip("/")
    query = preview["open_url"].split("?", 1)[1]
    with httpx.Client(base_url=gateways[0].url, headers={"host": host}, timeout=60) as first:
        opened = first.get(f"/?{query}")
    assert opened.status_code == 302, opened.text
    cookie = opened.headers["set-cookie"].split(";", 1)[0]
    return [
        httpx.Client(base_url=gw.url, headers={"host": host, "cookie": cookie}, timeout=60)
        for gw in gateways
    ]


def heartbeat(redis: SyncRedis, sid: str) -> Heartbeat | None:
    cid = redis.hget(keys.session(sid), "container")
    assert cid is not None
    return Heartbeat.read(redis.get(keys.heartbeat(cid.decode())))


def test_sleep_and_wake_across_replicas(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    one = start_gateway(signing_secret=SIGNING)
    two = start_gateway(signing_secret=SIGNING)
    sid, preview = start_ready(one, "sleepy")

    browser_one, browser_two = open_preview(preview, one, two)
    with browser_one, browser_two:
        assert browser_one.get("/").status_code == 200
        awake = min(_timed(browser_two)[0] for _ in range(5))

        # Another user's id is no id, for sleep and wake alike.
        for action in ("sleep", "wake"):
            assert api(one, "POST", f"/v1/previews/{sid}/{action}", "bob").status_code == 404
        slept = api(one, "POST", f"/v1/previews/{sid}/sleep")
        assert slept.status_code == 202, slept.text
        assert slept.json()["state"] == "sleeping"
        found = wait_until(
            lambda: (hb := heartbeat(sync_redis, sid)) and hb.state == "sleeping" and hb,
            10,
            "a sleeping heartbeat",
        )
        assert found and found.session_id == sid
        assert api(one, "GET", f"/v1/previews/{sid}").json()["state"] == "sleeping"
        assert sid in [p["id"] for p in api(one, "GET", "/v1/previews").json()["previews"]]

        # A request at the other replica is held, wakes it, and is answered.
        woken, response = _timed(browser_two)
        assert response.status_code == 200 and "node-basic" in response.text
        assert api(two, "GET", f"/v1/previews/{sid}").json()["state"] == "ready"
        print(
            f"first byte: awake {awake * 1000:.1f} ms, asleep {woken * 1000:.1f} ms (loaded host)"
        )
        assert float(sync_redis.get(keys.requested(sid)) or 0) > time.time() - 60

        # A file write wakes it (and is written).
        assert api(one, "POST", f"/v1/previews/{sid}/sleep").json()["state"] == "sleeping"
        saved = api(two, "PUT", f"/v1/previews/{sid}/files/note.txt", content=b"hello")
        assert saved.status_code == 200, saved.text
        assert api(one, "GET", f"/v1/previews/{sid}").json()["state"] == "ready"

        # So do the owner's wake and a restart.
        assert api(one, "POST", f"/v1/previews/{sid}/sleep").status_code == 202
        assert api(two, "POST", f"/v1/previews/{sid}/wake").json()["state"] == "ready"
        assert api(one, "POST", f"/v1/previews/{sid}/sleep").status_code == 202
        restarted = api(one, "POST", f"/v1/previews/{sid}/restart")
        assert restarted.status_code == 202, restarted.text
        assert browser_one.get("/").status_code == 200
        assert api(one, "GET", f"/v1/previews/{sid}").json()["state"] == "ready"

        # The owner races sleeps, wakes and page loads on both replicas: every page load
        # is answered, and the record ends agreeing with the supervisor.
        def race(n: int) -> tuple[int, str]:
            gw, browser = (one, browser_one) if n % 2 else (two, browser_two)
            if n % 3 == 0:
                answer = api(gw, "POST", f"/v1/previews/{sid}/sleep")
            elif n % 3 == 1:
                answer = api(gw, "POST", f"/v1/previews/{sid}/wake")
            else:
                answer = browser.get("/")
            return answer.status_code, answer.text if answer.status_code >= 300 else ""

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(race, range(30)))
        assert {status for status, _ in answers} <= {200, 202}, answers
        state = api(one, "GET", f"/v1/previews/{sid}").json()["state"]
        assert state in ("ready", "sleeping")
        wait_until(
            lambda: (hb := heartbeat(sync_redis, sid)) and hb.state == state,
            10,
            f"the supervisor to agree ({state})",
        )
        assert browser_two.get("/").status_code == 200
    assert api(one, "DELETE", f"/v1/previews/{sid}").status_code == 204
    assert api(one, "POST", f"/v1/previews/{sid}/wake").status_code == 404


def _timed(client: httpx.Client) -> tuple[float, httpx.Response]:
    began = time.monotonic()
    # Raw bytes, so uncompressed: the gateway compresses text for clients that accept it.
    with client.stream("GET", "/", headers={"accept-encoding": "identity"}) as response:
        chunks = response.iter_raw()
        body = next(chunks, b"")  # the first byte
        elapsed = time.monotonic() - began
        body += b"".join(chunks)
    return elapsed, httpx.Response(response.status_code, content=body)


def test_sleep_while_starting_is_a_conflict(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw = start_gateway()
    session = fake_session(sync_redis)  # `preparing`, as a start leaves it
    refused = api(gw, "POST", f"/v1/previews/{session.id}/sleep")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "not_ready"
    assert sync_redis.hget(keys.session(session.id), "state") == b"preparing"
    assert sync_redis.xlen(keys.commands(session.container)) == 0  # nothing was sent
    assert api(gw, "POST", f"/v1/previews/{session.id}/sleep", "bob").status_code == 404
    # Awake (or starting) previews take a wake as a no-op.
    assert api(gw, "POST", f"/v1/previews/{session.id}/wake").json()["state"] == "preparing"


async def test_reaper_sleeps_an_unused_preview_and_keeps_it_across_failover(
    make_controller: ControllerFactory, redis: Redis, settings: Settings
) -> None:
    quick = fast(settings, sleep_after=2.0)
    first = make_controller(quick)
    async with running(first):
        starter = starter_for(first)
        session = await start(starter, "alice", "dozy")
        ready = await wait_state(starter.previews, session.id, "ready", 120)
        began = time.monotonic()
        slept = await wait_state(starter.previews, session.id, "sleeping", 30)
        print(f"slept {time.monotonic() - began:.1f}s after ready (PREVIEW_SLEEP_AFTER=2)")
        assert slept.container == ready.container

        async def sleeping_beat() -> Heartbeat | None:
            hb = Heartbeat.read(await redis.get(keys.heartbeat(slept.container)))
            return hb if hb is not None and hb.state == "sleeping" else None

        await async_wait_until(sleeping_beat, 10, "a sleeping heartbeat")
    # The leader is gone; another controller takes over and leaves it asleep, past the
    # heartbeat TTL and several passes (nothing takes it for dead or idle-in-use).
    second = make_controller(quick)
    async with running(second):
        deadline = time.monotonic() + quick.heartbeat_ttl + 3
        while time.monotonic() < deadline:
            current = await starter.previews.load(session.id)
            assert current is not None and current.state == "sleeping", current
            assert await redis.sismember(keys.SESSIONS, session.id)
            await async_wait_until(sleeping_beat, 5, "heartbeats while asleep")
        # An owner's write wakes it; the reaper then leaves it until it is unused again.
        await starter.previews.wake(current)
        assert current.state == "ready"
        assert (await starter.previews.load(session.id)).state == "ready"  # type: ignore[union-attr]
        again = await wait_state(starter.previews, session.id, "sleeping", 30)
        assert again.state == "sleeping"
        # Sleeping an already sleeping preview changes nothing.
        await Sleeper(starter.previews).sleep(again, "api")
        assert again.state == "sleeping"
        await starter.previews.stop(again)


@pytest.mark.slow
async def test_asleep_it_beats_rarely_is_kept_and_is_declared_dead_within_its_ttl(
    make_controller: ControllerFactory, redis: Redis, settings: Settings
) -> None:
    # Awake: beats every 1 s living 4 s. Asleep: every 4 s living 12 s.
    quick = fast(settings, sleep_heartbeat_interval=4.0)
    controller = make_controller(quick)
    async with running(controller):
        starter = starter_for(controller)
        session = await start(starter, "alice", "rare-beats")
        ready = await wait_state(starter.previews, session.id, "ready", 120)
        cid = ready.container
        await Sleeper(starter.previews).sleep(ready, "api")
        history: list[Heartbeat] = []

        async def asleep_beats(n: int) -> list[Heartbeat] | None:
            # What the gateways' tracker does each second: renews the slot while it beats.
            await starter.previews.refresh(ready)
            current = await starter.previews.load(session.id)
            assert current is not None and current.state == "sleeping", current
            assert await redis.exists(keys.heartbeat(cid))
            entries = await redis.xrange(keys.heartbeat_history(cid))
            beats = [Heartbeat.read(f[keys.HEARTBEAT_HISTORY_FIELD.encode()]) for _, f in entries]
            history[:] = [b for b in beats if b is not None and b.state == "sleeping"]
            return history if len(history) >= n else None

        await async_wait_until(lambda: asleep_beats(1), 10, "a sleeping heartbeat")
        assert 4000 < await redis.pttl(keys.heartbeat(cid)) <= 12000
        lease = await redis.zscore(keys.user_slots("alice"), session.id)
        # Longer than the awake TTL: beats 4 s apart, neither reaped nor its slot lapsed.
        await async_wait_until(lambda: asleep_beats(3), 20, "three sleeping heartbeats")
        gaps = [b.ts - a.ts for a, b in itertools.pairwise(history)]
        assert all(3.5 < gap < 6.5 for gap in gaps), gaps
        assert (await redis.zscore(keys.user_slots("alice"), session.id) or 0) > (lease or 0)

        # Dead while asleep: declared so once its sleeping TTL ran out, not before.
        subprocess.run(["docker", "kill", cid], check=True, capture_output=True)
        last = Heartbeat.read(await redis.get(keys.heartbeat(cid)))
        assert last is not None and last.state == "sleeping"

        async def failed() -> Session | None:
            current = await starter.previews.load(session.id)
            return current if current is not None and current.state == "failed" else None

        dead = await async_wait_until(failed, quick.sleep_heartbeat_ttl + 10, "heartbeat_lost")
        silent = time.time() - last.ts
        print(f"declared dead {silent:.1f}s after its last sleeping beat (TTL 12 s)")
        assert quick.heartbeat_ttl < silent <= quick.sleep_heartbeat_ttl + 6, silent
        assert dead.error is not None and "limit 12s" in dead.error["detail"]


# A dev server with a WebSocket echo (no dependencies): it answers pings, echoes frames.
WS_ECHO = r"""
const http = require("http"), crypto = require("crypto");
const frame = (op, p) => {
  const head = p.length < 126 ? Buffer.from([128 | op, p.length]) : Buffer.alloc(4);
  if (p.length >= 126) { head[0] = 128 | op; head[1] = 126; head.writeUInt16BE(p.length, 2); }
  return Buffer.concat([head, p]);
};
const server = http.createServer((q, s) => s.end("echo server"));
server.on("upgrade", (req, sock) => {
  const accept = crypto.createHash("sha1")
    .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  sock.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
    "Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n");
  let buf = Buffer.alloc(0);
  sock.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2) {
      const op = buf[0] & 15;
      let len = buf[1] & 127, off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      if (buf.length < off + 4 + len) return;
      const mask = buf.subarray(off, off + 4);
      const raw = buf.subarray(off + 4, off + 4 + len);
      const payload = Buffer.from(raw.map((b, i) => b ^ mask[i % 4]));
      buf = buf.subarray(off + 4 + len);
      if (op === 8) { sock.end(); return; }
      sock.write(frame(op === 9 ? 10 : op, payload));
    }
  });
});
server.listen(Number(process.env.PORT));
"""


@pytest.mark.slow
async def test_websocket_stays_open_asleep_and_gets_its_bytes_after_wake(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    # A 5 s idle limit: a sleeping preview's silent sockets must outlive it; and over 40 s
    # asleep: longer than a ping interval plus its old pong deadline.
    gw = start_gateway(signing_secret=SIGNING, ws_idle_timeout=5.0)
    body = {"project_id": "ws-echo", "source": {"type": "archive"}}
    created = await asyncio.to_thread(api, gw, "POST", "/v1/previews", json=body)
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    files = tar_of({"package.json": '{"scripts": {"dev": "node server.js"}}', "server.js": WS_ECHO})
    put = await asyncio.to_thread(api, gw, "PUT", f"/v1/previews/{sid}/files", content=files)
    assert put.status_code == 202, put.text
    preview = await asyncio.to_thread(wait_ready, gw, sid, 120)
    (browser,) = open_preview(preview, gw)
    host = browser.headers["host"]
    headers = {"Cookie": browser.headers["cookie"]}
    browser.close()
    async with connect(
        f"ws://{host}/", host="127.0.0.1", port=gw.port, additional_headers=headers
    ) as ws:
        await ws.send("before")
        assert await asyncio.wait_for(ws.recv(), 10) == "before"
        slept = await asyncio.to_thread(api, gw, "POST", f"/v1/previews/{sid}/sleep")
        assert slept.json()["state"] == "sleeping"
        await ws.send("while asleep")
        with pytest.raises(TimeoutError):  # frozen: nothing answers, nothing is lost
            await asyncio.wait_for(ws.recv(), 45)
        assert sync_redis.hget(keys.session(sid), "state") == b"sleeping"
        woke = await asyncio.to_thread(api, gw, "POST", f"/v1/previews/{sid}/wake")
        assert woke.json()["state"] == "ready"
        assert await asyncio.wait_for(ws.recv(), 10) == "while asleep"
        await ws.send("after")
        assert await asyncio.wait_for(ws.recv(), 10) == "after"
    assert api(gw, "DELETE", f"/v1/previews/{sid}").status_code == 204


async def test_reaper_hibernates_a_preview_asleep_too_long(
    make_controller: ControllerFactory, redis: Redis, settings: Settings
) -> None:
    controller = make_controller(fast(settings, sleep_after=1.0, hibernate_after=2.0))
    async with running(controller):
        starter = starter_for(controller)
        session = await start(starter, "alice", "hibernating")
        ready = await wait_state(starter.previews, session.id, "ready", 120)
        await wait_state(starter.previews, session.id, "sleeping", 30)

        async def hibernated() -> Session | None:
            found = await starter.previews.load(session.id)
            return found if found is not None and found.state == "hibernated" else None

        found = await async_wait_until(hibernated, 30, "the reaper to hibernate it")
        assert found.container == "" and found.archive and found.archive["host"] == ready.host
        assert not await redis.sismember(keys.SESSIONS, session.id)
        assert await redis.zscore(keys.user_slots("alice"), session.id) is None
        assert await redis.zscore(keys.user_hibernated("alice"), session.id) is not None

        async def released() -> bool:
            return not await redis.hget(keys.container(ready.container), "session")

        await async_wait_until(released, 30, "its container released")
