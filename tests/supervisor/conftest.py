"""Fixtures for the supervisor's tests: a private redis-server, a host user standing in for
the container's ``app`` user (when we are root), and supervisors run as subprocesses
exactly as the image runs them (``python -m supervisor``)."""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.messages import Command, CommandResult, Event, Heartbeat
from tests.utils import ROOT, async_wait_until, free_port, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# A second loopback address stands in for the container's eth0 (see portforward.py).
EXTERNAL = "127.0.0.2"


@dataclass
class SupRedis:
    port: int
    process: subprocess.Popen[bytes]
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="session")
def sup_redis_server() -> Iterator[SupRedis]:
    if not os.path.exists(REDIS_SERVER):
        pytest.fail("redis-server missing: apt-get install -y redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="pv-sup-redis-")
    process = subprocess.Popen(
        [
            *(REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            *("--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        assert process.poll() is None, "redis-server exited"
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        return False

    wait_until(answers, 10, "redis-server")
    yield SupRedis(port, process, workdir)
    process.terminate()
    process.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture
async def sup_redis(sup_redis_server: SupRedis) -> AsyncIterator[Redis]:
    # redis-py 8 times reads out after 5 s by default, BLPOP's wait included.
    client = Redis.from_url(sup_redis_server.url, socket_timeout=300)
    await client.flushall()
    try:
        yield client
    finally:
        await client.flushall()
        await client.execute_command("ACL", "LOG", "RESET")
        await client.aclose()


@contextlib.contextmanager
def temporary_user() -> Iterator[str]:
    """A host user of this test run alone. A fixed name was shared by parallel runs on one
    machine, and each run's supervisors kill every process of their app user, so runs
    killed each other's dev servers."""
    name = f"pvt{secrets.token_hex(6)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-U", name], check=False)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@pytest.fixture(scope="session")
def sup_app_user() -> Iterator[str]:
    """A real unprivileged user when we are root (as in the container), else none."""
    if os.geteuid() != 0:
        yield ""
        return
    with temporary_user() as name:
        yield name


def kill_user(name: str) -> None:
    if name:
        uid = pwd.getpwnam(name).pw_uid
        subprocess.run(["pkill", "-KILL", "-U", str(uid)], check=False)


@dataclass
class SupervisorProcess:
    """One supervisor subprocess and the Redis side of talking to it."""

    redis: Redis
    env: dict[str, str]
    cid: str
    port: int
    workspace: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    results: list[str] = field(default_factory=list)
    # The session commands are sent for unless they name one, as the gateway does:
    # a prepare or claim sets it, a reset ends it (supervisor/fence.py).
    session: str | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(30)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # --- the gateway's side --------------------------------------------------------------

    async def submit(self, type: str, args: dict[str, Any] | None = None, **kw: Any) -> Command:
        blob = kw.pop("blob", None)
        args = args or {}
        if "session_id" not in kw:
            named = args.get("session_id") if type in ("prepare", "claim") else None
            kw["session_id"] = named or self.session
        command = Command(type, args, **kw)
        if type in ("prepare", "claim"):
            self.session = command.session_id or args.get("session_id")
        elif type == "reset":
            self.session = None
        if blob is not None:
            await self.redis.set(keys.command_blob(self.cid, command.id), blob, ex=300)
        await self.redis.xadd(keys.commands(self.cid), command.to_fields())  # type: ignore[arg-type]
        return command

    async def result(self, command: Command, timeout: float = 60) -> CommandResult:
        reply = await self.redis.blpop([keys.command_result(self.cid, command.id)], timeout)
        if reply is None:
            raise AssertionError(f"no result for {command.type} in {timeout}s:\n{self.log()}")
        return CommandResult.from_json(reply[1])

    async def send(
        self, type: str, args: dict[str, Any] | None = None, timeout: float = 60, **kw: Any
    ) -> CommandResult:
        return await self.result(await self.submit(type, args, **kw), timeout)

    async def events(self) -> list[Event]:
        entries = await self.redis.xrange(keys.events(self.cid))
        return [Event.from_fields(fields) for _, fields in entries]

    async def heartbeat(self) -> Heartbeat | None:
        raw = await self.redis.get(keys.heartbeat(self.cid))
        return Heartbeat.from_json(raw) if raw is not None else None

    async def wait_heartbeat(
        self,
        timeout: float = 15.0,
        where: Callable[[Heartbeat], bool] = lambda hb: True,
        **expected: Any,
    ) -> Heartbeat:
        async def matching() -> Heartbeat | None:
            hb = await self.heartbeat()
            if hb is None or not where(hb):
                return None
            return hb if all(getattr(hb, k) == v for k, v in expected.items()) else None

        return await async_wait_until(matching, timeout, f"heartbeat with {expected}")

    def write(self, relative: str, content: str) -> None:
        path = self.workspace / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


_SOURCES: list[Path] = []


def readable_sources() -> Path:
    """A directory holding `shared` and `supervisor` that every user can read: the
    checkout itself when it is, else a copy made once per run (removed at exit)."""
    if not _SOURCES:
        parents = [ROOT, *ROOT.parents]
        if all(p.stat().st_mode & 0o005 == 0o005 for p in parents):
            _SOURCES.append(ROOT)
        else:
            copy = make_dir("pv-sup-src-")
            for package in ("shared", "supervisor"):
                shutil.copytree(
                    ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
                )
            subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
            atexit.register(shutil.rmtree, copy, True)
            _SOURCES.append(copy)
    return _SOURCES[0]


def make_dir(prefix: str, owner: str = "") -> Path:
    # Not under pytest's tmp_path: that is 0700 root, and the app user must reach these.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


@pytest_asyncio.fixture
async def sup_factory(
    sup_redis: Redis, sup_redis_server: SupRedis, sup_app_user: str
) -> AsyncIterator[Any]:
    """``make(**env_overrides)`` -> a started SupervisorProcess; all stopped and their
    files and processes removed afterwards."""
    made: list[SupervisorProcess] = []
    dirs: list[Path] = []

    def make(start: bool = True, **overrides: str) -> SupervisorProcess:
        cid = "pvc-" + secrets.token_hex(6)
        workspace = make_dir("pv-sup-ws-", sup_app_user)
        state = make_dir("pv-sup-state-")
        cache = make_dir("pv-sup-cache-")
        dirs.extend([workspace, state, cache])
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")},
            "PREVIEW_CONTAINER_ID": cid,
            "PREVIEW_SUPERVISOR_REDIS_URL": sup_redis_server.url,
            "PREVIEW_HEARTBEAT_INTERVAL": "0.5",
            "PREVIEW_HEARTBEAT_TTL": "3",
            "PREVIEW_SLEEP_HEARTBEAT_INTERVAL": "1",
            "PREVIEW_DEV_PORT": str(port),
            "PREVIEW_WORKSPACE": str(workspace),
            "PREVIEW_CACHE_DIR": str(cache),
            "PREVIEW_SUPERVISOR_STATE_DIR": str(state / "supervisor"),
            "PREVIEW_APP_USER": sup_app_user,
            "PREVIEW_EXTERNAL_ADDRESS": EXTERNAL,
            "PREVIEW_LOG_LEVEL": "DEBUG",
            # Our venv's interpreter lives under /root, out of the app user's reach.
            "PREVIEW_WORKER_PYTHON": "/usr/bin/python3" if sup_app_user else sys.executable,
            # And so may the checkout (a `mktemp -d` clone is 0700): the app user's helpers
            # then import a readable copy of our packages (an unreadable entry is skipped).
            **({"PYTHONPATH": str(readable_sources())} if sup_app_user else {}),
            **overrides,
        }
        sup = SupervisorProcess(sup_redis, env, cid, port, workspace, state / "supervisor.log")
        made.append(sup)
        if start:
            sup.start()
        return sup

    try:
        yield make
    finally:
        for sup in made:
            sup.stop()
        kill_user(sup_app_user)
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)


async def wait_for_event(
    sup: SupervisorProcess, type: str, timeout: float = 60.0, **data: Any
) -> Event:
    async def found() -> Event | None:
        for event in await sup.events():
            if event.type == type and all(event.data.get(k) == v for k, v in data.items()):
                return event
        return None

    return await async_wait_until(found, timeout, f"{type} event {data}")


def proc_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
