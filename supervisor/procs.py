"""Starting and stopping user code: as the ``app`` user, without our credentials, in its
own process group so that a whole tree can be stopped at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import ENV_PREFIX, ConfigError
from supervisor.logbuffer import pump

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppUser:
    """Who user code runs as. ``uid is None``: as ourselves (no root to switch)."""

    name: str
    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    home: str

    @classmethod
    def resolve(cls, name: str) -> AppUser:
        me = pwd.getpwuid(os.getuid())
        if not name or os.geteuid() != 0:
            if name and name != me.pw_name:
                log.warning("not root: user code runs as %s, not %s", me.pw_name, name)
            return cls(me.pw_name, None, None, (), me.pw_dir)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"{ENV_PREFIX}APP_USER: no user {name!r}") from None
        groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != entry.pw_gid)
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    @property
    def switches(self) -> bool:
        return self.uid is not None

    def spawn_kwargs(self) -> dict[str, Any]:
        """subprocess arguments that drop to this user (setgroups, setgid, setuid in the
        child before exec; no preexec_fn, so safe with threads)."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


# Root's files, empty and read-only to app (images/preview/Dockerfile makes them).
USER_CONFIG_DIR = "/opt/preview/user"


def supervised_config(home: str) -> dict[str, str]:
    """Where npm, git, corepack and XDG programs look for per-user configuration and
    caches: root's read-only files, or places under the home that ``reset`` restores, so
    that nothing user code wrote (a ``~/.npmrc`` with ``node-options``, a ``~/.gitconfig``
    with hooks) changes how a later session's install or dev server starts. A project's
    own ``.npmrc`` in the workspace still applies: it is the user's."""
    return {
        "npm_config_userconfig": f"{USER_CONFIG_DIR}/npmrc",
        "npm_config_cache": f"{home}/.npm",
        "GIT_CONFIG_GLOBAL": f"{USER_CONFIG_DIR}/gitconfig",
        "COREPACK_HOME": f"{home}/.cache/node/corepack",
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "XDG_DATA_HOME": f"{home}/.local/share",
        "XDG_STATE_HOME": f"{home}/.local/state",
    }


def child_environment(
    base: Mapping[str, str], user: AppUser, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child: ours with the user's identity and ``supervised_config``,
    then ``extra``; never a ``PREVIEW_*`` variable, whoever asked for it (they hold this
    container's credentials)."""
    chosen = supervised_config(user.home)
    names = {name.lower() for name in chosen}  # npm reads npm_config_* in any case
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(("SUDO_", "MAIL")) and k.lower() not in names
    }
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env.update(chosen)
    env.update(extra or {})
    return {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}


USER_OOM_SCORE_ADJ = 1000


def oom_first(argv: Sequence[str]) -> list[str]:
    """``argv`` through a shell that makes it (and all it starts) the kernel OOM killer's
    first choice, then execs it: same pid and process group. At the container's memory
    limit the user's code is killed, never the supervisor that reports why. (Raising
    one's own oom_score_adj needs no privilege; no preexec_fn: we have threads.)"""
    script = f'echo {USER_OOM_SCORE_ADJ} >/proc/self/oom_score_adj && exec "$@"'
    return ["/bin/sh", "-c", script, "preview-user", *argv]


async def spawn(
    argv: Sequence[str],
    *,
    user: AppUser,
    env: Mapping[str, str],
    cwd: Path,
    stdin: int = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    """Start ``argv`` as ``user`` in a new session (its own process group), stdout and
    stderr merged into one pipe; first in the OOM killer's line (``oom_first``)."""
    return await asyncio.create_subprocess_exec(
        *oom_first(argv),
        cwd=str(cwd),
        env=dict(env),
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        umask=0o022,
        **user.spawn_kwargs(),
    )


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False
    return True


async def stop_process(process: asyncio.subprocess.Process, grace: float = 5.0) -> int | None:
    """SIGTERM the process's group, SIGKILL it after ``grace`` seconds; the exit code."""
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
    # Children that ignored SIGTERM but outlived their parent still hold the group.
    signal_group(process.pid, signal.SIGKILL)
    return process.returncode


def pids_of_user(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(
                ("Z", "X")
            ):
                found.append(int(entry.name))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return found


async def kill_user_processes(uid: int, timeout: float = 5.0) -> int:
    """SIGKILL every process of ``uid`` until none is left; the number signalled.

    Each round stops them all first so that none can fork a replacement between our
    reading /proc and the kill."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in pids_of_user(uid) if p != os.getpid()]
        if not pids:
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        killed.update(pids)
        await asyncio.sleep(0.02)
    return len(killed)


@dataclass
class Finished:
    returncode: int | None  # None: stopped at the deadline
    lines: list[str]


async def run_to_end(
    argv: Sequence[str],
    *,
    user: AppUser,
    env: Mapping[str, str],
    cwd: Path,
    on_line: Callable[[str], None],
    timeout: float,
    stdin_data: Iterable[bytes] | None = None,
) -> Finished:
    """Run ``argv`` to completion (or ``timeout``), handing each output line to
    ``on_line``. Cancelling this stops the whole process group."""
    lines: list[str] = []

    def collect(line: str) -> None:
        lines.append(line)
        on_line(line)

    stdin = asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL
    process = await spawn(argv, user=user, env=env, cwd=cwd, stdin=stdin)

    async def feed() -> None:
        if process.stdin is None or stdin_data is None:
            return
        try:
            for chunk in stdin_data:
                process.stdin.write(chunk)
                await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it exited early; its output says why
        except BaseException:
            # Half an input must not be taken for all of it: kill before EOF is seen.
            signal_group(process.pid, signal.SIGKILL)
            raise
        finally:
            process.stdin.close()

    try:
        assert process.stdout is not None
        try:
            await asyncio.wait_for(asyncio.gather(feed(), pump(process.stdout, collect)), timeout)
        except TimeoutError:
            await stop_process(process)
            return Finished(None, lines)
        return Finished(await process.wait(), lines)
    finally:
        if process.returncode is None:
            await stop_process(process, grace=2.0)
