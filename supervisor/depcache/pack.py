"""Reading an installed node_modules into a tar stream for the host cache, as root, from a
workspace that user code (uid ``app``) can write — without being fooled by that code.

- **No escape.** Every entry is opened relative to its directory's descriptor with
  O_NOFOLLOW; a symlink swapped in mid-walk is never followed. Only entries owned by the
  app user are read, so a hard link to a root-only file cannot smuggle it into an archive.
- **No tampering.** ``take_snapshot`` runs once the install has exited and every process
  of the app user has been killed: it records the time T0 and the top-level names. Any
  entry whose inode change time (ctime, which no unprivileged process can set back) is
  T0 or later is refused, checked again after reading it; a directory is listed between
  two such checks. So the archive holds exactly what the install wrote, even though the
  dev server — user code — starts while we pack. A tree that changed is not cached.
- **Shareable.** Symlinks must stay inside the workspace; devices, FIFOs and sockets are
  refused.
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from supervisor.depcache.tarstream import DIR, END, FILE, SYMLINK, header, padding

NODE_MODULES = "node_modules"
# Caches that dev servers write into node_modules: per project, and written by user code.
EXCLUDED_TOP = frozenset({".vite", ".vite-temp", ".cache"})
MAX_ENTRIES = 1_000_000
CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotCacheable(Exception):
    """This tree is not put in the cache; the message says why (for the log)."""


class PackCancelled(Exception):
    pass


@dataclass(frozen=True)
class Snapshot:
    t0_ns: int  # entries changed at or after this are refused
    inode: int  # of node_modules
    names: tuple[str, ...]  # its entries at T0


def take_snapshot(workspace: Path, settle: float = 0.02) -> Snapshot:
    """Call with no app process left. Sleeps ``settle`` seconds after T0 so that a later
    change gets a ctime after T0 even with the kernel's coarse timestamps."""
    t0_ns = time.time_ns()
    time.sleep(settle)
    ws = os.open(workspace, _DIR_FLAGS)
    try:
        fd = os.open(NODE_MODULES, _DIR_FLAGS, dir_fd=ws)
    finally:
        os.close(ws)
    try:
        names = tuple(sorted(os.listdir(fd)))
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if after.st_ctime_ns >= t0_ns:
        raise NotCacheable("node_modules changed after the install")
    return Snapshot(t0_ns, after.st_ino, names)


class Packer:
    """``chunks()`` is the tar stream of ``workspace/node_modules`` as of ``snapshot``;
    NotCacheable (or PackCancelled when ``stop()`` turns true) ends it early."""

    def __init__(
        self,
        workspace: Path,
        snapshot: Snapshot,
        owner: int | None,
        max_bytes: int,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.workspace = workspace
        self.snapshot = snapshot
        self.owner = owner
        self.max_bytes = max_bytes
        self.stop = stop
        self.entries = 0
        self.data_bytes = 0
        self._out = bytearray()

    def _check(self, st: os.stat_result, path: str) -> None:
        if st.st_ctime_ns >= self.snapshot.t0_ns:
            raise NotCacheable(f"{path} changed after the install")
        if self.owner is not None and st.st_uid != self.owner:
            raise NotCacheable(f"{path} is not owned by the app user")

    def _same(self, before: os.stat_result, after: os.stat_result, path: str) -> None:
        if (before.st_ino, before.st_ctime_ns) != (after.st_ino, after.st_ctime_ns):
            raise NotCacheable(f"{path} changed while it was read")

    def _take(self) -> bytearray:
        out, self._out = self._out, bytearray()
        return out

    def chunks(self) -> Iterator[bytes | bytearray]:
        ws = os.open(self.workspace, _DIR_FLAGS)
        try:
            top = os.open(NODE_MODULES, _DIR_FLAGS, dir_fd=ws)
        finally:
            os.close(ws)
        stack: list[tuple[int, str, Iterator[str]]] = []
        try:
            st = os.fstat(top)
            if st.st_ino != self.snapshot.inode:
                raise NotCacheable("node_modules was replaced after the install")
            if self.owner is not None and st.st_uid != self.owner:
                raise NotCacheable("node_modules is not owned by the app user")
            self._out += header(NODE_MODULES.encode(), DIR, st.st_mode, 0, int(st.st_mtime))
            names = [n for n in self.snapshot.names if n not in EXCLUDED_TOP]
            stack.append((top, NODE_MODULES, iter(names)))
            while stack:
                dir_fd, prefix, pending = stack[-1]
                name = next(pending, None)
                if name is None:
                    stack.pop()
                    os.close(dir_fd)
                    continue
                if self.stop():
                    raise PackCancelled
                self.entries += 1
                if self.entries > MAX_ENTRIES:
                    raise NotCacheable(f"more than {MAX_ENTRIES} entries")
                path = f"{prefix}/{name}"
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                self._check(st, path)
                if stat.S_ISDIR(st.st_mode):
                    child = self._directory(dir_fd, name, path, st)
                    stack.append((child[0], path, iter(child[1])))
                elif stat.S_ISREG(st.st_mode):
                    yield from self._file(dir_fd, name, path, st)
                elif stat.S_ISLNK(st.st_mode):
                    self._symlink(dir_fd, name, path, st)
                else:
                    raise NotCacheable(f"{path} is a device, FIFO or socket")
                if len(self._out) >= CHUNK:
                    yield self._take()
            self._out += END
            yield self._take()
        finally:
            for dir_fd, _, _ in stack:
                os.close(dir_fd)

    def _directory(
        self, parent: int, name: str, path: str, st: os.stat_result
    ) -> tuple[int, list[str]]:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            before = os.fstat(fd)
            self._same(st, before, path)
            names = sorted(os.listdir(fd))
            self._same(before, os.fstat(fd), path)
        except BaseException:
            os.close(fd)
            raise
        self._out += header(os.fsencode(path), DIR, st.st_mode, 0, int(st.st_mtime))
        return fd, names

    def _file(
        self, parent: int, name: str, path: str, st: os.stat_result
    ) -> Iterator[bytes | bytearray]:
        fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        try:
            before = os.fstat(fd)
            self._same(st, before, path)
            if not stat.S_ISREG(before.st_mode):
                raise NotCacheable(f"{path} changed type while it was read")
            size = before.st_size
            self.data_bytes += size
            if self.data_bytes > self.max_bytes:
                raise NotCacheable(f"larger than the cache ({self.max_bytes >> 20} MiB)")
            self._out += header(os.fsencode(path), FILE, st.st_mode, size, int(st.st_mtime))
            left = size
            if size > CHUNK:
                yield self._take()
            while left:
                data = os.read(fd, min(left, CHUNK))
                if not data:
                    raise NotCacheable(f"{path} shrank while it was read")
                left -= len(data)
                if size > CHUNK:
                    yield data
                else:
                    self._out += data
            self._out += bytes(padding(size))
            self._same(before, os.fstat(fd), path)
        finally:
            os.close(fd)

    def _symlink(self, parent: int, name: str, path: str, st: os.stat_result) -> None:
        target = os.readlink(name, dir_fd=parent)
        self._same(st, os.stat(name, dir_fd=parent, follow_symlinks=False), path)
        check_link(path, target)
        self._out += header(
            os.fsencode(path), SYMLINK, 0o777, 0, int(st.st_mtime), os.fsencode(target)
        )


def check_link(path: str, target: str) -> None:
    """NotCacheable unless ``target``, the symlink at ``path`` (relative to the workspace),
    stays inside the workspace."""
    if not target or target.startswith("/") or "\0" in target:
        raise NotCacheable(f"symlink {path} -> {target!r} is absolute or empty")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise NotCacheable(f"symlink {path} -> {target!r} leaves the workspace")
