"""Isolation seen from inside a preview container, as user code sees it: containers made by
the real control plane (Containers / Starter), probes run as the `app` user.

From one preview, user code must not reach the Docker engine, another preview's dev server
(over the bridge or through its published port), the credentials its own supervisor holds,
other containers' Redis keys (even with those credentials), or the operator API without an
admin token; it runs with no effective capabilities, and a fork bomb stays inside its
container's pids limit.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from gateway.controller.main import Controller
from shared import keys
from shared.messages import Heartbeat
from shared.settings import Settings
from supervisor.portforward import PortForwarder
from tests.gateway.api_helpers import bearer, gateway_env
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fast,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    start,
    starter_for,
    wait_state,
)
from tests.utils import RedisServer, async_wait_until, bridge_ip, free_port, run_gateway

pytestmark = pytest.mark.docker

# Run as `app` inside a container: every attempt user code could make, reported as JSON.
# The Redis password arrives reversed, so this process's own argv does not contain it.
PROBE = r"""
import glob, http.client, json, os, socket, sys
args = json.loads(sys.argv[1])
secret = args["secret"][::-1].encode()
out = {}

def tcp(host, port):
    try:
        with socket.create_connection((host, port), 3):
            return "connected"
    except OSError as exc:
        return type(exc).__name__

def resp(*parts):
    raw = [p.encode() for p in parts]
    return b"*%d\r\n" % len(raw) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in raw)

def redis(commands):
    # Only commands whose reply is one line (status, error, integer) are sent.
    with socket.create_connection(tuple(args["redis"]), 3) as s:
        f = s.makefile("rb")
        replies = []
        for command in commands:
            s.sendall(resp(*command))
            replies.append(f.readline().decode().strip().split(" ")[0])
        return replies

def get(path, headers):
    conn = http.client.HTTPConnection("host.docker.internal", args["gateway_port"], timeout=5)
    # As an API host (localhost): the name it dials is none, and would get 421 before auth.
    conn.request("GET", path, headers={"Host": "localhost", **headers})
    return conn.getresponse().status

sockets = ("/var/run/docker.sock", "/run/docker.sock")
out["docker_socket"] = [p for p in sockets if os.path.exists(p)]
out["tcp"] = {f"{h}:{p}": tcp(h, p) for h, p in args["targets"]}
with open(f"/proc/{args['dev_pid']}/environ", "rb") as f:
    leaks = [e.split(b"=")[0].decode() for e in f.read().split(b"\0") if e.startswith(b"PREVIEW_")]
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    try:
        with open(path, "rb") as f:
            if secret in f.read():
                leaks.append(path)
    except OSError:
        pass
for root in ("/workspace", "/tmp", "/home", "/etc", "/opt", "/var", "/run", "/cache"):
    for top, _, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            try:
                if os.path.isfile(path) and os.path.getsize(path) < 1 << 20:
                    with open(path, "rb") as f:
                        if secret in f.read():
                            leaks.append(path)
            except OSError:
                pass
out["leaks"] = leaks
out["redis_anonymous"] = redis([["PING"], ["GET", "x"]])
out["redis_as_container"] = redis([["AUTH", args["user"], args["secret"][::-1]], *args["attempts"]])
out["admin"] = {
    label: get(path, headers) for label, (path, headers) in args["admin"].items()
}
with open(f"/proc/{args['dev_pid']}/status") as f:
    status = dict(line.split(":", 1) for line in f.read().splitlines())
fields = ("Uid", "CapEff", "CapPrm", "CapAmb", "NoNewPrivs")
out["dev_server"] = {k: status[k].strip() for k in fields}
try:
    os.setuid(0)
    out["setuid_root"] = "allowed"
except PermissionError:
    out["setuid_root"] = "refused"
print(json.dumps(out))
"""

# The pids and memory limits as the container's own cgroup states them (v2, else v1).
LIMITS = r"""
import json, os
def first(*paths):
    path = next(p for p in paths if os.path.exists(p))
    with open(path) as f:
        return f.read().strip()
print(json.dumps([
    first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
    first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
]))
"""

# An exponential fork bomb as `app`, bounded in time: every process forks until the
# deadline, then exits; the first one reports how often the kernel refused a fork.
BOMB = r"""
import json, os, sys, time
def pids_current():
    for path in ("/sys/fs/cgroup/pids.current", "/sys/fs/cgroup/pids/pids.current"):
        if os.path.exists(path):
            with open(path) as f:
                return int(f.read())
deadline = time.monotonic() + float(sys.argv[1])
root = os.getpid()
forks = refused = 0
at_limit = None
while time.monotonic() < deadline:
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        if at_limit is None and os.getpid() == root:
            at_limit = pids_current()
        time.sleep(0.005)
        continue
    if pid == 0:
        forks = refused = 0
    else:
        forks += 1
if os.getpid() != root:
    os._exit(0)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
print(json.dumps({"forks": forks, "refused": refused, "pids_at_refusal": at_limit}))
"""


def docker_inspect(cid: str, template: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", template, cid], capture_output=True, text=True, check=True
    ).stdout.strip()


async def run_as_app(controller: Controller, cid: str, script: str, *args: str) -> Any:
    """Run a Python script as `app` with an environment like user code's: `docker exec`
    would hand it the container's (the supervisor's) environment."""
    clean = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/app"]
    code, out = await controller.runtime.default.exec(
        cid, [*clean, "python3", "-c", script, *args], user="app", timeout=60
    )
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


async def test_a_preview_reaches_nothing_of_other_previews_or_the_platform(
    settings: Settings,
    redis: Redis,
    redis_server: RedisServer,
    test_image: str,
    make_controller: ControllerFactory,
) -> None:
    bridge = bridge_ip()
    assert bridge, "no Docker bridge address"
    controller = make_controller(fast(settings, pool_min=0, pool_max=0))
    starter = starter_for(controller)
    a, b = await asyncio.gather(start(starter, "alice", "iso-a"), start(starter, "bob", "iso-b"))
    a, b = await asyncio.gather(
        wait_state(starter.previews, a.id, "ready"), wait_state(starter.previews, b.id, "ready")
    )
    b_ip = docker_inspect(b.container, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    b_port = int(b.address.rsplit(":", 1)[1])
    own_url = urlsplit(
        next(
            e.split("=", 1)[1]
            for e in json.loads(docker_inspect(a.container, "{{json .Config.Env}}"))
            if e.startswith("PREVIEW_SUPERVISOR_REDIS_URL=")
        )
    )
    assert own_url.username == a.container and own_url.password

    async def dev_server_reported() -> Heartbeat | None:
        beat = await controller.containers.heartbeat(a.container)
        return beat if beat is not None and beat.pid else None

    heartbeat = await async_wait_until(dev_server_reported, 10, "A's dev server pid")
    assert heartbeat.pid
    b_commands = await redis.xlen(keys.commands(b.container))
    redis_port = urlsplit(settings.redis_url).port
    assert redis_port
    # A gateway listening where containers could reach it (as with PREVIEW_BIND=0.0.0.0).
    exposed = PortForwarder(bridge, free_port(), "127.0.0.1", 0)
    with run_gateway(gateway_env(redis_server, test_image)) as gateway:
        exposed.target_port = gateway.port
        await exposed.start()
        try:
            probe = {
                "secret": own_url.password[::-1],
                "user": own_url.username,
                "redis": ["host.docker.internal", redis_port],
                "targets": [
                    [b_ip, 3000],  # the other preview's dev server over the bridge
                    ["host.docker.internal", b_port],  # ... and its published port
                    ["host.docker.internal", 2375],  # the Docker engine over TCP
                    ["host.docker.internal", 2376],
                ],
                "attempts": [
                    ["HGET", keys.command_done(a.container), "none"],
                    ["GET", keys.heartbeat(b.container)],
                    ["XADD", keys.commands(b.container), "*", "command", "{}"],
                    ["HGETALL", keys.session(b.id)],
                    ["KEYS", "*"],
                ],
                "gateway_port": exposed.port,
                "admin": {
                    "no token": ["/v1/admin/stats", {}],
                    "bad token": ["/v1/admin/overview", {"Authorization": "Bearer x.y.z"}],
                    "user token": ["/v1/admin/overview", bearer("mallory")],
                    "pool": ["/v1/pool", {}],
                },
                "dev_pid": heartbeat.pid,
            }
            seen = await run_as_app(controller, a.container, PROBE, json.dumps(probe))
        finally:
            await exposed.close()
    assert seen["docker_socket"] == []
    assert all(v != "connected" for v in seen["tcp"].values()), seen["tcp"]
    assert seen["leaks"] == []
    # Anonymous Redis is refused; the container's own user works on its own keys only.
    assert [r[:7] for r in seen["redis_anonymous"]] == ["-NOAUTH"] * 2, seen
    assert seen["redis_as_container"][:2] == ["+OK", "$-1"], seen
    assert seen["redis_as_container"][2:] == ["-NOPERM"] * 4, seen
    assert await redis.xlen(keys.commands(b.container)) == b_commands  # nothing injected
    assert seen["admin"] == {"no token": 401, "bad token": 401, "user token": 403, "pool": 401}
    dev = seen["dev_server"]
    assert dev["Uid"].split()[0] == "10001"
    assert int(dev["CapEff"], 16) == int(dev["CapPrm"], 16) == int(dev["CapAmb"], 16) == 0, dev
    assert dev["NoNewPrivs"] == "1"
    assert seen["setuid_root"] == "refused"
    # ... while the gateway's own path to the other preview still works.
    assert httpx.get(f"http://{b.address}/", timeout=10).status_code == 200


async def test_a_fork_bomb_stays_inside_its_container(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    pids = 96
    controller = make_controller(fast(settings, pool_min=0, pool_max=0, container_pids=pids))
    containers = controller.containers
    a, b = await asyncio.gather(containers.launch(), containers.launch())
    await asyncio.gather(containers.wait_idle(a.cid), containers.wait_idle(b.cid))
    limits = await run_as_app(controller, a.cid, LIMITS)
    assert limits == [str(pids), str(settings.container_memory_mb * 1024 * 1024)]

    bomb = asyncio.create_task(run_as_app(controller, a.cid, BOMB, "4"))
    began = time.time()
    b_beats: list[float] = []
    host_forks = 0
    while not bomb.done():
        beat = await containers.heartbeat(b.cid)
        if beat is not None and beat.ts > began and beat.ts not in b_beats:
            b_beats.append(beat.ts)
        host_forks += subprocess.run(["true"], check=False).returncode == 0
        await asyncio.sleep(0.2)
    result = await bomb
    ended = time.time()
    print(f"\n[fork bomb] pids limit {pids}: {result}; other container beat {len(b_beats)}x")
    assert result["refused"] > 0, result  # the bomb hit the limit ...
    assert result["pids_at_refusal"] == pids, result
    assert host_forks > 0  # ... the host kept forking, the other container kept beating
    assert len(b_beats) >= 2, b_beats

    async def a_beats_again() -> bool:
        beat = await containers.heartbeat(a.cid)
        return beat is not None and beat.ts > ended

    # The bombed container's supervisor is alive and reporting afterwards.
    await async_wait_until(a_beats_again, 15, "a heartbeat from the bombed container")
    assert docker_inspect(a.cid, "{{.State.Running}}") == "true"
    code, out = await controller.runtime.default.exec(a.cid, ["true"], user="app")
    assert code == 0, out
