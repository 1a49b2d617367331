"""node_modules as unpacked trees on the cache volume, copied into a workspace by reflink.

Unpacking an archive decompresses and writes every byte (Next.js's 309 MiB took 1.0 s in
a container). Where the volume and the workspace share a filesystem that clones extents
(btrfs, XFS with reflink; Linux 5.18+ across mounts), a restore instead clones each file
of an unpacked tree (``FICLONE``): new inodes, shared data, copy-on-write. The same
node_modules then takes 0.2 s in an idle container. Elsewhere the first clone fails with
``CloneUnsupported`` and the archive is used, as before.

A tree is made only from a restore that checked out: the archive's stream, verified and
unpacked into the root-only staging directory (``restore``), is cloned into the volume
before it is handed to the app user. Trees live under /cache/deps (root, 0700), belong
to root and are never written after their rename into place; a clone gives the app user
new inodes, so what user code writes to its node_modules never reaches the tree, another
container or another user. They are keyed, shared and evicted like the archives
(``cachevolume``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable

from supervisor.depcache.restore import DIR_FLAGS, Owner, RestoreCancelled, Restored

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What FICLONE answers where it cannot clone: not this filesystem, not across these two.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}


class CloneUnsupported(OSError):
    """The filesystem cannot clone between the volume and the workspace."""


def clone_tree(
    src: int, dst: int, owner: Owner, stop: Callable[[], bool] = lambda: False
) -> tuple[Restored, int]:
    """Clone the directory open at ``src`` into the empty one open at ``dst``: directories,
    files (by reflink, with their modes and mtimes) and symlinks, given to ``owner``
    (None: the caller's). Returns what was cloned and ``src``'s own mode. ``dst`` must be
    out of anyone else's reach (a root-only staging or volume directory): directory modes
    are set last, by their paths under it."""
    result = Restored()
    modes: list[tuple[str, int]] = []  # every directory's mode, set once it is filled
    # Listed through a descriptor of our own: btrfs lists, through one opened before them,
    # none of the entries made since (it fixes a directory's end at open, Linux 6.5+), and
    # ``src`` may be the staging directory just written through.
    top = os.open(".", DIR_FLAGS, dir_fd=src)
    try:
        _clone_dir(top, dst, "", owner, stop, result, modes)
    finally:
        os.close(top)
    for rel, mode in modes:  # children before their parents: a parent's mode may bar them
        os.chmod(rel, mode, dir_fd=dst, follow_symlinks=False)
    return result, os.fstat(src).st_mode & 0o777


def _clone_dir(
    src: int,
    dst: int,
    prefix: str,
    owner: Owner,
    stop: Callable[[], bool],
    result: Restored,
    modes: list[tuple[str, int]],
) -> None:
    with os.scandir(src) as entries:
        listed = list(entries)
    for entry in listed:
        if stop():
            raise RestoreCancelled
        name = entry.name
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            if owner is not None:
                os.chown(name, *owner, dir_fd=dst, follow_symlinks=False)
            sub_src = os.open(name, DIR_FLAGS, dir_fd=src)
            try:
                sub_dst = os.open(name, DIR_FLAGS, dir_fd=dst)
                try:
                    _clone_dir(sub_src, sub_dst, f"{prefix}{name}/", owner, stop, result, modes)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
            modes.append((prefix + name, st.st_mode & 0o777))
            result.dirs += 1
        elif stat.S_ISREG(st.st_mode):
            _clone_file(src, dst, name, st, owner)
            result.files += 1
            result.bytes += st.st_size
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            if owner is not None:
                os.chown(name, *owner, dir_fd=dst, follow_symlinks=False)
            result.symlinks += 1
        # Anything else cannot come from an archive: left out.


def _clone_file(src: int, dst: int, name: str, st: os.stat_result, owner: Owner) -> None:
    source = os.open(name, _READ, dir_fd=src)
    try:
        target = os.open(name, _CREATE, 0o600, dir_fd=dst)
        try:
            if st.st_size:
                try:
                    fcntl.ioctl(target, FICLONE, source)
                except OSError as exc:
                    if exc.errno in _UNSUPPORTED:
                        raise CloneUnsupported(exc.errno, f"no reflinks here: {exc}") from exc
                    raise
            if owner is not None:
                os.fchown(target, *owner)
            os.fchmod(target, st.st_mode & 0o777)
            os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns))
        finally:
            os.close(target)
    finally:
        os.close(source)
