"""Containers as the gateway sees them: launch with an ACL user, pool, commands, release."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from gateway.containers.containers import Containers, HostGone, affinity
from gateway.containers.docker_runtime import DockerRuntime
from gateway.containers.launch import supervisor_redis_url
from shared import keys
from shared.messages import Command
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN


@pytest_asyncio.fixture
async def containers(settings: Settings, redis: Redis) -> AsyncIterator[Containers]:
    runtime = DockerRuntime(settings)
    manager = Containers(settings, redis, runtime, labels={LABEL_TEST_RUN: TEST_RUN})
    try:
        yield manager
    finally:
        for raw in await redis.smembers(keys.CONTAINERS):
            await manager.destroy(raw.decode(), "test cleanup")
        await runtime.close()


def test_supervisor_url_reaches_host_redis_as_its_own_user() -> None:
    settings = Settings.from_env({}, redis_url="redis://:admin@127.0.0.1:6390/2")
    url = supervisor_redis_url(settings, "pvc-1", "pw")
    assert url == "redis://pvc-1:pw@host.docker.internal:6390/2"
    assert "admin" not in url


async def test_launch_heartbeat_and_command_round_trip(
    containers: Containers, redis: Redis
) -> None:
    started = time.monotonic()
    info = await containers.launch()
    heartbeat = await containers.wait_idle(info.cid, timeout=60)
    assert heartbeat.container_id == info.cid and heartbeat.session_id is None
    assert heartbeat.memory_limit == containers.settings.container_memory_mb * 1024 * 1024
    result = await containers.send(info.cid, Command("logs", {"lines": 5}), timeout=20)
    assert result.ok and result.result == {"lines": []}
    record = await redis.hgetall(keys.container(info.cid))
    assert record[b"state"] == b"warming" and record[b"address"]
    print(f"launch to idle: {time.monotonic() - started:.2f}s")


async def test_container_user_is_confined_to_its_keys(
    containers: Containers, redis: Redis, redis_server: object
) -> None:
    info = await containers.launch()
    await containers.wait_idle(info.cid, timeout=60)
    # The supervisor's own URL, but from the host: same user and password.
    code, env = await containers.runtime.default.exec(info.cid, ["cat", "/proc/1/environ"])
    url = next(
        v.split("=", 1)[1] for v in env.split("\0") if v.startswith("PREVIEW_SUPERVISOR_REDIS_URL=")
    )
    host_url = url.replace("host.docker.internal", "127.0.0.1")
    as_container = Redis.from_url(host_url)
    try:
        assert await as_container.get(keys.heartbeat(info.cid)) is not None
        await redis.set(keys.session("someone"), "secret")
        with pytest.raises(NoPermissionError):
            await as_container.get(keys.session("someone"))
        with pytest.raises(NoPermissionError):
            await as_container.set(keys.heartbeat("pvc-other"), "forged")
        with pytest.raises(NoPermissionError):
            await as_container.keys("*")
    finally:
        await as_container.aclose()
    # And user code (uid app) cannot read those credentials at all.
    code, out = await containers.runtime.default.exec(
        info.cid, ["cat", "/proc/1/environ"], user="app"
    )
    assert code != 0 and "PREVIEW_SUPERVISOR_REDIS_URL" not in out


async def fake_pooled(redis: Redis, image: str, cid: str, project: str = "") -> None:
    """A pool entry with a live heartbeat, without a container (pure Redis logic)."""
    await redis.hset(
        keys.container(cid),
        mapping={"cid": cid, "image": image, "project": project, "host": "local"},
    )
    await redis.set(keys.heartbeat(cid), "{}", ex=60)
    await redis.lpush(keys.pool(image), cid)


async def test_concurrent_acquisitions_never_share_a_container(
    containers: Containers, redis: Redis
) -> None:
    image = await containers.image_id()
    cids = [f"pvc-fake{i:03d}" for i in range(40)]
    for cid in cids:
        await fake_pooled(redis, image, cid)
    results = await asyncio.gather(*(containers.pop_pooled(f"p{i}") for i in range(100)))
    taken = [r.cid for r in results if r is not None]
    assert sorted(taken) == sorted(cids)  # each exactly once
    assert sum(r is None for r in results) == 60
    assert await redis.llen(keys.pool(image)) == 0
    for cid in cids:
        await redis.delete(keys.container(cid), keys.heartbeat(cid))


async def fake_reserved(
    redis: Redis, image: str, cid: str, user: str, project: str = "", ttl: float = 60.0
) -> None:
    """A container reserved for `user` as a release leaves it (pure Redis logic)."""
    until = time.time() + ttl
    await redis.hset(
        keys.container(cid),
        mapping={
            "cid": cid,
            "image": image,
            "project": project,
            "host": "local",
            "state": "reserved",
            "user": user,
        },
    )
    await redis.set(keys.heartbeat(cid), "{}", ex=60)
    await redis.zadd(keys.user_reserved(user), {cid: until})
    await redis.zadd(keys.RESERVED, {cid: until})


async def test_a_container_never_serves_two_users(containers: Containers, redis: Redis) -> None:
    """Reserved containers go to their own user only (same project first, never past
    their time); the general pool never hands out one a user had, nor a dead one."""
    image = await containers.image_id()
    await fake_pooled(redis, image, "pvc-used")  # the oldest entry: taken first if allowed
    await redis.hset(keys.container("pvc-used"), "user", "mallory")  # ran mallory's code
    await fake_pooled(redis, image, "pvc-served")  # pooled after a session by older code
    await redis.hset(keys.container("pvc-served"), "served", "3")
    await fake_pooled(redis, image, "pvc-dead")
    await redis.delete(keys.heartbeat("pvc-dead"))  # stopped heartbeating while pooled
    await fake_pooled(redis, image, "pvc-fresh")
    await fake_reserved(redis, image, "pvc-a-shop", "alice", affinity("alice", "shop"))
    await fake_reserved(redis, image, "pvc-a-blog", "alice", affinity("alice", "blog"))
    await fake_reserved(redis, image, "pvc-a-late", "alice", ttl=-1.0)  # its time is up
    await fake_reserved(redis, image, "pvc-bob", "bob", affinity("bob", "shop"))

    carol = await containers.pop_pooled("carol", affinity("carol", "shop"))
    assert carol is not None and (carol.cid, carol.reserved) == ("pvc-fresh", False)
    assert await containers.pop_pooled("carol", affinity("carol", "shop")) is None
    blog = await containers.pop_pooled("alice", affinity("alice", "blog"))
    assert blog is not None and (blog.cid, blog.reserved) == ("pvc-a-blog", True)
    other = await containers.pop_pooled("alice", affinity("alice", "new"))
    assert other is not None and other.cid == "pvc-a-shop"  # the same user's other project
    assert await containers.pop_pooled("alice", affinity("alice", "shop")) is None
    bob = await containers.pop_pooled("bob", affinity("bob", "shop"))
    assert bob is not None and bob.cid == "pvc-bob"

    assert await redis.hget(keys.container("pvc-fresh"), "user") == b"carol"
    assert await redis.lrange(keys.pool(image), 0, -1) == [b"pvc-dead", b"pvc-served", b"pvc-used"]
    assert await redis.zrange(keys.RESERVED, 0, -1) == [b"pvc-a-late"]
    assert int(await redis.hget(keys.POOL_STATS, "reserved_hits") or 0) == 3
    assert int(await redis.zcard(keys.POOL_DEMAND)) == 3  # reserved hits draw no demand
    for cid in ("pvc-used", "pvc-served", "pvc-dead", "pvc-fresh", "pvc-a-shop", "pvc-a-blog"):
        await containers.forget(cid)
    await containers.forget("pvc-a-late")
    await containers.forget("pvc-bob")
    assert not await redis.exists(keys.RESERVED, keys.user_reserved("alice"))


async def test_a_resume_takes_a_container_only_on_its_archives_host(
    containers: Containers, redis: Redis
) -> None:
    """A hibernation archive is on one host: a resume takes the project's reserved
    container or a pooled one there, never one elsewhere; a host that is gone is said so
    (HostGone) before anything is created anywhere."""
    image = await containers.image_id()
    owner = affinity("alice", "shop")
    await fake_reserved(redis, image, "pvc-shop-there", "alice", owner)  # host "local"
    await fake_pooled(redis, image, "pvc-pool-other")
    await redis.hset(keys.container("pvc-pool-other"), "host", "elsewhere")
    await fake_reserved(redis, image, "pvc-shop-other", "alice", owner)
    await redis.hset(keys.container("pvc-shop-other"), "host", "elsewhere")
    await fake_pooled(redis, image, "pvc-pool-here")
    local = containers.runtime.default.name
    await redis.hset(keys.container("pvc-pool-here"), "host", local)
    await redis.hset(keys.container("pvc-shop-there"), "host", local)

    mine = await containers.pop_pooled("alice", owner, local)
    assert mine is not None and (mine.cid, mine.reserved) == ("pvc-shop-there", True)
    pooled = await containers.pop_pooled("alice", owner, local)  # the other is elsewhere
    assert pooled is not None and pooled.cid == "pvc-pool-here"
    assert await containers.pop_pooled("alice", owner, local) is None
    assert await containers.pop_pooled("bob", "", "nowhere") is None
    with pytest.raises(HostGone):
        await containers.acquire("alice", owner, "tcp://203.0.113.9:2375")
    assert await redis.zrange(keys.user_reserved("alice"), 0, -1) == [b"pvc-shop-other"]
    assert await redis.lrange(keys.pool(image), 0, -1) == [b"pvc-pool-other"]
    assert {c.decode() for c in await redis.smembers(keys.CONTAINERS)} <= {
        "pvc-shop-there",
        "pvc-pool-other",
        "pvc-shop-other",
        "pvc-pool-here",
    }  # nothing launched
    for cid in ("pvc-shop-there", "pvc-pool-other", "pvc-shop-other", "pvc-pool-here"):
        await containers.forget(cid)


async def test_release_reserves_for_its_user_and_destroy_leaves_nothing(
    containers: Containers, redis: Redis
) -> None:
    info = await containers.launch()
    await containers.wait_idle(info.cid, timeout=60)
    owner = affinity("alice", "shop")
    assert await containers.release(info.cid, "alice", owner) is True
    assert await redis.llen(keys.pool(await containers.image_id())) == 0  # never the general
    until = await redis.zscore(keys.user_reserved("alice"), info.cid)
    assert until is not None and until > time.time()
    assert await redis.zscore(keys.RESERVED, info.cid) == until
    found = await redis.hmget(keys.container(info.cid), "state", "project", "user")
    assert found == [b"reserved", owner.encode(), b"alice"]
    assert await containers.pop_pooled("bob") is None
    await containers.destroy(info.cid, "test")
    assert await containers.runtime.default.inspect(info.cid) is None
    assert not [k async for k in redis.scan_iter(match=f"*{info.cid}*")]
    assert await redis.zscore(keys.RESERVED, info.cid) is None
    users = await redis.execute_command("ACL", "USERS")
    assert info.cid.encode() not in users


async def test_acquire_creates_when_the_pool_is_empty(containers: Containers) -> None:
    project = secrets.token_hex(4)
    assigned = await containers.acquire("alice", affinity("alice", project))
    assert assigned.from_pool is False and assigned.address
    await containers.wait_idle(assigned.cid, timeout=60)
