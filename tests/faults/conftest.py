"""Fixtures for the fault tests: a whole system (own Redis, a gateway process, a controller
process, the real Docker engine) that a test can break, and a browser-like client."""

from __future__ import annotations

import io
import secrets
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis

from shared import keys
from shared.messages import Heartbeat
from shared.redis_types import text
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.gateway.api_helpers import bearer, failover_env, start_body
from tests.gateway.controller_fixtures import LABEL_TEST_CASE, add, remove_labelled
from tests.utils import (
    GatewayProcess,
    RedisServer,
    run_controller,
    run_gateway,
    start_redis,
)


@dataclass
class System:
    redis_server: RedisServer
    redis: SyncRedis
    gateway: GatewayProcess
    controller: GatewayProcess
    state_dir: Path

    def api(self, method: str, path: str, user: str = "alice", **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 30)
        return httpx.request(method, f"{self.gateway.url}{path}", headers=bearer(user), **kwargs)

    def start(self, project: str, template: str = "node-basic", user: str = "alice") -> str:
        started = self.api("POST", "/v1/previews", user, json=start_body(project, template))
        assert started.status_code == 202, started.text
        return str(started.json()["id"])

    def start_project(self, project: str, files: dict[str, str], user: str = "alice") -> str:
        """A preview of a project uploaded as an archive (files: path → text)."""
        body = {"project_id": project, "source": {"type": "archive"}}
        started = self.api("POST", "/v1/previews", user, json=body)
        assert started.status_code == 202, started.text
        sid = str(started.json()["id"])
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in files.items():
                add(tar, name, data)
        uploaded = self.api("PUT", f"/v1/previews/{sid}/files", user, content=out.getvalue())
        assert uploaded.status_code == 202, uploaded.text
        return sid

    def pooled(self) -> set[str]:
        """The containers whose record says they wait in the pool."""
        cids = [text(c) for c in self.redis.smembers(keys.CONTAINERS)]
        return {c for c in cids if self.redis.hget(keys.container(c), "state") == b"pooled"}

    def heartbeat(self, cid: str) -> Heartbeat | None:
        raw = self.redis.get(keys.heartbeat(cid))
        return Heartbeat.from_json(raw) if raw else None

    def wait_state(self, sid: str, *states: str, timeout: float = 90) -> dict[str, Any]:
        """The preview object once its state is one of `states` (any state is checked
        against them, so a failure is reported with its error at once)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.api("GET", f"/v1/previews/{sid}")
            if response.status_code == 200:
                preview: dict[str, Any] = response.json()
                if preview["state"] in states:
                    return preview
                if preview["state"] == "failed":
                    raise AssertionError(f"preview failed: {preview['error']}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"preview {sid} not {states} after {timeout}s: {response.text}"
                )
            time.sleep(0.3)

    def open(self, preview: dict[str, Any]) -> httpx.Client:
        """A client that opened the preview from its open_url, as a browser does (Python
        clients connect to the gateway and send the preview's Host header)."""
        host = preview["url"].split("://", 1)[1].rstrip("/")
        query = preview["open_url"].split("?", 1)[1]
        client = httpx.Client(base_url=self.gateway.url, headers={"Host": host}, timeout=30)
        opened = client.get(f"/?{query}")
        assert opened.status_code in (302, 303), opened.text
        client.headers["Cookie"] = opened.headers["set-cookie"].split(";", 1)[0]
        return client

    def container_of(self, sid: str) -> str:
        cid = text(self.redis.hget(keys.session(sid), "container"))
        assert cid, f"session {sid} has no container"
        return cid


SystemFactory = Callable[..., System]


def docker_has(cid: str) -> bool:
    """Whether the shared engine still has this container."""
    found = subprocess.run(["docker", "inspect", cid], capture_output=True, check=False)
    return found.returncode == 0


@pytest.fixture
def make_system(test_image: str, tmp_path: Path) -> Iterator[SystemFactory]:
    """Factory: `make_system(persistent_redis=False, **settings)` → a System on its own
    redis-server; everything it made (containers, processes, Redis) is removed after."""
    case = secrets.token_hex(4)
    with ExitStack() as stack:

        def factory(persistent_redis: bool = False, **overrides: Any) -> System:
            server = start_redis(persistent=persistent_redis)
            stack.callback(server.stop)
            client = SyncRedis.from_url(server.url, socket_timeout=5)
            stack.callback(client.close)
            state_dir = tmp_path / f"state-{case}"
            env = failover_env(
                server,
                test_image,
                f"{LABEL_TEST_RUN}={TEST_RUN},{LABEL_TEST_CASE}={case}",
                state_dir,
                pool_min=1,
                pool_max=1,
                **overrides,
            )
            controller = stack.enter_context(run_controller(env))
            gateway = stack.enter_context(run_gateway(env))
            stack.callback(lambda: print(f"--- gateway log\n{gateway.log()[-5000:]}"))
            return System(server, client, gateway, controller, state_dir)

        try:
            yield factory
        finally:
            stack.close()
            remove_labelled(case)
