"""The controller process (real Docker, real Redis): two controllers, one leader, and the
other takes over when it dies; a Docker host going down (its sessions fail, the pool is
refilled elsewhere) and coming back (its leftovers are removed).

The second "host" here is a Unix-socket relay to this machine's engine: it goes down and
comes back in milliseconds. tests/gateway/test_controller_engines.py (slow) does the same
with a second dockerd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import LABEL_HOST, DockerRuntime
from gateway.observability.counters import COUNTERS
from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.gateway.controller_fixtures import (
    LABEL_TEST_CASE,
    ControllerFactory,
    drop_acl_users,
    fast,
    load,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    pooled,
    remove_labelled,
    running,
    start,
    starter_for,
    wait_state,
)
from tests.utils import RedisServer, async_wait_until, settings_env, spawn_controller, stop_process

DOCKER_SOCKET = "/var/run/docker.sock"


# --- leader election ----------------------------------------------------------------------


@pytest.fixture
def controllers(
    redis_server: RedisServer, test_image: str, tmp_path: Path
) -> Iterator[tuple[list[subprocess.Popen[bytes]], str]]:
    """Two real controller processes (python -m gateway.controller.main) on the test Redis;
    (processes, this test's label value). Stopped and cleaned up after."""
    case = secrets.token_hex(4)
    env = {
        **os.environ,
        **settings_env(
            redis_url=redis_server.url,
            image=test_image,
            heartbeat_interval=1.0,
            heartbeat_ttl=4.0,
            controller_interval=0.3,
            leader_ttl=1.5,
            pool_min=1,
            pool_max=1,
            container_memory_mb=768,
            container_cpus=0.5,
            container_labels=f"{LABEL_TEST_RUN}={TEST_RUN},{LABEL_TEST_CASE}={case}",
            controller_metrics_bind="",
            state_dir=str(tmp_path),
            log_format="text",
        ),
    }
    logs = [tmp_path / f"controller{i}.log" for i in range(2)]
    processes = [spawn_controller(env, log_path) for log_path in logs]
    try:
        yield processes, case
    finally:
        for process in processes:
            if process.poll() is None:
                stop_process(process)
        remove_labelled(case)
        for log_path in logs:
            print(f"--- {log_path.name}\n{log_path.read_text(errors='replace')[-3000:]}")


async def test_two_controllers_one_leader_and_failover(
    settings: Settings,
    redis: Redis,
    controllers: tuple[list[subprocess.Popen[bytes]], str],
) -> None:
    processes, case = controllers
    by_pid = {p.pid: p for p in processes}
    runtime = DockerRuntime(settings)
    containers = Containers(settings, redis, runtime)
    try:

        async def leader_pid() -> int | None:
            holder = text(await redis.get(keys.LEADER))
            return int(holder.split(":")[1]) if holder else None

        first = await async_wait_until(leader_pid, 20, "a leader")
        assert first in by_pid
        await async_wait_until(lambda: pooled(redis, containers), 60, "the pool to fill")
        # Only the leader acts: one container for a pool of one, not one per controller.
        assert await redis.scard(keys.CONTAINERS) == 1

        by_pid[first].send_signal(signal.SIGKILL)  # dies without releasing its lease
        by_pid[first].wait()

        async def successor() -> int | None:
            pid = await leader_pid()
            return pid if pid is not None and pid != first else None

        second = await async_wait_until(successor, 10, "another controller to lead")
        assert second in by_pid and by_pid[second].poll() is None
        # ... and acts: a taken container is replaced by the new leader.
        taken = await containers.pop_pooled("p")
        assert taken is not None

        async def refilled() -> list[str] | None:
            cids = await pooled(redis, containers)
            return cids if cids and taken.cid not in cids else None

        await async_wait_until(refilled, 60, "the new leader to refill the pool")
        assert await redis.scard(keys.CONTAINERS) == 2
    finally:
        await runtime.close()
        await drop_acl_users(redis)
        remove_labelled(case)


# --- a host going down and coming back ----------------------------------------------------


class Relay:
    """A Unix socket that forwards to the local Docker engine: a second 'host' that can be
    taken away (socket removed, open connections cut) and brought back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        self.tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.difference_update(tasks)
        self.writers -= {writer, up_writer}

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.path.unlink(missing_ok=True)


async def host_is(redis: Redis, name: str, state: str) -> bool:
    return text(await redis.hget(keys.docker_host(name), "state"), "up") == state


async def test_host_down_and_back(
    settings: Settings, redis: Redis, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    relay = Relay(tmp_path / "engine-b.sock")
    local = settings.docker_hosts[0]
    s = fast(
        settings,
        docker_hosts=(local, f"unix://{relay.path}"),
        pool_min=2,
        pool_max=2,
        host_max_containers=4,
    )
    controller = make_controller(s)
    containers, starter = controller.containers, starter_for(controller)
    a, b = list(containers.runtime.hosts)
    down_before = COUNTERS.get("host_down", "unreachable")

    async def hosts_of_pool() -> set[str]:
        return {
            text(await redis.hget(keys.container(c), "host"))
            for c in await pooled(redis, containers)
        }

    async def pool_on(wanted: set[str]) -> bool:
        return len(await pooled(redis, containers)) == 2 and (await hosts_of_pool()) <= wanted

    try:
        async with running(controller):
            # b does not answer from the start: marked down, the pool fills on a.
            await async_wait_until(lambda: host_is(redis, b, "down"), 10, "b down")
            await async_wait_until(lambda: pool_on({a}), 60, "the pool on a")
            # b answers: it rejoins and, having the most room, takes the refills.
            await relay.start()
            await async_wait_until(lambda: host_is(redis, b, "up"), 10, "b up")
            for _ in range(2):
                assert await containers.pop_pooled("other") is not None
            await async_wait_until(lambda: pool_on({b}), 60, "the refills on b")
            session = await start(starter, "dave", "on-b")
            assert session.host == b
            await wait_state(starter.previews, session.id, "ready")
            on_b = await pooled(redis, containers)

            # b goes away: its session fails saying so, its pooled containers are dropped
            # and the pool is refilled on a.
            await relay.stop()
            await async_wait_until(lambda: host_is(redis, b, "down"), 10, "b down again")
            # The host is marked down first (no placement on it meanwhile), then its
            # sessions are failed and its containers dropped, one by one.

            async def session_failed() -> bool:  # and then its slot freed
                found = await load(redis, session.id)
                freed = await redis.zscore(keys.user_slots("dave"), session.id) is None
                return found is not None and found.state == "failed" and freed

            await async_wait_until(session_failed, 10, "the session on b failed, slot freed")
            failed = await load(redis, session.id)
            assert failed is not None and failed.error
            assert "unreachable" in failed.error["reason"]
            # The user sees no host name (a tcp engine's is its address) nor engine error.
            assert b not in str(failed.error) and relay.path.name not in str(failed.error)

            async def b_dropped() -> bool:
                return not set(on_b) & set(await pooled(redis, containers))

            await async_wait_until(b_dropped, 30, "b's pooled containers dropped")
            await async_wait_until(lambda: pool_on({a}), 60, "the pool refilled on a")
            assert COUNTERS.get("host_down", "unreachable") == down_before + 2

            # b comes back: the containers it kept running, unknown now, are removed.
            await relay.start()
            await async_wait_until(lambda: host_is(redis, b, "up"), 10, "b up again")
            await async_wait_until(lambda: _none_left_on(b), 30, "b's leftovers removed")
    finally:
        await relay.stop()


async def _none_left_on(host: str) -> bool:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_HOST}={host}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return not listed
