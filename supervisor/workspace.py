"""Writing into the workspace safely: archives are checked whole before anything is
written, and writes walk directories by file descriptor without following symlinks.

Refused: absolute paths, ``..``, device files and FIFOs, symlinks whose target leaves the
workspace, hard links to anything but an earlier file of the same archive, and paths that
pass through a symlink (in the archive or already on disk). The actual writing happens in
``fsworker`` running as ``app``, so even a race with user code cannot reach further than
``app`` itself could.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MAX_MEMBERS = 200_000
MAX_BYTES = 4 << 30  # uncompressed archive size
KEEP_ON_REPLACE = "node_modules"


class UnsafePath(ValueError):
    """A path or archive member would write outside the workspace or is not allowed."""


def normalize(name: str) -> str:
    """A relative, normalised POSIX path inside the workspace, or UnsafePath."""
    if not name or "\x00" in name:
        raise UnsafePath(f"invalid path {name!r}")
    if name.startswith("/"):
        raise UnsafePath(f"absolute path not allowed: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"path escapes the workspace: {name!r}")
    if not parts:
        raise UnsafePath(f"path names the workspace itself: {name!r}")
    return "/".join(parts)


@dataclass(frozen=True)
class Entry:
    path: str
    kind: str  # file | dir | symlink | hardlink
    member: tarfile.TarInfo
    target: str = ""  # symlink target as written, or the hard link's archive path


def _on_disk_conflict(root_fd: int, path: str, kind: str) -> str | None:
    """Why writing ``path`` would be unsafe given what is already on disk, if it would."""
    parts = path.split("/")
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            last = i == len(parts) - 1
            if last:
                if stat.S_ISDIR(st.st_mode) and kind != "dir":
                    return f"{path!r} is a directory in the workspace"
                if kind == "dir" and not stat.S_ISDIR(st.st_mode):
                    return f"{path!r} exists in the workspace and is not a directory"
                return None
            if stat.S_ISLNK(st.st_mode):
                return f"{path!r} goes through the symlink {'/'.join(parts[: i + 1])!r}"
            if not stat.S_ISDIR(st.st_mode):
                return f"{'/'.join(parts[: i + 1])!r} is not a directory"
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return None
    finally:
        os.close(fd)


def check_archive(
    members: Iterable[tarfile.TarInfo], root_fd: int | None, replace: bool = False
) -> list[Entry]:
    """Every member as an Entry, or UnsafePath for the first one that is not allowed.
    ``root_fd``: the workspace, to check against what is on disk (None: skip that)."""
    entries: list[Entry] = []
    files: set[str] = set()
    symlinks: set[str] = set()
    total = 0
    for count, member in enumerate(members, 1):
        if count > MAX_MEMBERS:
            raise UnsafePath(f"archive has more than {MAX_MEMBERS} entries")
        path = normalize(member.name)
        parents = path.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if "/".join(parents[:i]) in symlinks:
                raise UnsafePath(f"{path!r} goes through a symlink of the archive")
        if member.isdir():
            kind, target = "dir", ""
        elif member.isreg():
            kind, target = "file", ""
            total += member.size
            if total > MAX_BYTES:
                raise UnsafePath(f"archive holds more than {MAX_BYTES >> 20} MiB")
            files.add(path)
        elif member.issym():
            kind, target = "symlink", member.linkname
            if target.startswith("/"):
                raise UnsafePath(f"symlink {path!r} points to an absolute path")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafePath(f"symlink {path!r} points outside the workspace")
            symlinks.add(path)
        elif member.islnk():
            kind, target = "hardlink", normalize(member.linkname)
            if target not in files:
                raise UnsafePath(f"hard link {path!r} must point to an earlier file")
            files.add(path)
        else:
            raise UnsafePath(f"{path!r} is a device, FIFO or other special file")
        if root_fd is not None and (not replace or path.split("/")[0] == KEEP_ON_REPLACE):
            conflict = _on_disk_conflict(root_fd, path, kind)
            if conflict:
                raise UnsafePath(conflict)
        entries.append(Entry(path, kind, member, target))
    return entries


def open_dir(root_fd: int, parts: list[str], create: bool = True) -> int:
    """A descriptor for ``root/parts...``, never following a symlink on the way."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _temp_name(name: str) -> str:
    return f".{name[:200]}.pv-{secrets.token_hex(4)}"


def write_entry(root_fd: int, entry: Entry, data: IO[bytes] | None) -> None:
    """Write one checked entry; files appear atomically (write to a temporary name, then
    rename), so a dev server's watcher never reads half a file."""
    *parents, name = entry.path.split("/")
    if entry.kind == "dir":
        os.close(open_dir(root_fd, [*parents, name]))
        return
    dir_fd = open_dir(root_fd, parents)
    try:
        temp = _temp_name(name)
        if entry.kind == "file":
            mode = 0o755 if entry.member.mode & 0o111 else 0o644
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(temp, flags, mode, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as out:
                if data is not None:
                    shutil.copyfileobj(data, out, 1 << 20)
        elif entry.kind == "symlink":
            os.symlink(entry.target, temp, dir_fd=dir_fd)
        else:
            *src_parents, src_name = entry.target.split("/")
            src_fd = open_dir(root_fd, src_parents, create=False)
            try:
                os.link(src_name, temp, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.close(src_fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def clear(root_fd: int, keep: Iterable[str] = ()) -> None:
    """Remove everything in the workspace except the top-level names in ``keep``."""
    kept = set(keep)
    for entry in os.scandir(root_fd):
        if entry.name not in kept:
            _remove(root_fd, entry.name, entry.is_dir(follow_symlinks=False))


def drop(root: Path, name: str) -> None:
    """Remove one top-level entry of the workspace (a tree, a file or a link), if there."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        _remove(fd, name, stat.S_ISDIR(mode))
    finally:
        os.close(fd)


def _remove(root_fd: int, name: str, is_dir: bool) -> None:
    if is_dir:
        shutil.rmtree(name, dir_fd=root_fd)
    else:
        os.unlink(name, dir_fd=root_fd)
