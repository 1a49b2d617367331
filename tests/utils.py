"""Helpers for tests: free ports, waiting on conditions, real servers in subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gateway.containers.docker_runtime import LABEL_DEPLOYMENT
from shared.settings import redis_deployment

ROOT = Path(__file__).resolve().parent.parent
# The preview image the tests and benchmarks run (scripts/build-image's tag for a branch).
TEST_IMAGE = os.environ.get("PREVIEW_TEST_IMAGE", "preview-gateway/preview:latest")
T = TypeVar("T")
Server = TypeVar("Server", bound=socketserver.BaseServer)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    """`server` (an http.server or socketserver one) answering from a daemon thread while the
    block runs; shut down, closed and its thread joined after."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


async def async_wait_until(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def bridge_ip() -> str | None:
    """The default Docker bridge's address on this host (how containers reach it)."""
    if not shutil.which("docker"):
        return None
    name = (
        subprocess.run(
            [
                "docker",
                "network",
                "inspect",
                "bridge",
                "-f",
                '{{index .Options "com.docker.network.bridge.name"}}',
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "docker0"
    )
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", name], capture_output=True, text=True, check=False
    ).stdout.split()
    if "inet" in out:
        return out[out.index("inet") + 1].split("/")[0]
    gateway = subprocess.run(
        [
            "docker",
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return gateway or None


def _labelled(listing: list[str], label: str) -> list[str]:
    return subprocess.run(
        ["docker", *listing, "-q", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()


def remove_labelled_containers(label: str) -> None:
    """Force-remove every container carrying `label` (key=value): test clean-up."""
    ids = _labelled(["ps", "-a"], label)
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True, check=False)


def remove_labelled_volumes(label: str) -> None:
    """Remove every Docker volume carrying `label` (key=value): test and bench clean-up."""
    remove_volumes(_labelled(["volume", "ls"], label))


def remove_volumes(names: list[str]) -> None:
    """Remove the volumes `names` with the containers still using them (a volume in use
    is not removed, and test runs here had left about 130 behind)."""
    if not names:
        return
    users = subprocess.run(
        ["docker", "ps", "-aq", *(a for n in names for a in ("--filter", f"volume={n}"))],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if users:
        subprocess.run(["docker", "rm", "-f", "-v", *users], capture_output=True, check=False)
    subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True, check=False)


def stop_process(
    process: subprocess.Popen[bytes], timeout: float = 15, sig: int | None = None
) -> None:
    """SIGTERM (or `sig`), then SIGKILL if it has not exited within `timeout` seconds; reaped
    either way, so no test leaves a zombie or a process still holding its port."""
    if sig is None:
        process.terminate()
    else:
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class RedisServer:
    port: int
    password: str
    process: subprocess.Popen[bytes]
    workdir: str
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def shutdown(self) -> None:
        """Stop the way an operator restarts Redis: SHUTDOWN (the append-only file, when
        persistence is on, is flushed); the data directory is kept for `restart`."""
        if self.process.poll() is None:
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", self.password,
                 "SHUTDOWN"],
                capture_output=True,
                check=False,
                timeout=30,
            )  # fmt: skip
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Start again on the same port, password and data directory."""
        self.shutdown()
        self.process = _spawn_redis(self.args, self.workdir)
        _wait_listening(self)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
        # The cache volume of the deployment named after this server (its containers are
        # gone by now): this Redis was the test's own, so is that deployment.
        remove_labelled_volumes(f"{LABEL_DEPLOYMENT}={redis_deployment(self.url)}")


def _spawn_redis(args: tuple[str, ...], workdir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", *args, "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_listening(server: RedisServer) -> None:
    def answers() -> bool:
        if server.process.poll() is not None:
            log = Path(server.workdir, "redis.log").read_text()
            raise AssertionError(f"redis-server exited: {log}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", server.port), 0.2),
        ):
            return True
        return False

    wait_until(answers, 10, "redis-server to listen")


def start_redis(
    bind_bridge: bool = True, port: int | None = None, persistent: bool = False
) -> RedisServer:
    """A real, password-protected redis-server on a free port (and the Docker bridge).
    `persistent`: an append-only file, fsync'd every second as in production, so that
    `restart` finds the data again."""
    port = port or free_port()
    password = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="pv-redis-")
    binds = ["127.0.0.1"]
    bridge = bridge_ip() if bind_bridge else None
    if bridge:
        binds.append(bridge)
    args = (
        *("--port", str(port), "--bind", " ".join(binds), "--requirepass", password),
        *("--save", "", "--appendonly", "yes" if persistent else "no", "--appendfsync", "everysec"),
    )
    server = RedisServer(port, password, _spawn_redis(args, workdir), workdir, args)
    _wait_listening(server)
    return server


@dataclass
class GatewayProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None) -> None:
        if self.process.poll() is None:
            stop_process(self.process, sig=sig)


@contextlib.contextmanager
def run_gateway(env: Mapping[str, str], port: int | None = None) -> Iterator[GatewayProcess]:
    """The real gateway on hypercorn (uvloop) in a subprocess, like the Procfile runs it."""
    port = port or free_port()
    log_path = Path(tempfile.mkstemp(prefix="pv-gateway-", suffix=".log")[1])
    full_env = {**os.environ, **env, "PREVIEW_BIND": f"127.0.0.1:{port}"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            env=full_env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    gateway = GatewayProcess(port, process, log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited:\n{gateway.log()}")
        try:
            return httpx.get(f"{gateway.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 20, "gateway /healthz")
        yield gateway
    finally:
        gateway.stop()
        log_path.unlink(missing_ok=True)


def settings_env(**values: Any) -> dict[str, str]:
    """PREVIEW_* variables for a subprocess from keyword settings."""
    env = {}
    for name, value in values.items():
        if isinstance(value, (tuple, list)):
            value = ",".join(value)
        env["PREVIEW_" + name.upper()] = str(value)
    return env


def spawn_controller(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m gateway.controller.main` with `env` over this environment, output to
    `log_path`."""
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.controller.main"],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def run_controller(
    env: Mapping[str, str], metrics_port: int = 0, show_log: bool = True
) -> Iterator[GatewayProcess]:
    """The real controller in a subprocess (its /metrics on `metrics_port`, none for 0);
    its log is printed when the block ends (pytest shows it for a failing test)."""
    log_path = Path(tempfile.mkstemp(prefix="pv-controller-", suffix=".log")[1])
    bind = f"127.0.0.1:{metrics_port}" if metrics_port else ""
    metrics = {"PREVIEW_CONTROLLER_METRICS_BIND": bind} if metrics_port else {}
    process = spawn_controller({"PREVIEW_CONTROLLER_METRICS_BIND": "", **env, **metrics}, log_path)
    controller = GatewayProcess(metrics_port, process, log_path)
    try:
        yield controller
    finally:
        controller.stop()
        if show_log:
            print(f"--- controller log\n{controller.log()[-5000:]}")
        log_path.unlink(missing_ok=True)
