"""The reaper and the orphan sweep (real Docker, real Redis): dead containers fail their
session within 2 x TTL, idle sessions go back to the pool and come back with their
node_modules, the idle check loses to fresh traffic, lifetime and resource rules, and
orphans both ways."""

from __future__ import annotations

import subprocess
import time

from redis.asyncio import Redis

from gateway.containers.containers import affinity
from gateway.observability.counters import COUNTERS
from gateway.sessions.previews import Previews
from gateway.sessions.store import Session
from shared import keys
from shared.messages import Heartbeat
from shared.settings import Settings
from tests.conftest import ContainerFactory
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    beat,
    fake_session,
    fast,
    load,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    pooled,
    project_archive,
    running,
    start,
    starter_for,
    wait_state,
)
from tests.utils import async_wait_until

MIB = 1 << 20


async def test_killed_container_fails_its_session_within_two_ttl(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    s = fast(settings)
    controller = make_controller(s)
    containers, starter = controller.containers, starter_for(controller)
    async with running(controller):
        await async_wait_until(lambda: pooled(redis, containers), 60, "the pool to fill")
        session = await start(starter, "alice", "doomed")
        await wait_state(starter.previews, session.id, "ready")
        cid = session.container
        await async_wait_until(lambda: pooled(redis, containers), 60, "the pool to refill")

        async def serving() -> Heartbeat | None:
            heartbeat = await containers.heartbeat(cid)
            return heartbeat if heartbeat and heartbeat.session_id == session.id else None

        await async_wait_until(serving, 10, "a heartbeat for the session")
        subprocess.run(["docker", "kill", cid], check=True, capture_output=True)
        last = await containers.heartbeat(cid)  # dead now: this was its last heartbeat
        assert last is not None

        async def failed() -> bool:
            current = await load(redis, session.id)
            return current is not None and current.state == "failed"

        await async_wait_until(failed, 3 * s.heartbeat_ttl, "the session to fail")
        failed_at = time.time()
        current = await load(redis, session.id)
        assert current is not None and current.error is not None
        assert current.error["reason"] == "container stopped responding"
        assert failed_at - last.ts <= 2 * s.heartbeat_ttl, failed_at - last.ts
        assert await redis.zscore(keys.user_slots("alice"), session.id) is None  # slot freed
        assert not await redis.sismember(keys.SESSIONS, session.id)

        async def removed() -> bool:  # Docker may still be finishing a removal it began
            return await containers.runtime.default.inspect(cid) is None

        await async_wait_until(removed, 10, "the container to be removed")
        assert not await redis.sismember(keys.CONTAINERS, cid)
        assert await pooled(redis, containers) and cid not in await pooled(redis, containers)


async def ready_prepared(previews: Previews, sid: str) -> Session:
    """Ready, with the prepare command's result folded in: the dev server can answer (and
    the session turn ready) a moment before that result is read."""

    async def prepared() -> Session | None:
        session = await wait_state(previews, sid, "ready", timeout=120)
        return session if session.dependencies else None

    return await async_wait_until(prepared, 30, "the prepare result with ready")


async def test_idle_session_is_kept_for_its_user_and_returns_with_node_modules(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    controller = make_controller(fast(settings, idle_timeout=4.0))
    containers, starter = controller.containers, starter_for(controller)
    archive = project_archive()
    async with running(controller):
        await async_wait_until(lambda: pooled(redis, containers), 60, "the pool to fill")
        session = await start(starter, "bob", "kept", {"type": "archive"})
        assert await starter.prepare_pending(session, archive)
        ready = await ready_prepared(starter.previews, session.id)
        assert ready.dependencies == "installed"
        cid = ready.container
        stopped = COUNTERS.get("session_stopped", "idle")

        async def reserved() -> bool:
            return cid in await containers.reserved.all()

        await async_wait_until(reserved, 30, "the idle session's container kept for bob")
        assert cid not in await pooled(redis, containers)
        assert COUNTERS.get("session_stopped", "idle") == stopped + 1
        assert await redis.hget(keys.container(cid), "project") == affinity("bob", "kept").encode()
        assert await redis.zscore(keys.user_slots("bob"), session.id) is None

        again = await start(starter, "bob", "kept", {"type": "archive"})
        assert again.container == cid and again.from_pool
        assert await starter.prepare_pending(again, archive)
        reused = await ready_prepared(starter.previews, again.id)
        assert reused.dependencies == "skipped"  # node_modules were kept by the reset
        code, out = await containers.runtime.default.exec(
            cid, ["cat", "/workspace/node_modules/dep/index.js"]
        )
        assert code == 0 and "42" in out


async def test_fresh_traffic_wins_over_the_idle_reaper(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    controller = make_controller(fast(settings, idle_timeout=5.0))
    reaper = controller.reaper
    session = await fake_session(redis, "pvc-busy", age=60)
    await beat(redis, "pvc-busy", session)
    found = {"host": "local", "created_at": repr(time.time() - 60)}
    heartbeat = await controller.containers.heartbeat("pvc-busy")
    stale = time.time() - 30
    # The pass read an old activity time; a request arrived since.
    await redis.set(keys.activity(session.id), repr(time.time()))
    skipped = COUNTERS.get("reap_skipped", "fresh_activity")
    assert not await reaper.check(session, found, heartbeat, stale, set())
    assert COUNTERS.get("reap_skipped", "fresh_activity") == skipped + 1
    assert (await load(redis, session.id)).state == "ready"  # type: ignore[union-attr]
    # Someone else holds the session's lock: the reaper leaves it for the next pass.
    await redis.set(keys.activity(session.id), repr(stale))
    await redis.set(keys.session_lock(session.id), "someone", px=10_000)
    assert not await reaper.check(session, found, heartbeat, stale, set())
    await redis.delete(keys.session_lock(session.id))
    assert await reaper.check(session, found, heartbeat, stale, set())
    assert (await load(redis, session.id)).state == "stopping"  # type: ignore[union-attr]
    assert await redis.zscore(keys.user_slots("alice"), session.id) is None


async def test_maximum_lifetime(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    controller = make_controller(fast(settings, session_max_lifetime=30.0))
    young = await fake_session(redis, "pvc-young", user="u1", age=10)
    old = await fake_session(redis, "pvc-old", user="u2", age=40)
    await beat(redis, "pvc-young", young)
    await beat(redis, "pvc-old", old)
    before = COUNTERS.get("session_stopped", "max_lifetime")
    assert await controller.reaper.tick() == 1
    assert (await load(redis, young.id)).state == "ready"  # type: ignore[union-attr]
    assert (await load(redis, old.id)).state == "stopping"  # type: ignore[union-attr]
    assert COUNTERS.get("session_stopped", "max_lifetime") == before + 1


async def test_memory_restart_then_recycle(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    controller = make_controller(fast(settings, resource_grace=0.5))
    session = await fake_session(redis, "pvc-hog")
    hog = int(0.95 * (768 << 20))
    await beat(redis, "pvc-hog", session, memory_used=hog)
    await controller.reaper.tick()
    commands = await redis.xrange(keys.commands("pvc-hog"))
    assert [b'"type":"restart"' in fields[b"command"] for _, fields in commands] == [True]
    assert (await load(redis, session.id)).state == "ready"  # type: ignore[union-attr]

    async def recycled() -> bool:
        await beat(redis, "pvc-hog", session, memory_used=hog)  # still over after the restart
        await controller.reaper.tick()
        current = await load(redis, session.id)
        return current is not None and current.state == "failed"

    before = COUNTERS.get("session_failed", "memory")
    await async_wait_until(recycled, 10, "the container to be recycled")
    current = await load(redis, session.id)
    assert current is not None and current.error is not None
    assert "memory" in current.error["reason"] and "restarted" in current.error["reason"]
    assert COUNTERS.get("session_failed", "memory") == before + 1
    assert not await redis.exists(keys.container("pvc-hog"))
    assert await redis.zscore(keys.user_slots("alice"), session.id) is None


async def test_memory_back_under_starts_the_rule_afresh(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    controller = make_controller(fast(settings, resource_grace=0.2))
    session = await fake_session(redis, "pvc-spike")
    await beat(redis, "pvc-spike", session, memory_used=int(0.95 * (768 << 20)))
    await controller.reaper.tick()

    async def recovered() -> bool:
        await beat(redis, "pvc-spike", session, memory_used=100 << 20)
        await controller.reaper.tick()
        return not await redis.hexists(keys.container("pvc-spike"), "mem_action_at")

    await async_wait_until(recovered, 10, "the memory rule to reset")
    assert (await load(redis, session.id)).state == "ready"  # type: ignore[union-attr]


async def test_disk_cleans_caches_then_recycles(
    settings: Settings,
    redis: Redis,
    make_controller: ControllerFactory,
    make_container: ContainerFactory,
) -> None:
    controller = make_controller(fast(settings, resource_grace=0.5, container_disk_mb=64))
    host = controller.containers.runtime.default
    # A container without a supervisor: this test writes its heartbeats.
    async with make_container(command=["sleep", "600"]) as info:
        cache = "/workspace/node_modules/.cache/babel"
        code, out = await host.exec(
            info.cid,
            ["sh", "-c", f"mkdir -p {cache} && head -c 100000 /dev/zero > {cache}/x"],
            user="app",
        )
        assert code == 0, out
        session = await fake_session(redis, info.cid)
        full = int(0.9 * 64 * MIB)
        await beat(redis, info.cid, session, disk_used=full)
        await controller.reaper.tick()
        code, _ = await host.exec(info.cid, ["test", "-e", "/workspace/node_modules/.cache"])
        assert code != 0  # cleaned
        code, _ = await host.exec(info.cid, ["test", "-d", "/workspace/node_modules"])
        assert code == 0  # node_modules itself stays

        async def recycled() -> bool:
            await beat(redis, info.cid, session, disk_used=full)
            await controller.reaper.tick()
            current = await load(redis, session.id)
            return current is not None and current.state == "failed"

        await async_wait_until(recycled, 10, "the container to be recycled")
        current = await load(redis, session.id)
        assert current is not None and current.error is not None
        assert "disk" in current.error["reason"]
        assert await host.inspect(info.cid) is None


async def test_orphans_both_ways(
    settings: Settings,
    redis: Redis,
    make_controller: ControllerFactory,
    make_container: ContainerFactory,
) -> None:
    controller = make_controller(fast(settings, pool_warm_timeout=1.0))
    containers, sweeper = controller.containers, controller.orphans
    host = containers.runtime.default
    # Ours, but Redis forgot it (its launcher died).
    stranger = await containers.launch()
    await containers.forget(stranger.cid)
    # Ours and known, but gone from Docker, with a session on it.
    vanished = await containers.launch()
    session = await fake_session(redis, vanished.cid, user="carol")
    await redis.hset(keys.container(vanished.cid), "image", await containers.image_id())
    await host.remove(vanished.cid)
    # Taken from the pool by a start that died before attaching it.
    stuck = await containers.launch()
    await containers.wait_idle(stuck.cid)
    await redis.hset(
        keys.container(stuck.cid),
        mapping={"state": "assigned", "assigned_at": repr(time.time() - 5), "user": "dave"},
    )
    leftover = f"pvc-{settings.deployment}-{'0' * 12}"
    # Another deployment's, on another database of this Redis server (users are per server).
    others = f"pvc-{settings.deployment}x-{'0' * 12}"
    for user in (leftover, others):
        await redis.execute_command("ACL", "SETUSER", user, "on", ">pw")
    async with make_container(command=["sleep", "600"]) as foreign:  # another deployment's
        await sweeper.sweep()
        assert await host.inspect(stranger.cid) is None
        assert await host.inspect(foreign.cid) is not None
    current = await load(redis, session.id)
    assert current is not None and current.state == "failed"
    assert current.error == {"reason": "the preview's container is gone", "detail": ""}
    assert not await redis.exists(keys.container(vanished.cid))
    users = await redis.execute_command("ACL", "USERS")
    assert leftover.encode() not in users and others.encode() in users
    # Its user's code may have run: kept for that user only.
    assert await redis.hget(keys.container(stuck.cid), "state") == b"reserved"
    assert await redis.zscore(keys.user_reserved("dave"), stuck.cid) is not None


async def test_a_sleeping_heartbeat_is_judged_by_its_longer_ttl(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    # Awake beats live 4 s; a sleeping supervisor beats every 4 s, its beats living 12 s.
    # Key gone (expired, or lost in a failover), history left: the last beat's state says
    # which limit applies.
    s = fast(settings, sleep_heartbeat_interval=4.0)
    assert (s.heartbeat_ttl, s.sleep_heartbeat_ttl) == (4.0, 12.0)
    controller = make_controller(s)

    async def trusted() -> bool:  # a Redis only just started: missing beats are no news
        await controller.reaper.outage.check()
        return controller.reaper.outage.heartbeats_trusted

    await async_wait_until(trusted, 3 * s.heartbeat_ttl, "heartbeats to be trusted")
    sessions = {}
    for name, state, age in [
        ("pvc-dozing", "sleeping", 6.0),  # past the awake TTL only: alive
        ("pvc-dead-awake", "ready", 6.0),
        ("pvc-dead-asleep", "sleeping", 13.0),
    ]:
        session = await fake_session(redis, name, user=name, state=state)
        last = Heartbeat(name, time.time() - age, session.id, state)  # type: ignore[arg-type]
        entry = {keys.HEARTBEAT_HISTORY_FIELD: last.to_json()}
        await redis.xadd(keys.heartbeat_history(name), entry)  # type: ignore[arg-type]
        sessions[name] = session
    assert await controller.reaper.tick() == 2
    states = {name: (await load(redis, sess.id)) for name, sess in sessions.items()}
    assert states["pvc-dozing"] is not None and states["pvc-dozing"].state == "sleeping"
    for name in ("pvc-dead-awake", "pvc-dead-asleep"):
        current = states[name]
        assert current is not None and current.state == "failed", (name, current)
        assert current.error is not None and "no heartbeat" in current.error["detail"]
    assert "limit 12s" in states["pvc-dead-asleep"].error["detail"]  # type: ignore[index,union-attr]
