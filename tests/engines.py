"""A second Docker engine on this machine, for tests that take an engine away: its own
socket, data root, exec root and bridge (never the shared engine's), the preview image
copied into it, and the test Redis listening on its bridge for its containers.

Its data root is a btrfs filesystem of its own (a sparse loop-mounted file, simple quotas
on, as scripts/setup makes for the shared engine), so it holds containers to
PREVIEW_CONTAINER_DISK_MB like the shared one. ``overlay_engine`` is the opposite: overlay2
on this machine's own filesystem, an engine that cannot bound a container's disk.

Never ``--bridge=none``: dockerd then deletes the host's docker0, the shared engine's."""

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

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.utils import RedisServer, bridge_ip, wait_until

BRIDGE = "pvtest0"
BRIDGE_ADDRESS = "10.231.0.1"
OVERLAY_BRIDGE = "pvtest1"
OVERLAY_BRIDGE_ADDRESS = "10.232.0.1"
BTRFS_IMAGE_SIZE = "16G"  # sparse: holds the image and a few containers
ROOT = Path(__file__).resolve().parent.parent


class Engine:
    """A second dockerd with its own socket, data root, exec root and bridge."""

    def __init__(self, root: Path, bridge: str = BRIDGE, btrfs: bool = True) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.bridge = bridge
        self.btrfs = btrfs
        self.process: subprocess.Popen[bytes] | None = None

    def make_data_root(self) -> None:
        """btrfs with simple quotas on a sparse file (the umount at the end frees the loop
        device), or a plain directory for overlay2."""
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        if not self.btrfs:
            return
        image = self.root / "data.btrfs"
        subprocess.run(["truncate", "-s", BTRFS_IMAGE_SIZE, str(image)], check=True)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(data)], check=True)
        subprocess.run([str(ROOT / "scripts" / "btrfs-quota"), str(data)], check=True)

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
                "--storage-driver", "btrfs" if self.btrfs else "overlay2",
                f"--bridge={self.bridge}",
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

    def shutdown(self) -> None:
        """Go down the way `systemctl restart docker` takes it down: SIGTERM, and dockerd
        stops its containers (no live-restore) and its containerd; `start` brings it back."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        """Remove every container, then shut down."""
        if self.process is not None and self.process.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", "-v", *ids, check=False)
        self.shutdown()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _drop_iptables_rules(*marks: str) -> None:
    """The rules the second dockerd added for its bridge (it leaves some behind)."""
    for table in ("filter", "nat"):
        rules = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and any(mark in rule for mark in marks):
                args = rule.split()
                args[0] = "-D"
                subprocess.run(["iptables", "-t", table, *args], capture_output=True, check=False)


@contextlib.contextmanager
def second_engine(bridge: str, address: str, btrfs: bool) -> Iterator[Engine]:
    """A started second engine on its own bridge; everything it made is gone after."""
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.skip("needs root and dockerd to run a second Docker engine")
    if btrfs and not shutil.which("mkfs.btrfs"):
        pytest.skip("needs mkfs.btrfs (btrfs-progs) for the second engine's data root")
    root = Path(tempfile.mkdtemp(prefix="pv-engine-"))
    second = Engine(root, bridge, btrfs)
    _ip("link", "add", bridge, "type", "bridge")
    try:
        _ip("addr", "add", f"{address}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        second.make_data_root()
        second.start()
        yield second
    finally:
        second.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", bridge)
        _drop_iptables_rules(bridge, address.rsplit(".", 1)[0] + ".")
        # Its btrfs data root (and what dockerd mounted inside it) before the files go.
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True, check=False)
        subprocess.run(["umount", "-R", str(root)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", name="engine")
def engine_fixture(test_image: str) -> Iterator[Engine]:
    with second_engine(BRIDGE, BRIDGE_ADDRESS, btrfs=True) as second:
        save = subprocess.Popen(["docker", "save", test_image], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "-H", second.url, "load"], stdin=save.stdout, check=True, capture_output=True
        )
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0
        yield second


@pytest.fixture(scope="module", name="overlay_engine")
def overlay_engine_fixture() -> Iterator[Engine]:
    """overlay2 on this machine's filesystem (not XFS here): it cannot bound a
    container's disk. No image: what it refuses happens before one is needed."""
    with second_engine(OVERLAY_BRIDGE, OVERLAY_BRIDGE_ADDRESS, btrfs=False) as second:
        yield second


@pytest_asyncio.fixture(name="redis_on_both_bridges")
async def redis_on_both_bridges_fixture(
    redis: Redis, redis_server: RedisServer
) -> AsyncIterator[Redis]:
    """The test Redis also listening on the second engine's bridge, for its containers."""
    before = (await redis.config_get("bind"))["bind"]
    binds = " ".join(b for b in ("127.0.0.1", bridge_ip(), BRIDGE_ADDRESS) if b)
    await redis.config_set("bind", binds)
    try:
        yield redis
    finally:
        await redis.config_set("bind", before)
