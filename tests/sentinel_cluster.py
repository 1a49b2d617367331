"""A real Redis Sentinel setup for tests and benches: one master, one replica, three
sentinels (Debian's ``redis-server`` and ``redis-sentinel``), on free ports of loopback
and the Docker bridge (containers reach both through host.docker.internal).

The data nodes share one password (``requirepass`` and ``masterauth``: either may be the
master). The sentinels' default user has its own password (the operators'); the user
``preview-sup`` may only ask them for the masters, which is what supervisors need.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis
from redis.sentinel import Sentinel as SyncSentinel

from tests.utils import (
    RedisServer,
    _spawn_redis,
    _wait_listening,
    bridge_ip,
    free_port,
    wait_until,
)

MASTER = "preview"
DOWN_AFTER_MS = 1000  # how long a master must be silent before the sentinels agree it is down
SUPERVISOR_USER = "preview-sup"


def _spawn(conf: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", str(conf), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@dataclass
class SentinelCluster:
    password: str
    sentinel_password: str
    supervisor_password: str
    workdir: str
    nodes: list[RedisServer] = field(default_factory=list)
    sentinels: list[tuple[int, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """PREVIEW_REDIS_URL with sentinels: only the credentials and database count."""
        return f"redis://:{self.password}@sentinel-managed/0"

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port, _, _ in self.sentinels)

    @property
    def supervisor_user(self) -> str:
        return f"{SUPERVISOR_USER}:{self.supervisor_password}"

    def settings(self) -> dict[str, str]:
        """The PREVIEW_* settings (by field name) that point a process at this setup."""
        return {
            "redis_url": self.url,
            "redis_sentinels": self.sentinel_addresses,
            "redis_master": MASTER,
            "redis_sentinel_password": self.sentinel_password,
            "container_sentinel_user": self.supervisor_user,
        }

    def sync_sentinel(self) -> SyncSentinel:
        return SyncSentinel(
            [("127.0.0.1", port) for port, _, _ in self.sentinels],
            sentinel_kwargs={"password": self.sentinel_password, "socket_timeout": 2},
            socket_timeout=5,
            password=self.password,
        )

    def client(self) -> SyncRedis:
        """A synchronous client of whichever node is the master now (for assertions)."""
        client: SyncRedis = self.sync_sentinel().master_for(MASTER, socket_timeout=5)
        return client

    def master_port(self) -> int | None:
        """The master's port as the sentinels name it (None while they know none)."""
        for port, _, _ in self.sentinels:
            with contextlib.suppress(OSError, ValueError, IndexError):
                out = subprocess.run(
                    ["redis-cli", "-p", str(port), "--no-auth-warning", "-a",
                     self.sentinel_password, "SENTINEL", "get-master-addr-by-name", MASTER],
                    capture_output=True, text=True, timeout=5, check=False,
                ).stdout.split()  # fmt: skip
                return int(out[1])
        return None

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def kill_master(self) -> RedisServer:
        """SIGKILL the master (no SHUTDOWN: what a crash or a lost machine does)."""
        port = self.master_port()
        assert port is not None, "no master to kill"
        self.wait_replicated(port)
        node = self.node(port)
        node.process.kill()
        node.process.wait()
        return node

    def wait_replicated(self, master: int, timeout: float = 30) -> None:
        """Until a replica has everything the master wrote. Replication is asynchronous:
        right after the cluster starts (a full sync waits out repl-diskless-sync-delay) a
        replica may hold nothing yet, and a failover then would lose what the test made
        before it, which is not what the tests are about."""

        def replication() -> dict[str, Any]:
            with SyncRedis(port=master, password=self.password, socket_timeout=2) as probe:
                return dict(probe.info("replication"))

        # The sentinels keep writing to the master, so its offset never stands still:
        # wait for a replica to acknowledge the offset of now.
        target = int(replication().get("master_repl_offset", 0))

        def caught_up() -> bool:
            replicas = [v for k, v in replication().items() if k.startswith("slave")]
            return any(
                isinstance(r, dict) and r.get("state") == "online" and int(r["offset"]) >= target
                for r in replicas
            )

        wait_until(caught_up, timeout, "a replica to catch up with the master")

    def wait_new_master(self, old: int, timeout: float = 60) -> int:
        """The port of the master that replaced ``old``, once it takes writes."""

        def promoted() -> int | None:
            port = self.master_port()
            if port is None or port == old:
                return None
            with SyncRedis(port=port, password=self.password, socket_timeout=2) as probe:
                role = probe.execute_command("ROLE")
            return port if role[0] == b"master" else None

        port = wait_until(promoted, timeout, "the sentinels to promote the replica")
        assert port is not None
        return port

    def rejoin(self, node: RedisServer, timeout: float = 60) -> None:
        """Start a killed node again; the sentinels make it a replica of the new master."""
        node.restart()

        def synced() -> bool:
            with SyncRedis(port=node.port, password=self.password, socket_timeout=2) as probe:
                info = probe.info("replication")
            return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        wait_until(synced, timeout, "the old master to rejoin as a replica")

    def stop(self) -> None:
        for _, process, _ in self.sentinels:
            process.kill()
            process.wait()
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _node_conf(path: Path, port: int, binds: str, password: str, master: int | None) -> None:
    lines = [
        f"port {port}",
        f"bind {binds}",
        f"requirepass {password}",
        f"masterauth {password}",
        'save ""',
        # as test_redis_restart's Redis: the append-only file, fsync'd every second
        "appendonly yes",
        "appendfsync everysec",
    ]
    if master is not None:
        lines.append(f"replicaof 127.0.0.1 {master}")
    path.write_text("\n".join(lines) + "\n")


def _sentinel_conf(
    path: Path, port: int, binds: str, cluster: SentinelCluster, master: int
) -> None:
    lines = [
        f"port {port}",
        f"bind {binds}",
        f"dir {path.parent}",
        f"logfile {path.parent / 'sentinel.log'}",
        f"sentinel monitor {MASTER} 127.0.0.1 {master} 2",
        f"sentinel auth-pass {MASTER} {cluster.password}",
        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {MASTER} 10000",
        f"sentinel parallel-syncs {MASTER} 1",
        # The sentinels' own users: operators (default) and supervisors (read only).
        f"requirepass {cluster.sentinel_password}",
        f"sentinel sentinel-pass {cluster.sentinel_password}",
        f"user {SUPERVISOR_USER} on >{cluster.supervisor_password} -@all +ping +sentinel|masters",
    ]
    path.write_text("\n".join(lines) + "\n")


def start_cluster(bind_bridge: bool = True) -> SentinelCluster:
    workdir = tempfile.mkdtemp(prefix="pv-sentinel-")
    cluster = SentinelCluster(
        secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16), workdir
    )
    bridge = bridge_ip() if bind_bridge else None
    binds = " ".join(["127.0.0.1", *([bridge] if bridge else [])])
    try:
        master = free_port()
        for role in ("master", "replica"):
            port = master if role == "master" else free_port()
            node_dir = Path(workdir, f"{role}-{port}")
            node_dir.mkdir()
            conf = node_dir / "redis.conf"
            _node_conf(conf, port, binds, cluster.password, None if role == "master" else master)
            args = (str(conf),)
            node = RedisServer(
                port, cluster.password, _spawn_redis(args, str(node_dir)), str(node_dir), args
            )
            cluster.nodes.append(node)
            _wait_listening(node)
        for number in range(3):
            port = free_port()
            sentinel_dir = Path(workdir, f"sentinel-{number}")
            sentinel_dir.mkdir()
            conf = sentinel_dir / "sentinel.conf"
            _sentinel_conf(conf, port, binds, cluster, master)
            cluster.sentinels.append((port, _spawn(conf, "--sentinel"), conf))
        wait_until(lambda: _ready(cluster), 30, "sentinels to see the replica and each other")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _ready(cluster: SentinelCluster) -> bool:
    """Every sentinel knows the master, its replica and the two other sentinels."""
    for port, process, conf in cluster.sentinels:
        if process.poll() is not None:
            raise AssertionError(f"sentinel exited: {(conf.parent / 'sentinel.log').read_text()}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", cluster.sentinel_password,
             "SENTINEL", "master", MASTER],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.split()  # fmt: skip
        state = dict(zip(out[::2], out[1::2], strict=False))
        if state.get("num-slaves") != "1" or state.get("num-other-sentinels") != "2":
            return False
    return True


@contextlib.contextmanager
def sentinel_cluster(bind_bridge: bool = True) -> Iterator[SentinelCluster]:
    cluster = start_cluster(bind_bridge)
    try:
        yield cluster
    finally:
        cluster.stop()
