"""The host dependency cache in the real image, on a real Docker volume shared by two
containers: the first installs and packs, the second restores; user code in either can
neither read nor write the archives, and a volume left world-writable by an older image
(with a directory planted by user code) is taken back."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.acl import container_acl_rules
from tests.supervisor.test_depcache import ANSWER, project_files
from tests.supervisor.test_in_container import (
    CA_BUNDLE,
    CAPABILITIES,
    MEMORY,
    BridgeRedis,
    ContainerSupervisor,
    docker,
    fetch,
    sup_bridge_redis,
    sup_image,
)
from tests.utils import ROOT, async_wait_until, remove_volumes

pytestmark = pytest.mark.docker
__all__ = ["sup_bridge_redis", "sup_image"]  # fixtures, used by name


@pytest.fixture
def cache_volume(sup_image: str) -> Iterator[str]:
    name = "pv-test-cache-" + secrets.token_hex(4)
    docker("volume", "create", "--label", "preview-gateway.test-run=supervisor", name)
    try:
        yield name
    finally:
        remove_volumes([name])  # torn down before the containers fixture: remove them too


@pytest_asyncio.fixture
async def containers(
    sup_image: str, sup_bridge_redis: BridgeRedis
) -> AsyncIterator[Callable[[str], Any]]:
    """``await make(volume)``: a supervisor container with ``volume`` at /cache, started
    like the gateway starts them."""
    admin = Redis.from_url(sup_bridge_redis.url, socket_timeout=300)
    made: list[str] = []

    async def make(volume: str) -> ContainerSupervisor:
        cid = "pvc-" + secrets.token_hex(6)
        password = secrets.token_urlsafe(24)
        await admin.execute_command(
            "ACL", "SETUSER", cid, "reset", *container_acl_rules(cid), f">{password}"
        )
        made.append(cid)
        url = f"redis://{cid}:{password}@host.docker.internal:{sup_bridge_redis.port}/0"
        docker(
            *("run", "-d", "--name", cid, "--label", "preview-gateway.test-run=supervisor"),
            *("-e", f"PREVIEW_CONTAINER_ID={cid}", "-e", f"PREVIEW_SUPERVISOR_REDIS_URL={url}"),
            *("-e", "PREVIEW_HEARTBEAT_INTERVAL=1", "-e", "PREVIEW_HEARTBEAT_TTL=4"),
            *("--memory", str(MEMORY), "--memory-swap", str(MEMORY), "--cpus", "1"),
            *("--pids-limit", "512", "--cap-drop", "ALL"),
            *(arg for cap in CAPABILITIES for arg in ("--cap-add", cap)),
            *("--security-opt", "no-new-privileges:true"),
            *("--add-host", "host.docker.internal:host-gateway", "-p", "127.0.0.1::3000"),
            *("--mount", f"type=volume,source={volume},target=/cache"),
            *("-v", f"{ROOT / 'supervisor'}:/opt/preview/src/supervisor:ro"),
            *("-v", f"{ROOT / 'shared'}:/opt/preview/src/shared:ro"),
            *(
                ("-v", f"{CA_BUNDLE}:/etc/preview/extra-ca.pem:ro")
                if Path(CA_BUNDLE).exists()
                else ()
            ),
            sup_image,
        )
        sup = ContainerSupervisor(admin, {}, cid, 3000, Path("/workspace"), Path("/dev/null"))
        sup.password = password
        sup.host_port = int(docker("port", cid, "3000/tcp").split()[0].rsplit(":", 1)[1])
        await sup.wait_heartbeat(30, state="idle")
        return sup

    try:
        yield make
    finally:
        for cid in made:
            docker("rm", "-f", cid, check=False)
            await admin.execute_command("ACL", "DELUSER", cid)
            async for key in admin.scan_iter(match=keys.container_pattern(cid)):
                await admin.delete(key)
        await admin.aclose()


async def start(sup: ContainerSupervisor, session: str) -> dict[str, Any]:
    assert (await sup.send("write_files", {"files": project_files()})).ok
    args = {"session_id": session, "project_id": "cache-demo", "source": {"type": "archive"}}
    result = await sup.send("prepare", {**args, "public_host": "x.localhost"}, timeout=180)
    assert result.ok, (result, sup.log()[-3000:])
    return result.result


async def test_two_containers_share_archives_user_code_cannot_touch(
    containers: Callable[[str], Any], cache_volume: str, sup_image: str
) -> None:
    # A volume as an older image left it: world-writable, with a deps/ of user code's.
    docker(
        *("run", "--rm", "--mount", f"type=volume,source={cache_volume},target=/cache"),
        *("--entrypoint", "sh", sup_image, "-c"),
        "chmod 1777 /cache && su app -s /bin/sh -c 'mkdir /cache/deps; touch /cache/deps/planted'",
    )
    first: ContainerSupervisor = await containers(cache_volume)
    installed = await start(first, "s1")
    assert installed["dependencies"] == "installed"
    assert installed["dependency_cache"]["scope"] == "shared"

    async def packed() -> str:
        listing = first.exec("sh", "-c", "ls /cache/deps/v1/*/*.tar.zst")
        return listing.stdout.strip() if listing.returncode == 0 else ""

    archive = await async_wait_until(packed, 60, "an archive on the volume")
    assert archive.endswith(installed["dependency_cache"]["key"] + ".tar.zst")
    modes = first.exec("stat", "-c", "%n %U %a", "/cache", "/cache/deps", "/cache/npm").stdout
    assert modes.split("\n")[:3] == [
        "/cache root 755",
        "/cache/deps root 700",
        "/cache/npm root 700",
    ]
    listed = first.exec("ls", "/cache/deps").stdout.split()
    assert listed == ["locks", "t1", "tmp", "ttmp", "v1"]  # planted: gone
    for attempt in (
        ["ls", "/cache/deps"],
        ["cat", archive],
        ["touch", "/cache/planted"],
        ["mkdir", "/cache/deps2"],
    ):
        done = first.exec(*attempt, user="app")
        assert done.returncode != 0 and "Permission denied" in done.stderr, (attempt, done)

    second: ContainerSupervisor = await containers(cache_volume)
    restored = await start(second, "s1")
    assert restored["dependencies"] == "restored", restored
    status, body = await asyncio.to_thread(fetch, second.url(), "x.localhost")
    assert (status, body) == (200, ANSWER)
    owners = second.exec(
        "sh",
        "-c",
        "find /workspace/node_modules ! -user app | head -5;"
        " readlink /workspace/node_modules/.bin/semver",
    ).stdout.split()
    assert owners == ["../semver/bin/semver.js"]
    print(
        "\n[container] cache-demo: install "
        f"{json.dumps(installed['timings_ms'])}, restore {json.dumps(restored['timings_ms'])}"
    )

    # That restore checked the archive, then kept its tree where reflinks work (the btrfs
    # engine scripts/setup makes); the next container clones the tree instead of unpacking.
    key = installed["dependency_cache"]["key"]
    assert restored["dependency_cache"]["restored_by"] == "restored"
    driver = docker("info", "--format", "{{.Driver}}").strip()
    if driver != "btrfs":
        pytest.skip(f"cloned restores need a filesystem that clones (engine: {driver})")
    tree = f"/cache/deps/t1/{key[-40:-38]}/{key}"
    assert second.exec("stat", "-c", "%U %a", tree).stdout.split() == ["root", "700"]
    third: ContainerSupervisor = await containers(cache_volume)
    cloned = await start(third, "s1")
    assert cloned["dependencies"] == "restored"
    assert cloned["dependency_cache"]["restored_by"] == "cloned", cloned
    assert (await asyncio.to_thread(fetch, third.url(), "x.localhost")) == (200, ANSWER)
    mine = third.exec("sh", "-c", "find /workspace/node_modules ! -user app | head -5").stdout
    assert mine == ""
    # Hostile: user code rewrites its cloned files in place (same inodes) and looks for
    # the tree. The copy-on-write clone keeps both from the tree and the next container.
    poison = "module.exports = () => false;\n"
    for argv in (
        ["sh", "-c", f"printf '{poison}' > /workspace/node_modules/is-number/index.js"],
        ["sh", "-c", "echo '// x' >> /workspace/node_modules/semver/index.js"],
    ):
        assert third.exec(*argv, user="app").returncode == 0
    assert (await asyncio.to_thread(fetch, third.url("/?again"), "x.localhost"))[0] == 200
    peek = third.exec("ls", tree, user="app")
    assert peek.returncode != 0 and "Permission denied" in peek.stderr
    fourth: ContainerSupervisor = await containers(cache_volume)
    again = await start(fourth, "s1")
    assert again["dependency_cache"]["restored_by"] == "cloned"
    assert (await asyncio.to_thread(fetch, fourth.url(), "x.localhost")) == (200, ANSWER)
    original = second.exec("cat", "/workspace/node_modules/is-number/index.js").stdout
    for where in (tree, "/workspace/node_modules"):
        assert fourth.exec("cat", f"{where}/is-number/index.js").stdout == original
    print(f"[container] clone {json.dumps(cloned['timings_ms'])}")
