"""An engine that cannot hold a container to PREVIEW_CONTAINER_DISK_MB is refused, not
used unbounded (issue 14, finding 4): a real second dockerd on overlay2 over this
machine's own filesystem (no XFS project quotas), beside the shared btrfs engine.

The controller marks it down with a reason naming the setting and the fix, /readyz says
so for that host, and a create there fails before the engine makes anything; with the
bound turned off on purpose (0) the same engine is accepted.
"""

from __future__ import annotations

import dataclasses
import subprocess

import httpx
import pytest
from redis.asyncio import Redis

from gateway.containers.docker_runtime import ContainerSpec, DockerHost, DockerRuntimeError
from shared import keys
from shared.redis_types import record
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.engines import (
    Engine,
    overlay_engine_fixture,  # noqa: F401 (fixture overlay_engine)
)
from tests.gateway.api_helpers import gateway_env
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
)
from tests.utils import RedisServer, async_wait_until, run_gateway


@pytest.fixture(autouse=True)
def _not_on_xfs() -> None:
    found = subprocess.run(["stat", "-f", "-c", "%T", "/tmp"], capture_output=True, text=True)
    if found.stdout.strip() == "xfs":
        pytest.skip("/tmp is XFS: overlay2 there may bound a container's disk")


async def test_engine_that_cannot_bound_disk_is_refused_with_the_fix(
    settings: Settings, redis: Redis, make_controller: ControllerFactory, overlay_engine: Engine
) -> None:
    local = settings.docker_hosts[0]
    s = fast(settings, docker_hosts=(local, overlay_engine.url), container_disk_mb=256)
    controller = make_controller(s)
    a, b = list(controller.containers.runtime.hosts)

    checked = await controller.hosts.check()
    assert checked[a] is None  # the shared engine: btrfs
    reason = checked[b]
    assert reason is not None
    assert "overlay2" in reason and "PREVIEW_CONTAINER_DISK_MB=256" in reason, reason
    assert "btrfs" in reason, reason  # the fix

    async def marked_down() -> bool:
        await controller.hosts.check()
        found = record(await redis.hgetall(keys.docker_host(b)))
        return found.get("state") == "down" and "PREVIEW_CONTAINER_DISK_MB" in found["reason"]

    await async_wait_until(marked_down, 10, "the overlay2 engine marked down with the reason")
    assert [h.name for h in await controller.containers.placement.candidates()] == [a]

    # Asked directly, the engine is refused before it makes a container.
    host = DockerHost(overlay_engine.url, s)
    try:
        spec = ContainerSpec(cid="pvc-unbounded", image=s.image)
        with pytest.raises(DockerRuntimeError, match="cannot limit a container's disk"):
            await host.create(spec)
    finally:
        await host.close()
    assert overlay_engine.docker("ps", "-aq").stdout.split() == []

    # Unbounded on purpose: the same engine is fine.
    unbounded = DockerHost(overlay_engine.url, dataclasses.replace(s, container_disk_mb=0))
    try:
        assert await unbounded.storage_problem() is None
    finally:
        await unbounded.close()


def test_readyz_names_the_engine_that_cannot_bound_disk(
    redis_server: RedisServer, test_image: str, overlay_engine: Engine
) -> None:
    env = gateway_env(
        redis_server,
        test_image,
        docker_hosts=f"unix:///var/run/docker.sock,{overlay_engine.url}",
        container_labels=f"{LABEL_TEST_RUN}={TEST_RUN}",
    )
    with run_gateway(env) as gateway:
        ready = httpx.get(f"{gateway.url}/readyz", timeout=20)
    assert ready.status_code == 200  # the shared engine serves
    docker = ready.json()["checks"]["docker"]
    assert docker["local"] == "ok", docker
    refused = docker[overlay_engine.url.removeprefix("unix://")]
    assert "cannot limit a container's disk" in refused, refused
    assert "PREVIEW_CONTAINER_DISK_MB=4096" in refused, refused
