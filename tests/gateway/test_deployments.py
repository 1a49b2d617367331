"""Two deployments on one Docker engine and one Redis server (real Docker, real Redis):
each sweeps orphans, retires old pools and removes only its own containers, cache volume
and Redis ACL users (issue 20 point 1).

Deployment A is built as the test suite builds its controllers (its containers carry the
test-run labels); deployment B as `scripts/run` or production would be: no extra labels,
its own Redis database, its deployment name derived from that. Both use a Docker host
name of their own (a symlink to the engine's socket), so that on code that ignores
deployments B's sweep can only reach A's containers, never another test run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.containers.docker_runtime import LABEL_DEPLOYMENT, DockerRuntime
from gateway.controller.main import Controller
from shared import keys
from shared.redis_types import text
from shared.settings import Settings, redis_deployment
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    pooled,
    running,
)
from tests.utils import (
    RedisServer,
    async_wait_until,
    remove_labelled_containers,
    settings_env,
)

ENGINE = "/var/run/docker.sock"


def _other_deployment(settings: Settings, redis_url: str) -> Settings:
    """`settings` on another Redis, its deployment and cache volume derived from it."""
    return dataclasses.replace(settings, redis_url=redis_url, deployment="", cache_volume="")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def _running(cids: list[str]) -> dict[str, str]:
    """cid → Docker id of those of `cids` that are running."""
    out = {}
    for cid in cids:
        found = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}} {{.Id}}", cid],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if found and found[0] == "true":
            out[cid] = found[1]
    return out


async def _pool_of(redis: Redis, controller: Controller, size: int) -> list[str] | None:
    cids = await pooled(redis, controller.containers)
    return cids if len(cids) >= size else None


async def _acl_users(redis: Redis) -> set[str]:
    return {text(u) for u in await redis.execute_command("ACL", "USERS")}


async def test_two_deployments_on_one_engine_leave_each_other_alone(
    settings: Settings,
    redis: Redis,
    redis_server: RedisServer,
    make_controller: ControllerFactory,
    tmp_path: Path,
) -> None:
    socket = tmp_path / "docker.sock"
    socket.symlink_to(ENGINE)
    a_settings = fast(settings, docker_hosts=(f"unix://{socket}",), pool_min=2, pool_max=2)
    a = make_controller(a_settings)
    # Same Redis server, database 1: its own keys, but ACL users are per server.
    b_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    b_settings = _other_deployment(a_settings, b_url)
    assert b_settings.deployment != a_settings.deployment
    assert b_settings.cache_volume != a_settings.cache_volume
    b_redis, b_blocking = Redis.from_url(b_url), Redis.from_url(b_url)
    b_runtime = DockerRuntime(b_settings)
    b = Controller(b_settings, b_redis, b_blocking, b_runtime)  # no labels: like scripts/run
    try:
        async with running(a), running(b):
            a_cids = await async_wait_until(
                lambda: _pool_of(redis, a, 2), timeout=120, what="A's pool to fill"
            )
            b_cids = await async_wait_until(
                lambda: _pool_of(b_redis, b, 2), timeout=120, what="B's pool to fill"
            )
        a_ids, b_ids = _running(a_cids), _running(b_cids)
        assert set(a_ids) == set(a_cids) and set(b_ids) == set(b_cids)
        for cids, deployment in ((a_cids, a_settings.deployment), (b_cids, b_settings.deployment)):
            for cid in cids:
                labels = json.loads(_docker("inspect", "-f", "{{json .Config.Labels}}", cid))
                assert labels[LABEL_DEPLOYMENT] == deployment

        # Orphan sweeps both ways, twice (the second sees the first's result).
        for _ in range(2):
            assert await b.orphans.sweep() == 0
            assert await a.orphans.sweep() == 0
        assert _running(a_cids) == a_ids and _running(b_cids) == b_ids
        users = await _acl_users(redis)
        assert set(a_cids) <= users and set(b_cids) <= users, "a sweep deleted Redis users"
        # B retires its pool as after a rebuilt image: its own containers only. Its host
        # drained, so that no refill is still being created when the test ends.
        await b_redis.sadd(keys.DRAINED_HOSTS, *b_runtime.hosts)
        image = await b.containers.image_id()
        await b_redis.rename(keys.pool(image), keys.pool("sha256:" + "0" * 64))
        await b.keeper.tick()
        assert not _running(b_cids), "B's retired containers are gone"
        assert await b.orphans.sweep() == 0

        assert _running(a_cids) == a_ids, "A's containers were touched by B"
        assert await pooled(redis, a.containers) == a_cids
        assert set(a_cids) <= await _acl_users(redis), "A's Redis users were deleted by B"
        # Each deployment's cache volume is its own, labelled as such; both still there.
        for s in (a_settings, b_settings):
            found = json.loads(_docker("volume", "inspect", s.cache_volume))[0]
            assert found["Labels"][LABEL_DEPLOYMENT] == s.deployment
    finally:
        await b.close()
        with contextlib.suppress(Exception):
            for cid in await b_redis.smembers(keys.CONTAINERS):
                await b.containers.destroy(text(cid), "test cleanup")
        await b_runtime.close()
        await b_redis.flushdb()
        await b_redis.aclose()
        await b_blocking.aclose()
        remove_labelled_containers(f"{LABEL_DEPLOYMENT}={b_settings.deployment}")
        subprocess.run(
            ["docker", "volume", "rm", "-f", b_settings.cache_volume],
            capture_output=True,
            check=False,
        )


def test_the_suite_is_not_the_deployment_scripts_run_makes(
    settings: Settings, redis_server: RedisServer
) -> None:
    # scripts/run's Redis listens on 6379 (or PREVIEW_LOCAL_REDIS_PORT, e.g. 6390): outside
    # the kernel's ephemeral range the suite's Redis gets its free port from, and taken
    # while that run is up. Its controller has no test labels: the deployment is all that
    # keeps it from the suite's containers.
    for port in (6379, 6390):
        assert redis_deployment(f"redis://:pw@127.0.0.1:{port}/0") != settings.deployment
    # The suite's gateways and controllers in subprocesses derive the same name as it.
    spawned = Settings.from_env(settings_env(redis_url=redis_server.url))
    assert spawned.deployment == settings.deployment


def test_building_the_image_prunes_only_this_checkouts_tags(tmp_path: Path) -> None:
    """Another checkout on the same engine may have just built a tag it is about to start
    containers from: `scripts/build-image` removes only tags that its own checkout built."""
    root = Path(__file__).resolve().parents[2]
    build = str(root / "scripts/build-image")
    printed = subprocess.run([build, "--print-tag"], capture_output=True, text=True, check=True)
    current = printed.stdout.strip()
    if subprocess.run(["docker", "image", "inspect", current], capture_output=True).returncode:
        pytest.skip(f"needs the image {current} (scripts/build-image)")
    ours, theirs = f"{current}-ours-{tmp_path.name}", f"{current}-theirs-{tmp_path.name}"
    in_use = f"{current}-used-{tmp_path.name}"
    state = tmp_path / "state"
    state.mkdir()
    (state / "images-built").write_text(f"{ours}\n{in_use}\n")
    containers = [f"prune-{tmp_path.name}-current", f"prune-{tmp_path.name}-used"]
    try:
        for ref in (ours, theirs, in_use):
            _docker("tag", current, ref)
        # A container of the current image (as a pool keeps) shares the old tags' image ID:
        # it must not keep them. One created from an old tag by name keeps that tag.
        _docker("create", "--name", containers[0], current)
        _docker("create", "--name", containers[1], in_use)
        subprocess.run(
            [build],
            env={**os.environ, "PREVIEW_STATE_DIR": str(state)},
            capture_output=True,
            check=True,
        )
        tags = set(_docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").split())
        assert theirs in tags, "another checkout's tag was pruned"
        assert ours not in tags, "this checkout's old tag was kept"
        assert in_use in tags, "a tag a container was created from was pruned"
        assert current in tags
        assert (state / "images-built").read_text().split() == [in_use, current]
    finally:
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True)
        for ref in (ours, theirs, in_use):
            subprocess.run(["docker", "rmi", ref], capture_output=True)
