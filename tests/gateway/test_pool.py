"""The warm pool (real Docker, real Redis): refills after acquisitions, autoscaling from
demand, a rebuilt image retiring old warm containers, health checks of the pooled,
release-not-destroy, and acquisitions that never share a container."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from gateway.containers.containers import Containers, affinity
from gateway.containers.docker_runtime import DockerRuntime
from gateway.controller.autoscale import Autoscaler, Demand, peak_within, target_for
from gateway.observability.counters import COUNTERS
from shared import keys
from shared.messages import Heartbeat
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    pooled,
    running,
)
from tests.utils import async_wait_until


async def test_pool_refills_after_acquisitions(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    controller = make_controller(fast(settings, pool_min=2, pool_max=2))
    containers = controller.containers
    async with running(controller):
        first = await async_wait_until(
            lambda: _full(redis, containers, 2), timeout=60, what="the pool to fill"
        )
        taken = [await containers.pop_pooled("p1"), await containers.pop_pooled("p2")]
        assert {t.cid for t in taken if t} == set(first)
        assert all(t is not None and t.from_pool and t.address for t in taken)
        again = await async_wait_until(
            lambda: _full(redis, containers, 2), timeout=60, what="the pool to refill"
        )
        assert not set(again) & set(first)  # new containers, the taken ones stay taken
    for cid in first:
        assert (await redis.hget(keys.container(cid), "state")) == b"assigned"


async def _full(redis: Redis, containers: Containers, size: int) -> list[str] | None:
    cids = await pooled(redis, containers)
    return cids if len(cids) >= size else None


async def test_burst_raises_the_target_and_quiet_keeps_the_peak(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    controller = make_controller(fast(settings, pool_min=1, pool_max=4))
    containers, keeper = controller.containers, controller.keeper
    await containers.image_id()
    await redis.hset(keys.POOL_STATS, "replenish_s", "5.0")
    for i in range(3):  # a burst of starts against an empty pool: all misses
        assert await containers.pop_pooled(f"p{i}") is None
    before = COUNTERS.get("pool_scaled", "up")
    target, demand = await keeper.autoscaler.target()
    assert (target, demand.peak) == (3, 3)
    async with running(controller):
        await async_wait_until(
            lambda: _full(redis, containers, 3), timeout=60, what="the pool to grow to 3"
        )
    assert keeper.target == 3 and COUNTERS.get("pool_scaled", "up") == before + 1
    assert int(await redis.hget(keys.POOL_STATS, "misses") or 0) == 3
    # An hour later the burst is still remembered (window 2 h): the target holds.
    later = await keeper.autoscaler.demand(now=time.time() + 3600)
    assert target_for(controller.settings, later) == 3


def test_autoscale_arithmetic(settings: Settings) -> None:
    assert peak_within([], 5) == 0
    assert peak_within([0, 1, 2, 10, 10.5, 11, 11.2], 2) == 4
    s = fast(settings, pool_min=2, pool_max=5)
    assert target_for(s, Demand(peak=0, rate=0.0, replenish=10)) == 2
    assert target_for(s, Demand(peak=4, rate=0.0, replenish=10)) == 4
    assert target_for(s, Demand(peak=1, rate=0.35, replenish=10)) == 4  # 3.5 per replenish
    assert target_for(s, Demand(peak=50, rate=0.0, replenish=10)) == 5


async def test_replenish_time_is_smoothed(settings: Settings, redis: Redis) -> None:
    scaler = Autoscaler(settings, redis)
    await scaler.record_replenish(10.0)
    await scaler.record_replenish(20.0)
    assert await scaler.replenish_time() == pytest.approx(13.0)


def build_image(tag: str, base: str, marker: str) -> str:
    """`FROM base` plus a label: a new image id with the same content (a rebuild)."""
    dockerfile = f"FROM {base}\nLABEL preview-gateway.test-build={marker}\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile.encode(),
        check=True,
        capture_output=True,
    )
    return subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def rebuildable_image(test_image: str) -> Iterator[tuple[str, list[str]]]:
    """A tag of our own that a test can rebuild; (tag, ids built), all removed after."""
    tag = f"preview-gateway/preview:test-{TEST_RUN}"
    built = [build_image(tag, test_image, "first")]
    yield tag, built
    subprocess.run(["docker", "rmi", "-f", tag, *built], capture_output=True, check=False)


async def test_rebuilt_image_retires_old_warm_containers(
    settings: Settings,
    redis: Redis,
    make_controller: ControllerFactory,
    rebuildable_image: tuple[str, list[str]],
    test_image: str,
) -> None:
    tag, built = rebuildable_image
    controller = make_controller(fast(settings, image=tag, pool_min=2, pool_max=2))
    containers = controller.containers
    containers.image_ttl = 0.2
    runtime = containers.runtime
    async with running(controller):
        old = await async_wait_until(
            lambda: _full(redis, containers, 2), timeout=60, what="the pool to fill"
        )
        new_id = await asyncio.to_thread(build_image, tag, test_image, "rebuilt")
        built.append(new_id)
        assert new_id != built[0]

        async def renewed() -> bool:
            cids = [c.decode() for c in await redis.lrange(keys.pool(new_id), 0, -1)]
            return len(cids) == 2 and not await redis.exists(keys.pool(built[0]))

        await async_wait_until(renewed, timeout=60, what="the pool of the rebuilt image")
    for cid in old:
        assert await runtime.default.inspect(cid) is None
        assert not await redis.exists(keys.container(cid))


async def test_dead_pooled_container_is_dropped_and_replaced(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    # No full health check after the first pass: the expired heartbeat alone must drop it
    # (it used to hold its place until the next check, 60 s apart by default).
    controller = make_controller(
        fast(settings, pool_min=1, pool_max=1, pool_health_interval=3600.0)
    )
    containers = controller.containers
    before = COUNTERS.get("container_destroyed", "unhealthy")
    async with running(controller):
        (dead,) = await async_wait_until(
            lambda: _full(redis, containers, 1), timeout=60, what="the pool to fill"
        )
        subprocess.run(["docker", "kill", dead], check=True, capture_output=True)

        async def replaced() -> bool:
            cids = await pooled(redis, containers)
            return len(cids) == 1 and dead not in cids

        await async_wait_until(replaced, timeout=30, what="the dead container to be replaced")
    assert await containers.runtime.default.inspect(dead) is None
    assert COUNTERS.get("container_destroyed", "unhealthy") == before + 1


async def test_release_destroys_what_must_not_serve_again(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    """Its disk nearly full, or served its maximum: destroyed (the keeper replaces it)."""
    s = fast(settings, container_max_sessions=2, container_disk_mb=64)
    containers = make_controller(s).containers
    image = await containers.image_id()
    full = await containers.launch()
    heartbeat = await containers.wait_idle(full.cid)
    assert heartbeat.disk_total == 64 << 20  # the kernel's bound
    # It has written next to nothing: fake a number over 85% of the bound.
    big = Heartbeat(**{**heartbeat.__dict__, "disk_used": 60 << 20, "ts": time.time()})
    await redis.set(keys.heartbeat(full.cid), big.to_json(), px=60_000)
    assert await containers.release(full.cid, "p") is False
    assert await containers.runtime.default.inspect(full.cid) is None

    worn = await containers.launch()
    await containers.wait_idle(worn.cid)
    assert await containers.release(worn.cid, "p") is True  # served 1
    assert await containers.pop_pooled("p") is not None
    assert await containers.release(worn.cid, "p") is False  # served 2: the maximum
    assert not await redis.exists(keys.container(worn.cid))
    assert await redis.llen(keys.pool(image)) == 0


async def test_hundred_concurrent_acquisitions_across_gateways_never_share(
    settings: Settings, redis: Redis, redis_server: object
) -> None:
    """Two gateways (own clients), 100 concurrent starts, 40 warm containers."""
    runtime = DockerRuntime(settings)
    clients = [Redis.from_url(redis_server.url) for _ in range(2)]  # type: ignore[attr-defined]
    gateways = [
        Containers(settings, c, runtime, labels={LABEL_TEST_RUN: TEST_RUN}) for c in clients
    ]
    try:
        image = await gateways[0].image_id()
        cids = [f"pvc-fake{i:03d}" for i in range(40)]
        for i, cid in enumerate(cids):
            project = "shop" if i % 4 == 0 else ""
            await redis.hset(
                keys.container(cid),
                mapping={"cid": cid, "image": image, "project": project, "host": "local"},
            )
            await redis.set(keys.heartbeat(cid), "{}", ex=60)
            await redis.lpush(keys.pool(image), cid)
        results = await asyncio.gather(
            *(gateways[i % 2].pop_pooled("shop" if i % 3 == 0 else f"p{i}") for i in range(100))
        )
        taken = [r.cid for r in results if r is not None]
        assert sorted(taken) == sorted(cids)  # each exactly once
        assert await redis.llen(keys.pool(image)) == 0
        assert int(await redis.zcard(keys.POOL_DEMAND)) == 100
    finally:
        for client in clients:
            await client.aclose()
        await runtime.close()


async def test_a_start_on_full_hosts_evicts_another_users_reserved_container(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    """A reserved container only saves its user a start; a start that finds no room
    destroys one (released longest ago) and gets a fresh container, never that one."""
    s = fast(settings, pool_min=0, pool_max=0, host_max_containers=1)
    containers = make_controller(s).containers
    before = COUNTERS.get("container_destroyed", "reserved_evicted")
    alice = await containers.acquire("alice", affinity("alice", "shop"))
    await containers.wait_idle(alice.cid)
    assert await containers.release(alice.cid, "alice", affinity("alice", "shop"))
    bob = await containers.acquire("bob", affinity("bob", "shop"))
    assert bob.cid != alice.cid and not bob.from_pool
    assert await containers.runtime.default.inspect(alice.cid) is None
    assert await redis.zcard(keys.RESERVED) == 0
    assert COUNTERS.get("container_destroyed", "reserved_evicted") == before + 1
    assert await redis.hget(keys.container(bob.cid), "user") == b"bob"


async def test_the_keeper_evicts_reserved_containers_for_the_general_pool(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    """Hosts full and the general pool below its target: reserved containers (only their
    user's) make room for fresh ones (anyone's)."""
    controller = make_controller(fast(settings, pool_min=1, pool_max=1, host_max_containers=1))
    containers = controller.containers
    before = COUNTERS.get("container_destroyed", "reserved_evicted")
    async with running(controller):
        (warm,) = await async_wait_until(
            lambda: _full(redis, containers, 1), timeout=60, what="the pool to fill"
        )
        taken = await containers.acquire("alice", affinity("alice", "shop"))
        assert taken.cid == warm
        assert await containers.release(warm, "alice", affinity("alice", "shop"))
        (fresh,) = await async_wait_until(
            lambda: _full(redis, containers, 1), timeout=60, what="a fresh container"
        )
    assert fresh != warm
    assert await containers.runtime.default.inspect(warm) is None
    assert COUNTERS.get("container_destroyed", "reserved_evicted") == before + 1
