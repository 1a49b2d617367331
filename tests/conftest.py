"""Shared fixtures: a real redis-server, the real Docker engine, and containers that are
always removed, even when the test that made them fails."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from gateway.containers.docker_runtime import ContainerInfo, ContainerSpec, DockerHost
from shared.settings import Settings
from tests.utils import TEST_IMAGE, RedisServer, remove_labelled_containers, start_redis

# The suite's deployment is always the one derived from its own Redis (a free port), never
# one named in the shell it runs from: its controllers and gateways, subprocesses
# included, then cannot sweep or share the cache volume of a deployment on this engine.
for _name in ("PREVIEW_DEPLOYMENT", "PREVIEW_CACHE_VOLUME"):
    os.environ.pop(_name, None)

TEST_RUN = secrets.token_hex(4)
LABEL_TEST_RUN = "preview-gateway.test-run"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.flushall()
        await client.aclose()


@pytest.fixture(scope="session")
def test_image() -> str:
    return TEST_IMAGE


@pytest.fixture(scope="session")
def settings(redis_server: RedisServer, test_image: str) -> Settings:
    return Settings.from_env(
        {},
        redis_url=redis_server.url,
        image=test_image,
        container_memory_mb=768,
        container_cpus=1.0,
        container_pids=256,
        heartbeat_interval=1.0,
        heartbeat_ttl=4.0,
    )


@pytest.fixture(scope="session")
def _remove_test_containers(redis_server: RedisServer) -> Iterator[None]:
    """Last line of defence: remove every container this test run labelled (before the
    session's Redis stops, which removes its deployment's cache volume)."""
    yield
    remove_labelled_containers(f"{LABEL_TEST_RUN}={TEST_RUN}")


@pytest_asyncio.fixture
async def docker_host(
    settings: Settings, _remove_test_containers: None
) -> AsyncIterator[DockerHost]:
    host = DockerHost(settings.docker_hosts[0], settings)
    try:
        await host.ping()
    except Exception as exc:
        pytest.fail(f"the Docker engine is required (scripts/setup starts it): {exc}")
    try:
        yield host
    finally:
        await host.close()


ContainerFactory = Callable[..., contextlib.AbstractAsyncContextManager[ContainerInfo]]


@pytest_asyncio.fixture
async def make_container(
    docker_host: DockerHost, test_image: str
) -> AsyncIterator[ContainerFactory]:
    """Factory: `async with make_container(command=[...]) as info:`; removed on exit, and
    every container still left at the end of the test is removed too."""
    created: list[str] = []

    @contextlib.asynccontextmanager
    async def factory(**kwargs: Any) -> AsyncIterator[ContainerInfo]:
        cid = kwargs.pop("cid", None) or f"pvt-{secrets.token_hex(6)}"
        labels = {**kwargs.pop("labels", {}), LABEL_TEST_RUN: TEST_RUN}
        spec = ContainerSpec(
            cid=cid, image=kwargs.pop("image", test_image), labels=labels, **kwargs
        )
        created.append(cid)
        info = await docker_host.create(spec)
        try:
            yield info
        finally:
            await docker_host.remove(cid)

    try:
        yield factory
    finally:
        for cid in created:
            await docker_host.remove(cid)
