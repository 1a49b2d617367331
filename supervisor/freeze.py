"""Freezing a sleeping preview's dev server, and thawing it.

The supervisor runs the dev server in the container's own cgroup, beside itself, so the
cgroup v2 freezer (which would freeze the supervisor too) is not ours to use: every
process of the dev server gets SIGSTOP instead. "Every" means the whole tree under the
dev server's pid (Next.js and Vite start workers) and, when user code runs as its own
user, every process of that user (a daemon that double-forked away from the tree is
still the user's code). The tree is scanned again until a round finds nothing new, since
a process may fork between our reading /proc and its stop. A stopped process uses no CPU;
the kernel keeps its sockets (connections made to it wait in the backlog, bytes sent to it
in its receive buffer) until SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import signal

from supervisor.procs import pids_of_user

MAX_ROUNDS = 20  # a fork bomb racing the freezer is stopped by the pids limit anyway


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process, from /proc/PID/stat."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
            # The command name may hold spaces and parentheses: fields follow the last ")".
            after = raw.rsplit(")", 1)[1].split()
            if after[0] in ("Z", "X"):
                continue
            found[int(entry.name)] = int(after[1])
        except (OSError, IndexError, ValueError):
            continue
    return found


def tree(root: int | None, uid: int | None) -> set[int]:
    """The processes of a dev server rooted at ``root`` (and of ``uid``), never ourselves."""
    found: set[int] = set(pids_of_user(uid)) if uid is not None else set()
    if root is not None:
        children: dict[int, list[int]] = {}
        parents = _parents()
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        stack = [root] if root in parents else []
        while stack:
            pid = stack.pop()
            found.add(pid)
            stack.extend(children.get(pid, ()))
    found.discard(os.getpid())
    return found


def _signal(pids: set[int], sig: int) -> set[int]:
    """The pids that took the signal."""
    sent = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent.add(pid)
    return sent


def freeze(root: int | None, uid: int | None) -> int:
    """SIGSTOP the whole tree; the number of processes stopped."""
    stopped: set[int] = set()
    for _ in range(MAX_ROUNDS):
        fresh = tree(root, uid) - stopped
        if not fresh:
            break
        stopped |= _signal(fresh, signal.SIGSTOP)
    return len(stopped)


def thaw(root: int | None, uid: int | None) -> int:
    """SIGCONT the whole tree (harmless to those running); the number signalled."""
    return len(_signal(tree(root, uid), signal.SIGCONT))


def state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` ("T": stopped), "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
