"""Startup CPU boost (gateway/containers/boost.py) on real containers: the limit the
container's own cgroup reports (cpu.max, through its supervisor's heartbeat) and the one
Docker holds are PREVIEW_START_CPUS while the preview starts, and PREVIEW_CONTAINER_CPUS
once it is ready, once it failed, or once the boost ran out for a preview that never gets
ready (a hostile user's project must not keep it)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import httpx
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.containers.create_gate import CreateGate
from shared import keys
from shared.messages import Heartbeat
from tests.gateway.api_helpers import bearer
from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_api import get, tar_of, wait_ready
from tests.utils import GatewayProcess, RedisServer, wait_until

SERVER = 'require("http").createServer((q, s) => s.end("up")).listen(+process.env.PORT);'


def start_archive(
    gw: GatewayProcess, project: str = "boost", user: str = "alice"
) -> dict[str, Any]:
    body = {"project_id": project, "source": {"type": "archive"}}
    started = httpx.post(f"{gw.url}/v1/previews", json=body, headers=bearer(user), timeout=60)
    assert started.status_code == 202, started.text
    preview: dict[str, Any] = started.json()
    return preview


def upload(
    gw: GatewayProcess, sid: str, dev: str, files: dict[str, str], user: str = "alice"
) -> None:
    """The project's files (a package.json running `dev` unless `files` has one)."""
    package = json.dumps({"name": "boost", "scripts": {"dev": dev}})
    archive = tar_of({"package.json": package, **files})
    put = httpx.put(
        f"{gw.url}/v1/previews/{sid}/files", content=archive, headers=bearer(user), timeout=60
    )
    assert put.status_code in (200, 202, 204), put.text


def container_of(client: SyncRedis, sid: str) -> tuple[str, str]:
    def attached() -> tuple[str, str] | None:
        found = client.hmget(keys.session(sid), "container", "host")
        return (found[0].decode(), found[1].decode()) if found[0] else None

    return wait_until(attached, 30, "a container for the session")


def cgroup_cpus(client: SyncRedis, cid: str, want: float, timeout: float = 30) -> Heartbeat:
    """The container's own cgroup says `want` cores (its supervisor reports cpu.max)."""

    def reported() -> Heartbeat | None:
        heartbeat = Heartbeat.read(client.get(keys.heartbeat(cid)))
        return heartbeat if heartbeat is not None and heartbeat.cpu_limit == want else None

    return wait_until(reported, timeout, f"cpu.max of {cid} at {want} cores")


def docker_cpus(cid: str) -> float:
    done = subprocess.run(
        ["docker", "inspect", "-f", "{{.HostConfig.NanoCpus}}", cid],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout) / 1e9


def boosted_start(
    start_gateway: GatewayFactory, client: SyncRedis, **settings: Any
) -> tuple[GatewayProcess, str, str, str]:
    """A gateway boosting 1 → 2 CPUs and a start waiting for its files, boosted (as the
    cgroup inside says); (gateway, session, container, host)."""
    gw = start_gateway(start_cpus=2.0, container_cpus=1.0, **settings)
    sid = start_archive(gw)["id"]
    cid, host = container_of(client, sid)
    cgroup_cpus(client, cid, 2.0)
    return gw, sid, cid, host


def test_boost_while_starting_then_dropped_once_ready(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw, sid, cid, host = boosted_start(start_gateway, sync_redis)
    assert docker_cpus(cid) == 2.0  # the engine says so too
    assert sync_redis.hexists(keys.host_boosts(host), cid)
    upload(gw, sid, "node server.js", {"server.js": SERVER})
    wait_ready(gw, sid)
    cgroup_cpus(sync_redis, cid, 1.0, timeout=10)  # the tracker drops it within a pass
    assert docker_cpus(cid) == 1.0
    assert not sync_redis.hexists(keys.host_boosts(host), cid)


def test_boost_dropped_when_the_start_fails(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw, sid, cid, host = boosted_start(start_gateway, sync_redis)
    upload(gw, sid, "node crash.js", {"crash.js": "process.exit(3)"})
    wait_until(lambda: get(gw, sid).json()["state"] == "failed", 60, "the start failed")
    cgroup_cpus(sync_redis, cid, 1.0, timeout=10)
    assert not sync_redis.hexists(keys.host_boosts(host), cid)


def test_a_preview_that_never_gets_ready_loses_its_boost(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    """A hostile project keeps its dev server "starting" (busy, never answering) to hold
    the extra CPU: the boost runs out all the same."""
    gw, sid, cid, _ = boosted_start(start_gateway, sync_redis, start_boost_seconds=4.0)
    upload(gw, sid, "node spin.js", {"spin.js": "for (;;) {}"})
    cgroup_cpus(sync_redis, cid, 1.0, timeout=20)
    assert get(gw, sid).json()["state"] in ("preparing", "starting")
    assert docker_cpus(cid) == 1.0


def test_no_boost_beyond_the_hosts_free_cpu(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    """The budget is the host's cores times the overcommit, less every container's limit:
    with room for the container alone, no boost (and the start goes on)."""
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    gw = start_gateway(start_cpus=2.0, container_cpus=1.0, host_cpu_overcommit=1.0 / cores)
    sid = start_archive(gw)["id"]
    cid, host = container_of(sync_redis, sid)
    cgroup_cpus(sync_redis, cid, 1.0)
    assert not sync_redis.hexists(keys.host_boosts(host), cid)
    upload(gw, sid, "node server.js", {"server.js": SERVER})
    wait_ready(gw, sid)


def test_idle_containers_leave_the_boost_its_room(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    """A budget of two containers' CPU: alice's stopped preview leaves her container
    reserved (idle, kept for her) beside bob's new one, and bob's start is boosted all
    the same. Counting the reserved container's limit used to leave it none."""
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    gw, sid, cid, host = boosted_start(start_gateway, sync_redis, host_cpu_overcommit=2.0 / cores)
    upload(gw, sid, "node server.js", {"server.js": SERVER})
    wait_ready(gw, sid)
    assert httpx.delete(f"{gw.url}/v1/previews/{sid}", headers=bearer("alice")).status_code == 204
    wait_until(
        lambda: sync_redis.zscore(keys.user_reserved("alice"), cid) is not None,
        90,
        "alice's container reserved for her",
    )
    bob, bob_host = container_of(sync_redis, start_archive(gw, user="bob")["id"])
    assert bob != cid and bob_host == host
    cgroup_cpus(sync_redis, bob, 2.0)
    assert sync_redis.hexists(keys.host_boosts(host), bob)


def test_a_boosted_start_holds_a_creation_place(
    start_gateway: GatewayFactory, sync_redis: SyncRedis, redis_server: RedisServer
) -> None:
    """Fair when many start at once: while a real start runs boosted (one container's
    worth of extra CPU), the creation cap of 2 leaves one place, for a start, not for a
    pool refill; once it is ready and its boost dropped, refills create again."""
    gw, sid, cid, host = boosted_start(start_gateway, sync_redis, host_create_concurrency=2)

    async def enter(*tries: tuple[str, bool]) -> list[bool]:
        client = Redis.from_url(redis_server.url)
        gate = CreateGate(client, cap=2, container_cpus=1.0)
        try:
            entered = [await gate.try_enter(host, token, start) for token, start in tries]
            for token, _ in tries:
                await gate.leave(host, token)
            return entered
        finally:
            await client.aclose()

    assert asyncio.run(enter(("refill", False), ("start-a", True), ("start-b", True))) == [
        False,
        True,
        False,
    ]
    upload(gw, sid, "node server.js", {"server.js": SERVER})
    wait_ready(gw, sid)
    wait_until(lambda: not sync_redis.hexists(keys.host_boosts(host), cid), 10, "boost dropped")
    assert asyncio.run(enter(("refill", False))) == [True]
