"""Placement over Docker hosts and the per-host creation gate (real Redis; the engine is
asked only for its size)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from gateway.containers.boost import busy_containers
from gateway.containers.containers import ContainerError, Containers
from gateway.containers.create_gate import CreateGate
from gateway.containers.docker_runtime import DockerRuntime
from gateway.containers.placement import Placement, host_capacity
from shared import keys
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.utils import RedisServer, async_wait_until

GIB = 1 << 30


def test_capacity_from_memory_cpus_and_the_cap(settings: Settings) -> None:
    s = dataclasses.replace(
        settings, container_memory_mb=1024, container_cpus=1.0, host_cpu_overcommit=4.0
    )
    assert host_capacity(s, 16 * GIB, 8) == 16  # memory binds (CPU would allow 32)
    assert host_capacity(s, 64 * GIB, 2) == 8  # CPU binds
    assert host_capacity(dataclasses.replace(s, host_max_containers=5), 64 * GIB, 8) == 5
    assert host_capacity(s, 0, 0) == 0


async def test_most_free_host_first_down_and_full_skipped(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    other = f"unix://{tmp_path}/b.sock"
    s = dataclasses.replace(
        settings,
        docker_hosts=(settings.docker_hosts[0], other),
        container_memory_mb=1024,
        container_cpus=1.0,
        host_cpu_overcommit=1.0,
    )
    runtime = DockerRuntime(s)
    try:
        a, b = list(runtime.hosts)
        placement = Placement(s, redis, runtime)
        # Sizes as the controller's host checks record them: a has 4 places, b has 8.
        await redis.hset(keys.docker_host(a), mapping={"mem_total": 4 * GIB, "ncpu": 4})
        await redis.hset(keys.docker_host(b), mapping={"mem_total": 8 * GIB, "ncpu": 8})
        await redis.sadd(keys.host_containers(b), *[f"c{i}" for i in range(5)])
        assert [h.name for h in await placement.candidates()] == [a, b]  # 4 free vs 3
        await redis.sadd(keys.host_containers(a), "x1", "x2")
        assert [h.name for h in await placement.candidates()] == [b, a]  # 2 free vs 3
        await redis.hset(keys.docker_host(b), "state", "down")
        assert [h.name for h in await placement.candidates()] == [a]
        await redis.sadd(keys.host_containers(a), "x3", "x4")
        assert await placement.candidates() == []  # a full, b down
        containers = Containers(s, redis, runtime, labels={LABEL_TEST_RUN: TEST_RUN})
        with pytest.raises(ContainerError, match="full"):
            await containers.launch()
    finally:
        await runtime.close()


async def test_registration_never_overfills_a_host(settings: Settings, redis: Redis) -> None:
    runtime = DockerRuntime(settings)
    try:
        placement = Placement(settings, redis, runtime)
        name = next(iter(runtime.hosts))
        await redis.hset(keys.docker_host(name), mapping={"mem_total": 8 * GIB, "ncpu": 64})
        (state,) = await placement.states()
        state = dataclasses.replace(state, capacity=5)
        results = await asyncio.gather(
            *(placement.register(state, f"pvc-r{i}", {"cid": f"pvc-r{i}"}) for i in range(20))
        )
        assert sum(results) == 5
        assert await redis.scard(keys.host_containers(name)) == 5
    finally:
        await runtime.close()


async def test_gate_lets_starts_go_first(redis: Redis) -> None:
    gate = CreateGate(redis, cap=2)
    assert await gate.try_enter("h", "refill-a", start=False)
    assert not await gate.try_enter("h", "refill-b", start=False)  # the last place is kept
    assert await gate.try_enter("h", "start-a", start=True)  # ... for a start
    assert not await gate.try_enter("h", "start-b", start=True)  # full: start-b waits
    await gate.leave("h", "refill-a")
    assert not await gate.try_enter("h", "refill-b", start=False)  # a start is waiting
    assert await gate.try_enter("h", "start-b", start=True)
    assert await redis.zcard(keys.host_starts_waiting("h")) == 0


async def test_boosted_starts_hold_creation_places(redis: Redis) -> None:
    """Each container's worth of startup boost under way is a place taken (as placement
    counts it); an expired boost is not; a start with no creation under way always goes."""
    gate = CreateGate(redis, cap=3, container_cpus=0.5)
    expiry = time.time() + 60
    # 1.0 extra CPU = two containers' worth of 0.5: one place is left, kept for a start.
    await redis.hset(keys.host_boosts("h"), mapping={"c1": f"1.00|{expiry}"})
    await redis.hset(keys.host_boosts("h"), mapping={"c0": f"9.00|{time.time() - 1}"})
    assert not await gate.try_enter("h", "refill-a", start=False)
    assert await gate.try_enter("h", "start-a", start=True)
    assert not await gate.try_enter("h", "start-b", start=True)  # 1 + 2 places: full
    await gate.leave("h", "start-b")  # it gave up waiting
    # More boosted than the cap: a start still goes when nothing else is being created.
    await redis.hset(keys.host_boosts("h"), mapping={"c2": f"2.00|{expiry}"})
    await gate.leave("h", "start-a")
    assert await gate.try_enter("h", "start-c", start=True)
    await gate.leave("h", "start-c")
    await redis.delete(keys.host_boosts("h"))  # the starts are ready: boosts dropped
    assert await gate.try_enter("h", "refill-a", start=False)
    assert await gate.try_enter("h", "refill-b", start=False)


async def test_only_containers_that_can_use_cpu_count_against_the_boost_budget(
    redis: Redis,
) -> None:
    """Pooled and reserved containers wait idle and a sleeping preview's dev server is
    frozen: none of them uses CPU, so none takes a boost's room. Everything else does,
    including a container whose record is gone and the starting container itself."""
    states = {
        "pooled": ("pooled", ""),
        "reserved": ("reserved", ""),
        "asleep": ("assigned", "s-asleep"),
        "awake": ("assigned", "s-awake"),
        "releasing": ("releasing", "s-gone"),
        "warming": ("warming", ""),
    }
    for cid, (state, sid) in states.items():
        await redis.hset(keys.container(cid), mapping={"state": state, "session": sid})
    await redis.hset(keys.session("s-asleep"), "state", "sleeping")
    await redis.hset(keys.session("s-awake"), "state", "ready")
    await redis.sadd(keys.host_containers("h"), *states, "unrecorded", "starting")
    await redis.hset(keys.container("starting"), mapping={"state": "pooled"})
    # starting, awake, releasing, warming, unrecorded
    assert await busy_containers(redis, "h", "starting") == 5
    await redis.hset(keys.session("s-awake"), "state", "sleeping")
    assert await busy_containers(redis, "h", "starting") == 4
    assert await busy_containers(redis, "empty", "starting") == 1


async def test_a_refill_storm_does_not_starve_a_start(redis: Redis) -> None:
    """Eight refills queue for two places; a start arriving later gets in after at most
    one creation finishes, before every refill still waiting."""
    gate = CreateGate(redis, cap=2)
    order: list[str] = []

    async def create(name: str, start: bool, hold: float) -> None:
        async with gate.place("h", start=start):
            order.append(name)
            await asyncio.sleep(hold)

    refills = [asyncio.create_task(create(f"refill{i}", False, 0.15)) for i in range(8)]
    await asyncio.sleep(0.1)
    began = time.monotonic()
    await create("start", True, 0)
    waited = time.monotonic() - began
    await asyncio.gather(*refills)
    assert order.index("start") <= 2 and waited < 0.5, (order, waited)
    assert await redis.zcard(keys.host_creating("h")) == 0


async def test_a_place_held_when_redis_went_away_is_given_back(
    redis: Redis, redis_server: RedisServer
) -> None:
    """A creation that ends while Redis does not answer (a restart, a failover) cannot
    give its place back then; it must not keep it for the whole lease (120 s), which
    would stall every start on the host (measured: 72 s after a failover)."""
    quick = Redis.from_url(redis_server.url, socket_timeout=0.3)
    background = Background()  # the process's: the give-back is awaited at shutdown
    gate = CreateGate(quick, cap=1, background=background)
    try:
        with pytest.raises(RedisError):
            async with gate.place("h", start=True):
                # Writes wait, so the place cannot be given back when the block ends.
                await redis.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # type: ignore[no-untyped-call]
        assert await redis.zcard(keys.host_creating("h")) == 1
        assert [t.get_name() for t in background.tasks] == ["give back h"]

        async def given_back() -> bool:
            return await redis.zcard(keys.host_creating("h")) == 0

        await async_wait_until(given_back, 10, "the place given back")
        assert await gate.try_enter("h", "next", start=True)
        await background.close(1)
        assert not background.tasks
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
        await quick.aclose()


async def test_a_place_still_being_given_back_is_awaited_at_shutdown(
    redis: Redis, redis_server: RedisServer
) -> None:
    """The retries go through the process's Background, so shutdown cancels and awaits
    them rather than leaving a task behind (its lease frees the place in the end)."""
    quick = Redis.from_url(redis_server.url, socket_timeout=0.3)
    background = Background()
    gate = CreateGate(quick, cap=1, background=background)
    try:
        with pytest.raises(RedisError):
            async with gate.place("h", start=True):
                await redis.execute_command("CLIENT", "PAUSE", "5000", "WRITE")  # type: ignore[no-untyped-call]
        (task,) = background.tasks
        await background.close(0)
        assert task.cancelled() and not background.tasks
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
        await quick.aclose()
