"""Fixtures for the preview API tests: a real gateway (hypercorn) on the test Redis and the
real Docker engine, a sync Redis client, and removal of every container a test made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from redis import Redis as SyncRedis

from tests.gateway.api_helpers import gateway_env, remove_containers
from tests.utils import GatewayProcess, RedisServer, run_gateway

GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[SyncRedis]:
    """A flushed Redis (before and after), for tests that drive a gateway subprocess."""
    client = SyncRedis.from_url(redis_server.url)
    client.flushall()
    try:
        yield client
    finally:
        client.flushall()
        client.close()


@pytest.fixture
def start_gateway(
    redis_server: RedisServer, test_image: str, sync_redis: SyncRedis
) -> Iterator[GatewayFactory]:
    """Factory: `start_gateway(**settings)` runs a gateway; all are stopped at the end of
    the test, then every container made against the test Redis is removed."""
    with ExitStack() as stack:

        def factory(**overrides: Any) -> GatewayProcess:
            env = gateway_env(redis_server, test_image, **overrides)
            return stack.enter_context(run_gateway(env))

        try:
            yield factory
        finally:
            stack.close()
            remove_containers(redis_server)


@pytest.fixture
def gateway(start_gateway: GatewayFactory) -> GatewayProcess:
    return start_gateway()
