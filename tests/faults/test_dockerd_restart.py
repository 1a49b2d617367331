"""`dockerd` restarted under a running preview (slow: a second engine, never the shared
one, with the preview image copied into it).

Restarted as `systemctl restart docker` does: SIGTERM, then started again. Without
live-restore (Docker's default) the engine stops every container on its way down, so a
preview on it cannot survive: its session must fail with a reason, not stay `ready`
pointing at a dead container; the pool is refilled on the engine once it is back, and
the containers it stopped are removed.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from tests.engines import (
    Engine,
    engine_fixture,  # noqa: F401 (fixture engine)
    redis_on_both_bridges_fixture,  # noqa: F401 (fixture redis_on_both_bridges)
)
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    load,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    pooled,
    running,
    start,
    starter_for,
    wait_state,
)
from tests.gateway.test_controller import host_is
from tests.utils import async_wait_until

pytestmark = pytest.mark.slow


async def test_dockerd_restart_fails_its_sessions_and_refills_the_pool_there(
    settings: Settings,
    redis_on_both_bridges: Redis,
    make_controller: ControllerFactory,
    engine: Engine,
) -> None:
    redis = redis_on_both_bridges
    s = fast(settings, docker_hosts=(engine.url,), pool_min=1, pool_max=1)
    controller = make_controller(s)
    containers, starter = controller.containers, starter_for(controller)
    (host,) = list(containers.runtime.hosts)

    async with running(controller):
        await async_wait_until(lambda: pooled(redis, containers), 120, "a pooled container")
        session = await start(starter, "erin", "engine-restart")
        ready = await wait_state(starter.previews, session.id, "ready", timeout=90)
        before = set(engine.docker("ps", "-q", "--no-trunc").stdout.split())
        await async_wait_until(lambda: pooled(redis, containers), 120, "the pool refilled")
        old_pool = set(await pooled(redis, containers))

        engine.shutdown()
        # What the engine did to its containers on the way down, once it is back.
        await async_wait_until(lambda: host_is(redis, host, "down"), 60, "the engine down")

        async def ended() -> bool:
            current = await load(redis, session.id)
            return current is None or current.state == "failed"

        await async_wait_until(ended, 30, "the session on the engine to fail")
        failed = await load(redis, session.id)
        assert failed is not None and failed.error is not None
        # The user is told the host is gone, never its name (an engine's name is its address).
        assert host not in failed.error["reason"] and "unreachable" in failed.error["reason"]
        assert await redis.zscore(keys.user_slots("erin"), session.id) is None

        engine.start()
        await async_wait_until(lambda: host_is(redis, host, "up"), 90, "the engine back")
        running_now = set(engine.docker("ps", "-q", "--no-trunc").stdout.split())
        assert not before & running_now  # stopped on the way down (no live-restore)

        async def refilled() -> list[str] | None:
            cids = set(await pooled(redis, containers))
            fresh = cids - old_pool
            return sorted(fresh) if fresh else None

        (new_cid,) = await async_wait_until(refilled, 120, "the pool refilled on the engine")
        assert text(await redis.hget(keys.container(new_cid), "host")) == host
        assert await redis.exists(keys.heartbeat(new_cid))

        async def swept() -> bool:
            names = engine.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
            return ready.container not in names and not (old_pool & set(names))

        await async_wait_until(swept, 120, "the stopped containers removed")
