"""A container never serves two users (issue 14, finding 1), played by a hostile user
against the real gateway, real Redis and real containers.

Mallory's dev server writes outside the workspace: a ``~/.npmrc`` whose ``node-options``
makes every later ``npm run`` load her script, a ``~/.gitconfig``, files in ~/.config,
the npm and corepack caches, /tmp, /var/tmp, /dev/shm and /run/lock, symlinks to system
files, and directories she locked with mode 000. Once she deletes her preview, nobody
else's preview may run on that container, and her own next one must start with none of
it (her script not run). A reservation whose time is up ends with the container
destroyed, never in the general pool.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.observability.counters import COUNTERS
from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from tests.gateway.api_helpers import bearer, gateway_env, remove_containers, start_body
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    pooled,
    running,
    start,
    starter_for,
    wait_state,
)
from tests.utils import GatewayProcess, RedisServer, async_wait_until, run_gateway, wait_until

pytestmark = pytest.mark.docker

MARK = "MALLORY-CODE-RAN"
# What Mallory's dev server leaves behind, and where (all must be gone for her next session).
PLANTED = [
    "/home/app/x.js",
    "/home/app/.npmrc",
    "/home/app/.gitconfig",
    "/home/app/.config/evil/settings.json",
    "/home/app/.npm/_cacache/planted",
    "/home/app/.cache/node/corepack/planted",
    "/home/app/etc-link",
    "/tmp/planted",
    "/tmp/passwd-link",
    "/tmp/locked",
    "/var/tmp/planted",
    "/dev/shm/planted",
    "/run/lock/planted",
]
HOSTILE_SERVER = """
const fs = require("node:fs");
const http = require("node:http");
const home = require("node:os").homedir();
const write = (path, data) => {
  fs.mkdirSync(require("node:path").dirname(path), { recursive: true });
  fs.writeFileSync(path, data);
};
write(home + "/x.js", 'console.log("@MARK@ in " + process.argv.slice(1).join(" "));\\n');
write(home + "/.npmrc", "node-options=--require=" + home + "/x.js\\n");
write(home + "/.gitconfig", "[core]\\n\\thooksPath = /tmp/hooks\\n");
fs.appendFileSync(home + "/.bashrc", "node " + home + "/x.js\\n");
write(home + "/.config/evil/settings.json", "{}");
write(home + "/.npm/_cacache/planted", "x");
write(home + "/.cache/node/corepack/planted", "x");
fs.symlinkSync("/etc", home + "/etc-link");
for (const dir of ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]) write(dir + "/planted", "x");
fs.symlinkSync("/etc/passwd", "/tmp/passwd-link");
write("/tmp/locked/deeper/x", "x");
fs.chmodSync("/tmp/locked/deeper", 0);
fs.chmodSync("/tmp/locked", 0);
http.createServer((req, res) => res.end("mallory")).listen(Number(process.env.PORT || 3000));
console.log("planted");
""".replace("@MARK@", MARK)


@pytest.fixture
def gateway(redis_server: RedisServer, test_image: str) -> Iterator[GatewayProcess]:
    """A real gateway alone (no controller: every start without a container of its own
    user creates one), and everything it made removed afterwards."""
    client = SyncRedis.from_url(redis_server.url)
    client.flushall()
    try:
        with run_gateway(gateway_env(redis_server, test_image)) as gateway:
            yield gateway
    finally:
        remove_containers(redis_server)
        client.flushall()
        client.close()


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[SyncRedis]:
    client = SyncRedis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()


def api(gw: GatewayProcess, method: str, path: str, user: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{gw.url}/v1/previews{path}", headers=bearer(user), timeout=60, **kwargs
    )


def ready(gw: GatewayProcess, sid: str, user: str, timeout: float = 120) -> dict[str, Any]:
    last: list[dict[str, Any]] = []

    def check() -> dict[str, Any] | None:
        preview: dict[str, Any] = api(gw, "GET", f"/{sid}", user).json()
        last[:] = [preview]
        assert preview["state"] != "failed", preview
        return preview if preview["state"] == "ready" else None

    try:
        found: dict[str, Any] = wait_until(check, timeout, f"{user}'s {sid} ready")  # type: ignore[arg-type]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None
    return found


def logs(gw: GatewayProcess, sid: str, user: str) -> list[str]:
    lines: list[str] = api(gw, "GET", f"/{sid}/logs", user).json()["lines"]
    return lines


def container_of(redis: SyncRedis, sid: str) -> str:
    return text(redis.hget(keys.session(sid), "container"))


def existing(cid: str, paths: list[str]) -> list[str]:
    """Which of `paths` exist in the container (as root, not following a last symlink)."""
    script = 'for p in "$@"; do [ -e "$p" ] || [ -L "$p" ] && echo "$p"; done; true'
    done = subprocess.run(
        ["docker", "exec", cid, "sh", "-c", script, "sh", *paths],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def run_in(cid: str, *argv: str) -> str:
    return subprocess.run(
        ["docker", "exec", cid, *argv], capture_output=True, text=True, check=True
    ).stdout


def mallory_plants(gw: GatewayProcess, redis: SyncRedis) -> tuple[str, str]:
    """Mallory's preview runs her hostile dev server, then she deletes it; (sid, cid)."""
    started = api(gw, "POST", "", "mallory", json=start_body("evil"))
    assert started.status_code == 202, started.text
    sid = started.json()["id"]
    ready(gw, sid, "mallory")
    cid = container_of(redis, sid)
    saved = api(gw, "PUT", f"/{sid}/files/server.js", "mallory", content=HOSTILE_SERVER.encode())
    assert saved.status_code == 200, saved.text
    assert api(gw, "POST", f"/{sid}/restart", "mallory").status_code == 202
    wait_until(lambda: len(existing(cid, PLANTED)) == len(PLANTED), 30, "Mallory's files")
    assert api(gw, "DELETE", f"/{sid}", "mallory").status_code == 204
    wait_until(lambda: not redis.exists(keys.session(sid)), 60, "Mallory's release")
    return sid, cid


def test_another_user_never_gets_a_container_that_ran_hostile_code(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    _, planted_in = mallory_plants(gateway, sync_redis)
    started = api(gateway, "POST", "", "bob", json=start_body("shop"))
    assert started.status_code == 202, started.text
    sid = started.json()["id"]
    ready(gateway, sid, "bob")
    ran = [line for line in logs(gateway, sid, "bob") if MARK in line]
    assert not ran, f"Mallory's code ran in Bob's preview: {ran}"
    cid = container_of(sync_redis, sid)
    assert cid != planted_in, "Bob got the container Mallory's code ran in"
    assert started.json()["from_pool"] is False  # a fresh one: there was no other
    assert existing(cid, PLANTED) == []
    assert sync_redis.zscore(keys.user_reserved("mallory"), planted_in) is not None


def test_the_same_users_next_session_starts_clean(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    _, planted_in = mallory_plants(gateway, sync_redis)
    passwd = run_in(planted_in, "sha256sum", "/etc/passwd")

    started = api(gateway, "POST", "", "mallory", json=start_body("other"))
    assert started.status_code == 202, started.text
    sid = started.json()["id"]
    assert started.json()["from_pool"] is True
    assert container_of(sync_redis, sid) == planted_in  # her own reserved container
    ready(gateway, sid, "mallory")
    ran = [line for line in logs(gateway, sid, "mallory") if MARK in line]
    assert not ran, f"her script ran at the start of her next session: {ran}"
    assert existing(planted_in, PLANTED) == []
    # Her home is the image's again (but for the logs this session's `npm run` keeps in
    # ~/.npm/_logs); the symlinks were removed, not followed.
    listing = "ls -A | grep -vx .npm; ls -A .npm 2>/dev/null; md5sum .bashrc .profile"
    home = run_in(planted_in, "sh", "-c", f"cd /home/app && {listing}")
    skel = run_in(planted_in, "sh", "-c", f"cd /etc/skel && {listing}")
    assert home.replace("_logs\n", "", 1) == skel
    assert run_in(planted_in, "stat", "-c", "%U %a", "/home/app").split() == ["app", "755"]
    assert run_in(planted_in, "sha256sum", "/etc/passwd") == passwd
    assert run_in(planted_in, "ls", "-A", "/etc") != ""


async def test_an_expired_reservation_destroys_the_container(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    """Past PREVIEW_POOL_AFFINITY_TTL the container is destroyed and replaced by a fresh
    one: it never goes back to the general pool."""
    controller = make_controller(fast(settings, pool_affinity_ttl=3.0))
    containers, starter = controller.containers, starter_for(controller)
    before = COUNTERS.get("container_destroyed", "reserved_expired")
    async with running(controller):
        await async_wait_until(lambda: pooled(redis, containers), 60, "the pool to fill")
        session = await start(starter, "alice", "shop")
        cid = (await wait_state(starter.previews, session.id, "ready")).container
        assert await starter.previews.stop(session)

        async def reserved() -> bool:
            return cid in await containers.reserved.all()

        await async_wait_until(reserved, 60, "the container reserved for alice")
        assert await redis.hget(keys.container(cid), "user") == b"alice"

        async def destroyed() -> bool:
            general = await pooled(redis, containers)
            assert cid not in general, f"{cid} went back to the general pool: {general}"
            return not await redis.exists(keys.container(cid))

        await async_wait_until(destroyed, 30, "the expired reservation to be destroyed")
        assert await containers.runtime.default.inspect(cid) is None
        assert await redis.zscore(keys.RESERVED, cid) is None
        assert await redis.zscore(keys.user_reserved("alice"), cid) is None
        assert COUNTERS.get("container_destroyed", "reserved_expired") == before + 1
        fresh = await async_wait_until(lambda: pooled(redis, containers), 60, "a fresh one")
        assert cid not in fresh
