"""The full-stack project of tests/e2e/test_ports_browser.py, with the gateway reaching the
Docker host through published ports only (PREVIEW_DIRECT_UPSTREAM=off, as for a remote
engine): the API port goes through the container's port relay (supervisor/relay.py), and
the container publishes the dev server's port and the relay's, nothing per user port."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator

import pytest
from redis import Redis as SyncRedis

from shared import keys
from shared.redis_types import text
from shared.relay import RELAY_PORT
from tests.e2e.conftest import Stack, run_stack
from tests.e2e.test_ports_browser import test_vite_frontend_calls_its_api_on_another_port
from tests.utils import RedisServer

pytestmark = pytest.mark.slow

__all__ = ["test_vite_frontend_calls_its_api_on_another_port"]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, test_image: str) -> Iterator[Stack]:
    with run_stack(redis_server, test_image, direct_upstream="off") as running:
        yield running


def test_only_the_dev_port_and_the_relay_are_published(
    stack: Stack, redis_server: RedisServer
) -> None:
    with stack.api("carol") as carol:
        sid = stack.start_ready(carol, "ports-published", "vite-vanilla")
        with contextlib.closing(SyncRedis.from_url(redis_server.url)) as redis:
            cid = text(redis.hget(keys.session(sid), "container"))
            route, relay = (text(v) for v in redis.hmget(keys.container(cid), "route", "relay"))
        assert route == "published" and relay.startswith("127.0.0.1:")
        inspected = subprocess.run(
            ["docker", "inspect", "--format", "{{json .NetworkSettings.Ports}}", cid],
            check=True,
            capture_output=True,
            text=True,
        )
        published = json.loads(inspected.stdout)
        wanted = {f"{stack.settings.dev_port}/tcp", f"{RELAY_PORT}/tcp"}
        assert set(published) == wanted
        assert relay.endswith(":" + published[f"{RELAY_PORT}/tcp"][0]["HostPort"])
        assert carol.delete(f"/v1/previews/{sid}").status_code == 204
