"""Placement over two real Docker engines on this machine (slow: a second dockerd, its own
bridge, and the preview image copied into it).

Containers are placed on both engines by free capacity and work on either (their
supervisors reach Redis through each engine's own bridge); when the second engine dies
its session fails naming the host and the pool is refilled on the first; when it is
back, the containers it kept are removed.
"""

from __future__ import annotations

import httpx
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


async def test_two_engines_placement_failure_and_return(
    settings: Settings,
    redis_on_both_bridges: Redis,
    make_controller: ControllerFactory,
    engine: Engine,
) -> None:
    redis = redis_on_both_bridges
    local = settings.docker_hosts[0]
    s = fast(settings, docker_hosts=(local, engine.url), pool_min=2, pool_max=2)
    controller = make_controller(s)
    containers, starter = controller.containers, starter_for(controller)
    a, b = list(containers.runtime.hosts)

    async def hosts_of_pool() -> list[str]:
        cids = await pooled(redis, containers)
        return sorted([text(await redis.hget(keys.container(c), "host")) for c in cids])

    async def pool_hosts(*wanted: str) -> bool:
        return await hosts_of_pool() == sorted(wanted)

    async with running(controller):
        # Equal engines, free capacity decides: one container on each, both warm.
        await async_wait_until(lambda: pool_hosts(a, b), 90, "one pooled container on each engine")
        session = await start(starter, "erin", "two-engines")
        if session.host != b:  # take the other one too, to land on the second engine
            session = await start(starter, "erin", "two-engines-b")
        assert session.host == b
        ready = await wait_state(starter.previews, session.id, "ready", timeout=90)
        page = httpx.get(f"http://{ready.address}/", timeout=10)
        assert page.status_code == 200 and "node-basic" in page.text

        engine.kill()
        await async_wait_until(
            lambda: host_is(redis, b, "down"), 90, "the second engine marked down"
        )
        failed = await load(redis, session.id)
        assert failed is not None and failed.state == "failed" and failed.error
        # The user is told the host is gone, never its name (an engine's name is its address).
        assert "unreachable" in failed.error["reason"] and b not in failed.error["reason"]
        await async_wait_until(
            lambda: pool_hosts(a, a), 90, "the pool refilled on the first engine"
        )

        engine.start()  # its containers were stopped with it and are now unknown
        await async_wait_until(lambda: host_is(redis, b, "up"), 90, "the second engine back")

        async def swept() -> bool:
            return not engine.docker("ps", "-aq").stdout.split()

        await async_wait_until(swept, 90, "the second engine's leftovers removed")
