"""Placement over two real Docker engines on this machine (slow: a second dockerd, its own
bridge, and the preview image copied into it).

Containers are placed on both engines by free capacity and work on either (their
supervisors reach Redis through each engine's own bridge); when the second engine dies
its session fails naming the host and the pool is refilled on the first; when it is
back, the containers it kept are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    load,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    pooled,
    running,
    start,
    starter_for,
    wait_state,
)
from tests.gateway.test_controller import host_is
from tests.utils import RedisServer, async_wait_until, bridge_ip, wait_until

pytestmark = pytest.mark.slow

BRIDGE = "pvtest0"
BRIDGE_ADDRESS = "10.231.0.1"
BRIDGE_NET = "10.231.0."


class Engine:
    """A second dockerd with its own socket, data root, exec root and bridge."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "dockerd.log").open("ab") as log:
            self.process = self._spawn(log)
        wait_until(self.answers, 60, "the second dockerd")

    def _spawn(self, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                "dockerd",
                "--host", self.url,
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "docker.pid"),
                f"--bridge={BRIDGE}",
                "--iptables=true",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError((self.root / "dockerd.log").read_text()[-3000:])
        return self.docker("version", check=False).returncode == 0

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.url, *args], capture_output=True, text=True, check=check
        )

    def kill(self) -> None:
        """Die the way a host does: no clean shutdown. Its containers, their shims and
        its containerd go with it (left running, they would block the next start)."""
        ids = self.docker("ps", "-q", check=False).stdout.split()
        pids = self.docker("inspect", "-f", "{{.State.Pid}}", *ids, check=False).stdout.split()
        for pid in (int(p) for p in pids if p.isdigit() and p != "0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a container's init: its whole pid namespace
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        # containerd and the shims carry this engine's root in their command lines.
        subprocess.run(["pkill", "-KILL", "-f", str(self.root)], check=False)
        wait_until(
            lambda: (
                subprocess.run(["pgrep", "-f", str(self.root)], capture_output=True).returncode != 0
            ),
            30,
            "the second engine's processes gone",
        )
        self.socket.unlink(missing_ok=True)
        # Left as a zombie where pid 1 does not reap, the old containerd's pid still
        # "exists": dockerd would wait for it instead of starting a new one.
        (self.root / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", "-v", *ids, check=False)
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _drop_iptables_rules() -> None:
    """The rules the second dockerd added for its bridge (it leaves some behind)."""
    for table in ("filter", "nat"):
        rules = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and (BRIDGE in rule or BRIDGE_NET in rule):
                args = rule.split()
                args[0] = "-D"
                subprocess.run(["iptables", "-t", table, *args], capture_output=True, check=False)


@pytest.fixture(scope="module")
def engine(test_image: str) -> Iterator[Engine]:
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.skip("needs root and dockerd to run a second Docker engine")
    root = Path(tempfile.mkdtemp(prefix="pv-engine-"))
    second = Engine(root)
    _ip("link", "add", BRIDGE, "type", "bridge")
    try:
        _ip("addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        second.start()
        save = subprocess.Popen(["docker", "save", test_image], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "-H", second.url, "load"], stdin=save.stdout, check=True, capture_output=True
        )
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0
        yield second
    finally:
        second.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", BRIDGE)
        _drop_iptables_rules()
        subprocess.run(["umount", "-R", str(root)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture
async def redis_on_both_bridges(redis: Redis, redis_server: RedisServer) -> AsyncIterator[Redis]:
    """The test Redis also listening on the second engine's bridge, for its containers."""
    before = (await redis.config_get("bind"))["bind"]
    binds = " ".join(b for b in ("127.0.0.1", bridge_ip(), BRIDGE_ADDRESS) if b)
    await redis.config_set("bind", binds)
    try:
        yield redis
    finally:
        await redis.config_set("bind", before)


async def test_two_engines_placement_failure_and_return(
    settings: Settings,
    redis_on_both_bridges: Redis,
    make_controller: ControllerFactory,
    engine: Engine,
) -> None:
    redis = redis_on_both_bridges
    local = settings.docker_hosts[0]
    s = fast(settings, docker_hosts=(local, engine.url), pool_min=2, pool_max=2)
    controller = make_controller(s)
    containers, starter = controller.containers, starter_for(controller)
    a, b = list(containers.runtime.hosts)

    async def hosts_of_pool() -> list[str]:
        cids = await pooled(redis, containers)
        return sorted([text(await redis.hget(keys.container(c), "host")) for c in cids])

    async def pool_hosts(*wanted: str) -> bool:
        return await hosts_of_pool() == sorted(wanted)

    async with running(controller):
        # Equal engines, free capacity decides: one container on each, both warm.
        await async_wait_until(lambda: pool_hosts(a, b), 90, "one pooled container on each engine")
        session = await start(starter, "erin", "two-engines")
        if session.host != b:  # take the other one too, to land on the second engine
            session = await start(starter, "erin", "two-engines-b")
        assert session.host == b
        ready = await wait_state(starter.previews, session.id, "ready", timeout=90)
        page = httpx.get(f"http://{ready.address}/", timeout=10)
        assert page.status_code == 200 and "node-basic" in page.text

        engine.kill()
        await async_wait_until(
            lambda: host_is(redis, b, "down"), 90, "the second engine marked down"
        )
        failed = await load(redis, session.id)
        assert failed is not None and failed.state == "failed" and failed.error
        assert b in failed.error["reason"]
        await async_wait_until(
            lambda: pool_hosts(a, a), 90, "the pool refilled on the first engine"
        )

        engine.start()  # its containers were stopped with it and are now unknown
        await async_wait_until(lambda: host_is(redis, b, "up"), 90, "the second engine back")

        async def swept() -> bool:
            return not engine.docker("ps", "-aq").stdout.split()

        await async_wait_until(swept, 90, "the second engine's leftovers removed")
