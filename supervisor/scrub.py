"""Between two sessions (of the same user: a container never serves two), every path user
code could write goes back to the image's state; ``reset`` calls :func:`restore` once every
``app`` process is gone, so nothing writes meanwhile. The workspace itself is emptied by
``workspace.clear`` (the kept node_modules stays).

Covered (``find / -xdev \\( -user app -o -perm -o+w \\)`` in the image, plus its tmpfs
mounts):

- the home directory (/home/app): emptied, the image's skeleton (/etc/skel) copied back,
  and the directory itself app's again with mode 0755. Its npm cache (~/.npm), corepack's
  (~/.cache/node/corepack), ~/.config, ~/.npmrc, ~/.gitconfig, ~/.node_modules... go
  with it;
- /tmp, /var/tmp, /dev/shm, /dev/mqueue and /run/lock (/var/lock links there): whatever
  app owns is removed; root's own entries (the image's, the supervisor's) stay, and
  directories among them are searched too;
- /workspace: app's again with mode 0755 (user code may have changed both).

Only where SupervisorConfig.restore_user_files is set (the preview image's ENV): on a
host running the supervisor for development these directories hold other people's files.

Walks go by file descriptor and never follow a symlink: user code may have planted some,
and the host may not protect symlinks in sticky directories. Nothing is swallowed: any
failure fails the reset, and the gateway destroys the container instead.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from supervisor import workspace

SHARED_DIRS = (
    Path("/tmp"),
    Path("/var/tmp"),
    Path("/dev/shm"),
    Path("/dev/mqueue"),
    Path("/run/lock"),
)
SKELETON = Path("/etc/skel")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def restore(
    home: Path,
    workspace_dir: Path,
    owner: tuple[int, int],
    shared: Iterable[Path] = SHARED_DIRS,
    skeleton: Path = SKELETON,
) -> None:
    """Home, shared temporary directories and the workspace directory as the image has
    them, for the user ``owner`` (uid, gid)."""
    fd = os.open(home, _DIR)
    try:
        _own(fd, owner)
        workspace.clear(fd)
        _copy_tree(skeleton, fd, owner)
    finally:
        os.close(fd)
    for directory in shared:
        try:
            fd = os.open(directory, _DIR)
        except FileNotFoundError:
            continue  # not mounted in this container (/dev/mqueue)
        try:
            _remove_owned(fd, owner[0])
        finally:
            os.close(fd)
    fd = os.open(workspace_dir, _DIR)
    try:
        _own(fd, owner)
    finally:
        os.close(fd)


def _own(fd: int, owner: tuple[int, int]) -> None:
    os.fchown(fd, *owner)
    os.fchmod(fd, 0o755)


def _remove_owned(dir_fd: int, uid: int) -> None:
    """Remove every entry under ``dir_fd`` that ``uid`` owns (a directory with all it
    holds); search the others' directories for more."""
    with os.scandir(dir_fd) as entries:
        found = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
    for name, st in found:
        is_dir = stat.S_ISDIR(st.st_mode)
        if st.st_uid == uid:
            if is_dir:
                shutil.rmtree(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        elif is_dir:
            fd = os.open(name, _DIR, dir_fd=dir_fd)
            try:
                _remove_owned(fd, uid)
            finally:
                os.close(fd)


def _copy_tree(source: Path, dir_fd: int, owner: tuple[int, int]) -> None:
    """Copy the files and directories of ``source`` (root's: the image's skeleton) into
    the directory ``dir_fd``, owned by ``owner``."""
    for entry in os.scandir(source):
        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(entry.name, mode, dir_fd=dir_fd)
            fd = os.open(entry.name, _DIR, dir_fd=dir_fd)
            try:
                os.fchown(fd, *owner)
                _copy_tree(Path(entry.path), fd, owner)
            finally:
                os.close(fd)
        elif entry.is_file(follow_symlinks=False):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(entry.name, flags, mode, dir_fd=dir_fd)
            with open(entry.path, "rb") as src, os.fdopen(fd, "wb") as out:
                os.fchown(out.fileno(), *owner)
                shutil.copyfileobj(src, out)
