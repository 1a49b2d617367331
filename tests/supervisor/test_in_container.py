"""The supervisor in the real preview image, started the way the gateway starts it: its own
Redis ACL user, dropped capabilities, no-new-privileges, the dev-server port published.

The current supervisor/ and shared/ sources are mounted over the image's copy, so these
tests check this checkout even when the image was built from an older one.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.acl import container_acl_rules
from tests.supervisor.conftest import SupervisorProcess, b64
from tests.utils import ROOT, TEST_IMAGE, free_port, wait_until

pytestmark = pytest.mark.docker

CAPABILITIES = ("CHOWN", "SETUID", "SETGID", "KILL", "DAC_OVERRIDE", "FOWNER")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MEMORY = 1 << 30
DISK_MB = 2048  # the kernel's bound on what the container writes (Docker's size option)


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


def bridge_address() -> str | None:
    """Where containers reach this host (host.docker.internal:host-gateway)."""
    found = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    )
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", found.stdout)
    return match[1] if match else None


@pytest.fixture(scope="session")
def sup_image() -> str:
    if (
        not shutil.which("docker")
        or subprocess.run(
            ["docker", "image", "inspect", TEST_IMAGE], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip(f"needs Docker and the image {TEST_IMAGE} (scripts/build-image)")
    return TEST_IMAGE


@dataclass
class BridgeRedis:
    port: int
    password: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="session")
def sup_bridge_redis(sup_image: str) -> Iterator[BridgeRedis]:
    """A password-protected redis-server the containers can reach."""
    bridge = bridge_address()
    if bridge is None:
        pytest.skip("no docker0 bridge address")
    port, password = free_port(), secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="pv-sup-bredis-")
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", f"127.0.0.1 {bridge}"),
            *("--requirepass", password, "--save", "", "--appendonly", "no", "--dir", workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: (
            subprocess.run(
                ["redis-cli", "-p", str(port), "-a", password, "--no-auth-warning", "ping"],
                capture_output=True,
                check=False,
            ).stdout.strip()
            == b"PONG"
        ),
        10,
        "redis-server on the bridge",
    )
    yield BridgeRedis(port, password, process)
    process.terminate()
    process.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


class ContainerSupervisor(SupervisorProcess):
    password: str = ""
    host_port: int = 0

    def log(self) -> str:
        return subprocess.run(
            ["docker", "logs", self.cid],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        ).stdout

    def exec(self, *argv: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", "-u", user, self.cid, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.host_port}{path}"


@pytest_asyncio.fixture
async def sup_container(
    sup_image: str, sup_bridge_redis: BridgeRedis
) -> AsyncIterator[ContainerSupervisor]:
    admin = Redis.from_url(sup_bridge_redis.url, socket_timeout=300)
    cid = "pvc-" + secrets.token_hex(6)
    password = secrets.token_urlsafe(24)
    await admin.execute_command(
        "ACL", "SETUSER", cid, "reset", *container_acl_rules(cid), f">{password}"
    )
    url = f"redis://{cid}:{password}@host.docker.internal:{sup_bridge_redis.port}/0"
    run = [
        *("run", "-d", "--name", cid, "--label", "preview-gateway.test-run=supervisor"),
        *("-e", f"PREVIEW_CONTAINER_ID={cid}", "-e", f"PREVIEW_SUPERVISOR_REDIS_URL={url}"),
        *("-e", "PREVIEW_HEARTBEAT_INTERVAL=1", "-e", "PREVIEW_HEARTBEAT_TTL=4"),
        *("-e", f"PREVIEW_CONTAINER_DISK_MB={DISK_MB}", "--storage-opt", f"size={DISK_MB}M"),
        *("--memory", str(MEMORY), "--memory-swap", str(MEMORY), "--cpus", "1"),
        *("--pids-limit", "512", "--cap-drop", "ALL"),
        *(arg for cap in CAPABILITIES for arg in ("--cap-add", cap)),
        *("--security-opt", "no-new-privileges:true"),
        *("--add-host", "host.docker.internal:host-gateway", "-p", "127.0.0.1::3000"),
        *("-v", f"{ROOT / 'supervisor'}:/opt/preview/src/supervisor:ro"),
        *("-v", f"{ROOT / 'shared'}:/opt/preview/src/shared:ro"),
        *(("-v", f"{CA_BUNDLE}:/etc/preview/extra-ca.pem:ro") if Path(CA_BUNDLE).exists() else ()),
        sup_image,
    ]
    docker(*run)
    sup = ContainerSupervisor(admin, {}, cid, 3000, Path("/workspace"), Path("/dev/null"))
    sup.password = password
    try:
        mapping = docker("port", cid, "3000/tcp").split()[0]
        sup.host_port = int(mapping.rsplit(":", 1)[1])
        yield sup
    finally:
        docker("rm", "-f", cid, check=False)
        await admin.execute_command("ACL", "DELUSER", cid)
        async for key in admin.scan_iter(match=keys.container_pattern(cid)):
            await admin.delete(key)
        await admin.aclose()


def fetch(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_heartbeat_reports_the_containers_own_numbers(
    sup_container: ContainerSupervisor,
) -> None:
    hb = await sup_container.wait_heartbeat(30, state="idle")
    assert hb.memory_limit == MEMORY  # the cgroup's, not the host's
    assert 0 < hb.memory_used < MEMORY
    # Disk: the container's bound, and what it wrote anywhere (not the workspace alone).
    assert hb.disk_total == DISK_MB << 20
    docker("exec", "-u", "app", sup_container.cid, "sh", "-c", "head -c 20M /dev/zero >/tmp/x")
    written = await sup_container.wait_heartbeat(
        10, where=lambda h: h.disk_used >= hb.disk_used + (20 << 20)
    )
    assert written.disk_used < hb.disk_used + (22 << 20)  # its metadata: a few KiB
    ttl = await sup_container.redis.pttl(keys.heartbeat(sup_container.cid))
    assert 0 < ttl <= 4000
    docker("stop", "-t", "10", sup_container.cid)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", sup_container.cid).strip() == "0"
    assert await sup_container.redis.exists(keys.heartbeat(sup_container.cid)) == 0


async def test_node_basic_runs_as_app_without_credentials(
    sup_container: ContainerSupervisor,
) -> None:
    sup = sup_container
    await sup.wait_heartbeat(30, state="idle")
    args = {
        "session_id": "s1",
        "project_id": "p1",
        "source": {"type": "template", "name": "node-basic"},
        "public_host": "s1.preview.localhost:8080",
    }
    result = await sup.send("prepare", args, timeout=90)
    assert result.ok, (result, sup.log()[-2000:])
    status, page = fetch(sup.url())
    assert status == 200 and "Hello from node-basic" in page
    hb = await sup.wait_heartbeat(10, state="ready")
    assert hb.pid is not None
    status_file = sup.exec("cat", f"/proc/{hb.pid}/status").stdout
    assert re.search(r"^Uid:\s+10001\s", status_file, re.MULTILINE), status_file
    environ = sup.exec("cat", f"/proc/{hb.pid}/environ", user="app").stdout
    assert "PREVIEW_" not in environ and sup.password not in environ
    assert "PORT=3000" in environ.split("\0")
    supervisor_pid = sup.exec("pgrep", "-f", "python3 -m supervisor").stdout.split()[0]
    # User code is the OOM killer's first choice, the supervisor is not.
    assert sup.exec("cat", f"/proc/{hb.pid}/oom_score_adj").stdout.strip() == "1000"
    assert sup.exec("cat", f"/proc/{supervisor_pid}/oom_score_adj").stdout.strip() == "0"
    for pid in ("1", supervisor_pid):  # tini and the supervisor hold the credentials
        attempt = sup.exec("cat", f"/proc/{pid}/environ", user="app")
        assert attempt.returncode != 0 and "Permission denied" in attempt.stderr
        assert sup.password not in attempt.stdout
    listing = sup.exec("ls", "-ld", "/var/lib/preview-supervisor").stdout
    assert listing.startswith("drwx------") and " root root " in listing
    written = sup.exec("stat", "-c", "%u", "/workspace/server.js").stdout.strip()
    assert written == "10001"


REDIS_PROBE = """
import json, sys
import redis
from redis.exceptions import NoPermissionError
r = redis.Redis.from_url(sys.argv[1], driver_info=None)
out = {}
for name, args in json.loads(sys.argv[2]).items():
    try:
        r.execute_command(*args)
        out[name] = "ok"
    except NoPermissionError as exc:
        out[name] = "NOPERM"
print(json.dumps(out))
"""


async def test_leaked_credentials_reach_only_this_containers_keys(
    sup_container: ContainerSupervisor, sup_bridge_redis: BridgeRedis
) -> None:
    """As if user code had found the password: from inside the container, as app."""
    sup = sup_container
    await sup.wait_heartbeat(30)
    await sup.redis.set(keys.heartbeat("pvc-000000000000"), "someone else")
    await sup.redis.hset(keys.session("s-other"), "user", "bob")
    url = f"redis://{sup.cid}:{sup.password}@host.docker.internal:{sup_bridge_redis.port}/0"
    attempts = {
        "own heartbeat": ["GET", keys.heartbeat(sup.cid)],
        "other heartbeat": ["GET", keys.heartbeat("pvc-000000000000")],
        "forge other heartbeat": ["SET", keys.heartbeat("pvc-000000000000"), "{}"],
        "other commands": ["XADD", keys.commands("pvc-000000000000"), "*", "command", "{}"],
        "sessions": ["HGETALL", keys.session("s-other")],
        "keys": ["KEYS", "*"],
        "flushall": ["FLUSHALL"],
        "config": ["CONFIG", "GET", "*"],
    }
    done = sup.exec("python3", "-c", REDIS_PROBE, url, json.dumps(attempts), user="app")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen.pop("own heartbeat") == "ok"
    assert set(seen.values()) == {"NOPERM"}, seen
    assert await sup.redis.get(keys.heartbeat("pvc-000000000000")) == b"someone else"


async def test_vite_in_the_container(sup_container: ContainerSupervisor) -> None:
    sup = sup_container
    await sup.wait_heartbeat(30, state="idle")
    host = "s1.preview.example.test:8443"
    args: dict[str, Any] = {
        "session_id": "s1",
        "project_id": "vite-demo",
        "source": {"type": "template", "name": "vite-vanilla"},
        "public_host": host,
        "public_port": 8443,
        "public_scheme": "https",
    }
    started = time.monotonic()
    fresh = await sup.send("prepare", args, timeout=280)
    fresh_seconds = time.monotonic() - started
    assert fresh.ok, (fresh, sup.log()[-3000:])
    assert fresh.result["dependencies"] == "installed"
    status, page = fetch(sup.url(), host)
    assert status == 200 and "/@vite/client" in page
    assert fetch(sup.url(), "attacker.example.com")[0] == 403
    reset = await sup.send(
        "reset", {"keep_node_modules": True, "node_modules_budget_bytes": 1 << 30}
    )
    assert reset.ok and reset.result["kept_node_modules"], reset
    started = time.monotonic()
    kept = await sup.send("prepare", {**args, "session_id": "s2"}, timeout=120)
    kept_seconds = time.monotonic() - started
    assert kept.ok and kept.result["dependencies"] == "skipped", kept
    assert fetch(sup.url(), host)[0] == 200
    print(
        f"\n[container] vite prepare->ready: fresh install {fresh_seconds:.2f}s "
        f"{fresh.result['timings_ms']}, node_modules kept {kept_seconds:.2f}s "
        f"{kept.result['timings_ms']}"
    )


async def test_loopback_only_dev_server_is_reachable_through_the_published_port(
    sup_container: ContainerSupervisor,
) -> None:
    sup = sup_container
    await sup.wait_heartbeat(30, state="idle")
    server = (
        "require('http').createServer((q, s) => s.end('loopback only')).listen(3000, '127.0.0.1');"
    )
    files = {
        "package.json": b64(json.dumps({"scripts": {"dev": "node server.js"}})),
        "server.js": b64(server),
    }
    assert (await sup.send("write_files", {"files": files})).ok
    args = {"session_id": "s1", "source": {"type": "archive"}, "public_host": "x.localhost"}
    result = await sup.send("prepare", args, timeout=90)
    assert result.ok and result.result["forwarded"] is True, result
    assert fetch(sup.url()) == (200, "loopback only")
