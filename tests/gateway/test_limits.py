"""Concurrent previews per user: leased slots in Redis, through the real gateway too."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.sessions import slots as limits
from shared import keys
from tests.gateway.api_helpers import bearer, start_body
from tests.gateway.conftest import GatewayFactory
from tests.utils import async_wait_until, wait_until


def record(sid: str) -> dict[str, str]:
    return {"id": sid, "user": "alice", "state": "assigned"}


async def test_reserve_hot_full_and_release(redis: Redis) -> None:
    slots = limits.Slots(redis, limit=3, lease=60)
    for n in range(3):
        got = await slots.reserve("alice", f"p{n}", f"s{n}", record(f"s{n}"))
        assert got.outcome == "ok"
    hot = await slots.reserve("alice", "p1", "s9", record("s9"))
    assert hot == limits.Reservation("hot", sid="s1")
    full = await slots.reserve("alice", "p4", "s4", record("s4"))
    assert full.outcome == "full" and set(full.active) == {"s0", "s1", "s2"}
    assert 1 <= full.retry_after <= 60
    assert not await redis.exists(keys.session("s4"))  # nothing written for a refusal
    assert await redis.hget(keys.session("s0"), "user") == b"alice"
    assert await redis.sismember(keys.SESSIONS, "s0")
    # Other users are not affected.
    assert (await slots.reserve("bob", "p4", "b4", record("b4"))).outcome == "ok"
    assert await limits.release(redis, "alice", "s1", "p1")
    assert not await limits.release(redis, "alice", "s1", "p1")
    assert not await redis.exists(keys.user_project("alice", "p1"))
    assert (await slots.reserve("alice", "p4", "s4", record("s4"))).outcome == "ok"


async def test_leases_expire_unless_renewed(redis: Redis) -> None:
    slots = limits.Slots(redis, limit=1, lease=1.0)
    assert (await slots.reserve("alice", "p0", "s0", record("s0"))).outcome == "ok"
    assert (await slots.reserve("alice", "p1", "s1", record("s1"))).outcome == "full"
    for _ in range(3):  # renewed past its first expiry: still held
        await asyncio.sleep(0.5)
        assert await limits.renew(redis, "alice", "s0", 1.0)
    assert await slots.holds("alice", "s0")

    async def freed() -> bool:
        return (await slots.reserve("alice", "p1", "s1", record("s1"))).outcome == "ok"

    started = time.monotonic()
    await async_wait_until(freed, 5, "the unrenewed lease to expire")
    assert time.monotonic() - started < 2.0
    # A lease that ran out (or was released) is never re-created by a late renewal.
    assert not await limits.renew(redis, "alice", "s0", 60)
    await limits.release(redis, "alice", "s1", "p1")
    assert not await limits.renew(redis, "alice", "s1", 60)
    assert await slots.active("alice") == []


async def test_release_wakes_a_waiting_reservation(redis: Redis) -> None:
    slots = limits.Slots(redis, limit=1, lease=600)
    await slots.reserve("alice", "p0", "s0", record("s0"))

    async def attempt() -> limits.Reservation:
        return await slots.reserve("alice", "p1", "s1", record("s1"))

    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(limits.wait_for_slot(redis, "alice", attempt, loop.time() + 20))

    async def subscribed() -> bool:
        return bool((await redis.pubsub_numsub(keys.user_slot_freed("alice")))[0][1])

    await async_wait_until(subscribed, 5, "the waiter to subscribe")
    assert not waiter.done()
    released = loop.time()
    await limits.release(redis, "alice", "s0", "p0")
    result = await asyncio.wait_for(waiter, 5)
    assert result.outcome == "ok" and loop.time() - released < 0.5

    async def another() -> limits.Reservation:
        return await slots.reserve("alice", "p2", "s2", record("s2"))

    timed_out = await limits.wait_for_slot(redis, "alice", another, loop.time() + 0.3)
    assert timed_out.outcome == "full"


# --- through the gateway -----------------------------------------------------------------


async def test_fifty_simultaneous_starts_yield_exactly_three(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw = start_gateway()
    headers = bearer("alice")
    async with httpx.AsyncClient(base_url=gw.url, timeout=120, headers=headers) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/previews", json=start_body(f"proj-{n}")) for n in range(50))
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 3 + [429] * 47, [r.text for r in responses if r.status_code >= 500]
    started = {r.json()["id"] for r in responses if r.status_code == 202}
    for refused in (r for r in responses if r.status_code == 429):
        body = refused.json()
        assert body["error"] == "too_many_previews" and body["limit"] == 3
        assert set(body["active"]) == started
        assert int(refused.headers["retry-after"]) >= 1
    listed = httpx.get(f"{gw.url}/v1/previews", headers=headers).json()["previews"]
    assert {p["id"] for p in listed} == started
    assert sync_redis.zcard(keys.user_slots("alice")) == 3
    assert sync_redis.scard(keys.CONTAINERS) == 3  # no container taken for a refusal


def test_delete_frees_the_slot_at_once_and_wait_queues(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw = start_gateway(max_concurrent_per_user=1)
    headers = bearer("alice")
    first = httpx.post(f"{gw.url}/v1/previews", json=start_body("a"), headers=headers, timeout=60)
    assert first.status_code == 202, first.text
    refused = httpx.post(f"{gw.url}/v1/previews", json=start_body("b"), headers=headers)
    assert refused.status_code == 429 and refused.json()["active"] == [first.json()["id"]]
    assert (
        httpx.delete(f"{gw.url}/v1/previews/{first.json()['id']}", headers=headers).status_code
        == 204
    )
    second = httpx.post(f"{gw.url}/v1/previews", json=start_body("b"), headers=headers, timeout=60)
    assert second.status_code == 202, second.text

    # ?wait=N: queued until the slot is freed, then started.
    outcome: dict[str, httpx.Response] = {}

    def waiting_start() -> None:
        outcome["r"] = httpx.post(
            f"{gw.url}/v1/previews?wait=30", json=start_body("c"), headers=headers, timeout=60
        )

    thread = threading.Thread(target=waiting_start)
    thread.start()
    channel = keys.user_slot_freed("alice")
    wait_until(lambda: sync_redis.pubsub_numsub(channel)[0][1] == 1, 10, "the start to queue")
    assert thread.is_alive()
    deleted = time.monotonic()
    httpx.delete(f"{gw.url}/v1/previews/{second.json()['id']}", headers=headers)
    thread.join(30)
    assert outcome["r"].status_code == 202, outcome["r"].text
    assert time.monotonic() - deleted < 5
    over = httpx.post(f"{gw.url}/v1/previews?wait=61", json=start_body("d"), headers=headers)
    assert over.status_code == 422 and over.json()["field"] == "wait"


@pytest.fixture
def hanging_docker(tmp_path: Path) -> Iterator[str]:
    """A 'Docker engine' socket that accepts connections and never answers: a start
    against it hangs after taking its slot, so a gateway can be killed mid-start."""
    path = str(tmp_path / "hang.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def test_gateway_killed_mid_start_frees_the_slot_within_the_lease(
    start_gateway: GatewayFactory, sync_redis: SyncRedis, hanging_docker: str
) -> None:
    lease = 3
    stuck = start_gateway(
        docker_hosts=hanging_docker, slot_lease_seconds=lease, max_concurrent_per_user=1
    )
    headers = bearer("alice")

    def start_on_stuck() -> None:
        try:
            httpx.post(
                f"{stuck.url}/v1/previews", json=start_body("a"), headers=headers, timeout=30
            )
        except httpx.HTTPError:
            pass  # the gateway dies under it

    thread = threading.Thread(target=start_on_stuck, daemon=True)
    thread.start()
    wait_until(lambda: sync_redis.zcard(keys.user_slots("alice")) == 1, 10, "the slot taken")
    os.kill(stuck.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    thread.join(10)

    healthy = start_gateway(slot_lease_seconds=lease, max_concurrent_per_user=1)
    url = f"{healthy.url}/v1/previews"
    assert httpx.post(url, json=start_body("b"), headers=headers).status_code == 429

    def started() -> bool:
        response = httpx.post(url, json=start_body("b"), headers=headers, timeout=60)
        return response.status_code == 202

    wait_until(started, lease + 5, "the dead gateway's slot to come back")
    assert time.monotonic() - killed <= lease + 3
