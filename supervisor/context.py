"""What the supervisor's parts share: clients, the dev server, the session, and the small
record of it kept on disk (root-only) so that a restarted supervisor knows its session and
which ``node_modules`` the workspace holds."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from supervisor.cgroup import Cgroup
from supervisor.config import SupervisorConfig
from supervisor.devserver import DevServer
from supervisor.events import Events
from supervisor.logbuffer import LogBuffer
from supervisor.procs import AppUser

log = logging.getLogger(__name__)


@dataclass
class SessionState:
    session_id: str | None = None
    project_id: str | None = None
    # Hash of the lockfile (and dependency specs) node_modules was installed from.
    lock_hash: str | None = None
    # "{project_id}:{lock_hash}" while node_modules is in the workspace: the controller
    # reuses this container for the same project.
    node_modules_key: str | None = None
    # Whose install (and code) wrote node_modules: the gateway's opaque owner key (one
    # user's one project). A kept tree is trusted only for the same owner.
    modules_owner: str | None = None
    framework: str | None = None  # as detected: which build caches reset packs (buildcache)
    dev_wanted: bool = False  # a dev server should be running for this session
    dev_pgid: int | None = None
    dev_started: int | None = None  # its start time (/proc/PID/stat), against pid reuse
    # How the dev server was launched (LaunchSpec as JSON), so that `restart` works after
    # a supervisor restart. Root-only like the rest: it holds the project's env.
    launch: dict[str, Any] | None = None
    # The project's own environment (prepare's ``env``): kept with a hibernated workspace.
    user_env: dict[str, str] = field(default_factory=dict)
    # Sessions a reset ended here, newest last (supervisor/fence.py): never current again.
    ended: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> SessionState:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("state file %s unreadable (%s): starting afresh", path, exc)
            return cls()
        names = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in names})
        if not isinstance(state.ended, list):
            state.ended = []
        return state

    def save(self, path: Path) -> None:
        temp = path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(temp, path)


@dataclass
class Context:
    config: SupervisorConfig
    redis: Redis
    user: AppUser
    base_env: dict[str, str]
    logs: LogBuffer
    events: Events
    cgroup: Cgroup
    devserver: DevServer
    session: SessionState
    # Serialises commands that change the workspace (prepare's files phase, write_files,
    # reset); prepare_lock, whole prepares.
    workspace_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    prepare_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # In-flight prepare tasks, cancelled by stop and reset.
    prepares: set[asyncio.Task[Any]] = field(default_factory=set)
    superseded: set[str] = field(default_factory=set)  # command ids cancelled that way
    disk_dirty: bool = True  # workspace changed: measure its size again

    @property
    def state_path(self) -> Path:
        return self.config.state_dir / "state.json"

    def save(self) -> None:
        """Persist the session record; also called on every dev-server change."""
        process_pid = self.devserver.pid
        spec = self.devserver.spec
        self.session.launch = spec.to_json() if spec is not None else None
        self.session.dev_pgid = process_pid
        self.session.dev_started = process_start_time(process_pid) if process_pid else None
        try:
            self.session.save(self.state_path)
        except OSError as exc:
            log.warning("state not saved: %s", exc)

    async def cancel_prepares(self, reason: str) -> None:
        tasks = [t for t in self.prepares if not t.done()]
        for task in tasks:
            self.superseded.add(task.get_name())
            task.cancel(reason)
        if tasks:
            await asyncio.wait(tasks)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a process from a later one with the same pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(raw.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None
