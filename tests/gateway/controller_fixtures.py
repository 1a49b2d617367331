"""Fixtures for the controller's tests (pool, reaper, placement, leader): short timings, a
controller built in-process on the test Redis and the real Docker engine, sessions
started through the real control plane, and removal of everything a test made."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import secrets
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import DockerRuntime
from gateway.controller.main import Controller
from gateway.sessions.previews import Previews
from gateway.sessions.start import Starter, StartRequest
from gateway.sessions.store import Session
from shared import keys
from shared.messages import Heartbeat
from shared.redis_types import record, text
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.utils import remove_labelled_containers

LABEL_TEST_CASE = "preview-gateway.test-case"


def fast(settings: Settings, **overrides: Any) -> Settings:
    """The session's test settings with the controller's timings cut to test scale."""
    values: dict[str, Any] = {
        "controller_interval": 0.3,
        "leader_ttl": 1.5,
        "pool_min": 1,
        "pool_max": 1,
        "pool_health_interval": 1.0,
        "pool_warm_timeout": 30.0,
        "host_down_after": 0.5,
        "orphan_interval": 3600.0,  # tests sweep explicitly
        "container_cpus": 0.5,
        # No startup boost: these tests run no session tracker, which drops a boost at
        # ready, so a boost would last its whole PREVIEW_START_BOOST_SECONDS and, counted
        # by the creation gate, hold the pool's refills back that long.
        "start_cpus": 0.5,
        **overrides,
    }
    return dataclasses.replace(settings, **values)


def remove_labelled(case: str) -> None:
    remove_labelled_containers(f"{LABEL_TEST_CASE}={case}")


async def drop_acl_users(redis: Redis) -> None:
    for user in await redis.execute_command("ACL", "USERS"):
        name = text(user)
        if name.startswith(("pvc-", "pvt-")):
            await redis.execute_command("ACL", "DELUSER", name)


ControllerFactory = Callable[..., Controller]


@pytest_asyncio.fixture(name="make_controller")
async def make_controller_fixture(
    redis: Redis, redis_server: Any, _remove_test_containers: None
) -> AsyncIterator[ControllerFactory]:
    """Factory: `make_controller(settings, hosts=None)` → a Controller on the test Redis
    whose containers carry this test's label; all are removed at the end."""
    case = secrets.token_hex(4)
    made: list[tuple[Controller, DockerRuntime, Redis]] = []

    def factory(settings: Settings, **kwargs: Any) -> Controller:
        runtime = DockerRuntime(settings)
        blocking = Redis.from_url(redis_server.url)
        labels = {LABEL_TEST_RUN: TEST_RUN, LABEL_TEST_CASE: case, **kwargs.pop("labels", {})}
        controller = Controller(settings, redis, blocking, runtime, labels=labels, **kwargs)
        made.append((controller, runtime, blocking))
        return controller

    try:
        yield factory
    finally:
        for controller, runtime, blocking in made:
            await controller.close()
            with contextlib.suppress(Exception):
                for cid in await redis.smembers(keys.CONTAINERS):
                    await controller.containers.destroy(text(cid), "test cleanup")
            await runtime.close()
            await blocking.aclose()
        remove_labelled(case)
        await drop_acl_users(redis)


@contextlib.asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[asyncio.Task[None]]:
    """The controller's loop as a task for the block; cancelled (and awaited) after."""
    task = asyncio.create_task(controller.run(), name="controller under test")
    try:
        yield task
    finally:
        task.cancel()
        # Stopping may wait for cleanup: a launch cancelled while its container started
        # removes it (a btrfs subvolume, seconds under load), then background work gets
        # SHUTDOWN_DEADLINE (10 s). What this guards against is a swallowed cancellation,
        # which would never end: 60 s tells the two apart (20 s failed once in a full run).
        done, _ = await asyncio.wait({task}, timeout=60)
        if not done:  # a swallowed cancellation: fail loudly rather than hang
            stack = io.StringIO()
            task.print_stack(file=stack)
            task.cancel()
            raise AssertionError(f"the controller did not stop when cancelled:\n{stack.getvalue()}")


async def pooled(redis: Redis, containers: Containers) -> list[str]:
    image = await containers.image_id()
    return [text(c) for c in await redis.lrange(keys.pool(image), 0, -1)]


async def load(redis: Redis, sid: str) -> Session | None:
    found = record(await redis.hgetall(keys.session(sid)))
    return Session.from_record(found) if found.get("id") == sid else None


def starter_for(controller: Controller) -> Starter:
    """The gateway's start path on the controller's clients (an in-process 'gateway')."""
    previews = Previews(
        controller.settings, controller.redis, controller.containers, controller.background
    )
    return Starter(previews)


async def start(
    starter: Starter, user: str, project: str, source: dict[str, str] | None = None
) -> Session:
    request = StartRequest(project, source or {"type": "template", "name": "node-basic"}, {})
    status, session = await starter.start(user, request, 0)
    assert status == 202
    return session


async def wait_state(previews: Previews, sid: str, state: str, timeout: float = 60) -> Session:
    """Fold the session's events (as a gateway reading it would) until it is in `state`."""
    deadline = time.monotonic() + timeout
    while True:
        session = await previews.load(sid)
        assert session is not None, f"session {sid} vanished"
        await previews.refresh(session)
        if session.state == state:
            return session
        if session.state == "failed" and state != "failed":
            raise AssertionError(f"session failed: {session.error}")
        if time.monotonic() > deadline:
            raise AssertionError(f"session {sid} still {session.state} after {timeout}s")
        await asyncio.sleep(0.1)


def project_archive(marker: str = "42") -> bytes:
    """A Node project with one dependency installed from a tarball in the project itself
    (no registry needed): its dev server answers with what the dependency exports."""
    dep = io.BytesIO()
    with tarfile.open(fileobj=dep, mode="w:gz") as tar:
        add(tar, "package/package.json", json.dumps({"name": "dep", "version": "1.0.0"}))
        add(tar, "package/index.js", f"module.exports = {json.dumps(marker)};\n")
    package = {
        "name": "kept-deps",
        "version": "1.0.0",
        "private": True,
        "scripts": {"dev": "node server.js"},
        "dependencies": {"dep": "file:dep-1.0.0.tgz"},
    }
    server = (
        "const http = require('node:http');\n"
        "const value = require('dep');\n"
        "http.createServer((req, res) => res.end(String(value)))\n"
        "  .listen(Number(process.env.PORT || 3000));\n"
    )
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        add(tar, "package.json", json.dumps(package))
        add(tar, "server.js", server)
        add(tar, "dep-1.0.0.tgz", dep.getvalue())
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(raw))


async def fake_session(
    redis: Redis,
    cid: str,
    user: str = "alice",
    project: str = "p1",
    age: float = 0.0,
    state: str = "ready",
    host: str = "local",
) -> Session:
    """A live session, its slot and its container's record as a start leaves them, for a
    container that may not exist (rules that only read Redis)."""
    now = time.time()
    session = Session(
        id=f"s{secrets.token_hex(8)}",
        user=user,
        project_id=project,
        state=state,
        container=cid,
        host=host,
        address="127.0.0.1:9",
        created_at=now - age,
        updated_at=now - age,
        from_pool=True,
        events_from="0-0",
    )
    await redis.hset(keys.session(session.id), mapping=session.to_record())
    await redis.sadd(keys.SESSIONS, session.id)
    await redis.zadd(keys.user_slots(user), {session.id: now + 600})
    await redis.set(keys.user_project(user, project), session.id)
    await redis.hset(
        keys.container(cid),
        mapping={
            "cid": cid,
            "host": host,
            "state": "assigned",
            "session": session.id,
            "created_at": repr(now - age),
            "image": "sha256:fake",
        },
    )
    await redis.sadd(keys.CONTAINERS, cid)
    await redis.sadd(keys.host_containers(host), cid)
    return session


async def beat(redis: Redis, cid: str, session: Session | None, **numbers: Any) -> None:
    """Write a heartbeat as the container's supervisor would."""
    heartbeat = Heartbeat(
        container_id=cid,
        ts=time.time(),
        session_id=session.id if session else None,
        state="ready" if session else "idle",
        memory_limit=768 << 20,
        disk_total=100 << 30,
        **numbers,
    )
    payload = heartbeat.to_json()
    await redis.set(keys.heartbeat(cid), payload, px=60_000)
    await redis.xadd(keys.heartbeat_history(cid), {keys.HEARTBEAT_HISTORY_FIELD: payload})
