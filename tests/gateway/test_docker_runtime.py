"""The Docker runtime against the real engine and the real preview image."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from gateway.containers import direct
from gateway.containers.confinement import (
    CAPABILITIES,
    EXTRA_CA_PATH,
    SHM_BYTES,
    storage_problem,
)
from gateway.containers.docker_runtime import (
    LABEL_CID,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    ContainerSpec,
    DockerHost,
    DockerRuntime,
    DockerRuntimeError,
)
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN, ContainerFactory

SLEEP = ["sleep", "infinity"]


async def test_container_runs_node_22_as_app(
    make_container: ContainerFactory, docker_host: DockerHost
) -> None:
    async with make_container(command=SLEEP) as info:
        assert info.running
        code, out = await docker_host.exec(info.cid, ["node", "--version"], user="app")
        assert code == 0, out
        assert re.fullmatch(r"v22\.\d+\.\d+", out.strip()), out
        code, out = await docker_host.exec(info.cid, ["id", "-un"], user="app")
        assert code == 0 and out.strip() == "app"
        for tool in (["npm", "--version"], ["corepack", "--version"], ["git", "--version"]):
            code, out = await docker_host.exec(info.cid, tool, user="app")
            assert code == 0, f"{tool}: {out}"


async def test_npm_reaches_registry_through_extra_ca(
    make_container: ContainerFactory, docker_host: DockerHost, settings: Settings
) -> None:
    assert settings.extra_ca_certs, "the host CA bundle should be the local default"
    async with make_container(command=SLEEP) as info:
        code, out = await docker_host.exec(info.cid, ["test", "-s", EXTRA_CA_PATH])
        assert code == 0, "extra CA bundle not mounted"
        code, out = await docker_host.exec(
            info.cid, ["npm", "view", "is-number@7", "version"], user="app", timeout=120
        )
        assert code == 0, out
        assert out.strip().splitlines()[-1] == "7.0.0"
        code, out = await docker_host.exec(
            info.cid,
            ["git", "ls-remote", "--exit-code", "https://registry.npmjs.org/"],
            user="app",
            timeout=60,
        )
        assert "certificate" not in out.lower(), out


async def test_limits_and_hardening_are_applied(
    make_container: ContainerFactory, docker_host: DockerHost, settings: Settings
) -> None:
    async with make_container(command=SLEEP) as info:
        data = await docker_host._docker.containers.get(info.cid)
        host_config = data._container["HostConfig"]
        assert host_config["Memory"] == settings.container_memory_mb * 1024 * 1024
        assert host_config["MemorySwap"] == host_config["Memory"]
        assert host_config["NanoCpus"] == int(settings.container_cpus * 1e9)
        assert host_config["PidsLimit"] == settings.container_pids
        # Disk: the kernel's bound on all it writes; /dev/shm is RAM, capped.
        assert host_config["StorageOpt"] == {"size": f"{settings.container_disk_mb}M"}
        assert host_config["ShmSize"] == SHM_BYTES
        assert host_config["CapDrop"] == ["ALL"]
        assert sorted(host_config["CapAdd"]) == sorted(CAPABILITIES)
        assert "no-new-privileges:true" in host_config["SecurityOpt"]
        assert info.published_host == settings.publish_host
        assert info.published_port and info.published_port > 0
        assert info.labels[LABEL_MANAGED] == "1" and info.labels[LABEL_CID] == info.cid
        assert info.labels[LABEL_DEPLOYMENT] == settings.deployment
        mounts = {m["Destination"]: m for m in data._container["Mounts"]}
        assert mounts["/cache"]["Type"] == "volume"
        assert mounts["/cache"]["Name"] == settings.cache_volume
        # The limits hold from inside: app cannot gain privileges, pids are capped.
        code, out = await docker_host.exec(info.cid, ["cat", "/proc/self/status"], user="app")
        assert code == 0, out
        assert re.search(r"NoNewPrivs:\s+1", out), out
        assert re.search(r"CapEff:\s+0+\n", out), out


async def test_listing_finds_our_containers(
    make_container: ContainerFactory, docker_host: DockerHost
) -> None:
    async with make_container(command=SLEEP) as info:
        listed = {c.cid for c in await docker_host.list_containers()}
        assert info.cid in listed


async def test_listing_leaves_out_other_deployments(
    make_container: ContainerFactory, docker_host: DockerHost, settings: Settings
) -> None:
    other = DockerHost(
        settings.docker_hosts[0], dataclasses.replace(settings, deployment="other-deployment")
    )
    try:
        async with make_container(command=SLEEP) as info:
            assert info.cid in {c.cid for c in await docker_host.list_containers()}
            assert info.cid not in {c.cid for c in await other.list_containers()}
    finally:
        await other.close()


@pytest.fixture
def volume() -> Iterator[str]:
    """A volume name of this test's; removed at the end."""
    name = f"pvt-cache-{secrets.token_hex(4)}"
    yield name
    subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True, check=False)


def _make_volume(name: str, *labels: str) -> None:
    args = [f"--label={label}" for label in (*labels, f"{LABEL_TEST_RUN}={TEST_RUN}")]
    subprocess.run(["docker", "volume", "create", *args, name], capture_output=True, check=True)


async def test_another_deployments_cache_volume_is_refused(
    settings: Settings, volume: str, docker_host: DockerHost
) -> None:
    _make_volume(volume, f"{LABEL_DEPLOYMENT}=someone-else")
    host = DockerHost(settings.docker_hosts[0], dataclasses.replace(settings, cache_volume=volume))
    try:
        with pytest.raises(DockerRuntimeError, match="belongs to deployment someone-else"):
            await host.check_cache_volume()
        # A volume made before deployments had names (no label) is still usable.
        subprocess.run(["docker", "volume", "rm", volume], capture_output=True, check=True)
        _make_volume(volume)
        await host.check_cache_volume()
    finally:
        await host.close()


async def test_cleanup_even_when_the_test_body_fails(
    make_container: ContainerFactory, docker_host: DockerHost
) -> None:
    cid = ""
    with pytest.raises(RuntimeError, match="boom"):
        async with make_container(command=SLEEP) as info:
            cid = info.cid
            assert await docker_host.inspect(cid) is not None
            raise RuntimeError("boom")
    assert cid and await docker_host.inspect(cid) is None


async def test_removing_a_missing_container_is_not_an_error(docker_host: DockerHost) -> None:
    await docker_host.remove("pvt-does-not-exist")
    assert await docker_host.inspect("pvt-does-not-exist") is None


async def test_unreachable_engine_is_one_clear_error(settings: Settings, tmp_path: object) -> None:
    url = f"unix://{tmp_path}/no-docker.sock"
    runtime = DockerRuntime(Settings.from_env({}, docker_hosts=(url,)))
    try:
        host = runtime.default
        with pytest.raises(DockerRuntimeError, match="Docker engine not reachable at unix://"):
            await host.ping()
        with pytest.raises(DockerRuntimeError, match="not reachable"):
            await host.list_containers()
        assert (await runtime.reachable())[host.name] is not None
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    ("driver", "backing", "refused"),
    [
        ("btrfs", "btrfs", False),
        ("zfs", "zfs", False),
        ("overlay2", "xfs", False),  # with pquota; Docker refuses the size at create if not
        ("overlay2", "extfs", True),
        ("vfs", "extfs", True),
        ("fuse-overlayfs", "", True),
    ],
)
def test_storage_drivers_that_cannot_bound_disk_are_named(
    driver: str, backing: str, refused: bool
) -> None:
    info = {"Driver": driver, "DriverStatus": [["Backing Filesystem", backing]]}
    problem = storage_problem(info, 512)
    if not refused:
        assert problem is None
        return
    assert problem is not None
    assert driver in problem and "PREVIEW_CONTAINER_DISK_MB=512" in problem
    assert "btrfs" in problem and "PREVIEW_CONTAINER_DISK_MB=0" in problem  # the fixes
    assert storage_problem(info, 0) is None  # unbounded on purpose


# A dev server stand-in: answers with its own address as the container sees it.
SERVE = [
    "node",
    "-e",
    "require('http').createServer((q, s) => s.end('dev server at ' + q.socket.localAddress))"
    ".listen(3000)",
]


def network_ip(cid: str) -> str:
    return subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            '{{(index .NetworkSettings.Networks "preview-isolated").IPAddress}}',
            cid,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


async def answer(address: str) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(100):  # the node process may still be starting
            try:
                return (await client.get(f"http://{address}/")).text
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"nothing answers at {address}")


async def test_containers_on_this_machine_are_reached_at_their_own_address(
    make_container: ContainerFactory, docker_host: DockerHost
) -> None:
    """No docker-proxy in the path: the route is the container's address on our network."""
    async with make_container(command=SERVE) as info:
        ip = network_ip(info.cid)
        assert docker_host.direct is True
        assert (info.route, info.address) == ("container", f"{ip}:3000")
        assert (await answer(info.address)).startswith("dev server at")
        assert info.published_port  # still published: the fallback stays available
        again = await docker_host.inspect(info.cid)
        assert again is not None and again.address == info.address
        assert info.relay is None  # other ports: at the container's address too
    # Once the engine is known to be reached directly, no relay port is published at all.
    async with make_container(command=SERVE) as later:
        assert later.relay_published is None and later.relay is None


async def test_with_direct_off_the_published_port_is_the_route(
    make_container: ContainerFactory, settings: Settings
) -> None:
    host = DockerHost(
        settings.docker_hosts[0], dataclasses.replace(settings, direct_upstream="off")
    )
    cid = f"pvt-{secrets.token_hex(6)}"
    try:
        info = await host.create(
            ContainerSpec(
                cid=cid, image=settings.image, labels={LABEL_TEST_RUN: TEST_RUN}, command=SERVE
            )
        )
        assert host.direct is False
        assert (info.route, info.address) == ("published", f"127.0.0.1:{info.published_port}")
        # The other ports' one way in: the relay's published port, none per user port.
        assert info.relay is not None and info.relay.startswith("127.0.0.1:")
        assert info.relay != info.address
        assert (await answer(info.address)).startswith("dev server at")
    finally:
        await host.remove(cid)
        await host.close()


def test_remote_engines_are_not_reached_directly_unless_asked() -> None:
    """A remote engine's bridge addresses may exist on the gateway's machine too (another
    container there): `auto` never routes to them, only `on` (routed, unique networks)."""
    assert direct.allowed("auto", "unix:///var/run/docker.sock")
    assert not direct.allowed("auto", "tcp://10.0.0.5:2376")
    assert direct.allowed("on", "tcp://10.0.0.5:2376")
    assert not direct.allowed("off", "unix:///var/run/docker.sock")


async def test_an_address_not_on_this_machine_falls_back_to_published_ports() -> None:
    # TEST-NET-2 (RFC 5737) is on no attached network: a firewall's refusal on the way
    # would look like a container's, so the probe does not even try it.
    assert not direct.on_local_link("198.51.100.1")
    assert await direct.reachable("198.51.100.1", 3000, timeout=0.5) is False
