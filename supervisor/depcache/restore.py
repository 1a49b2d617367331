"""Restoring node_modules from a tar stream: written into a staging directory and renamed
into place only once the whole stream — and the archive's checksum — has checked out. A
restore that fails leaves the workspace as it was: never half a node_modules.

The staging directory is made by root, mode 0700, inside the workspace (one filesystem,
so the final rename is atomic). User code cannot enter it while we write, so nothing it
does can redirect a write of ours; entries are handed to the app user as they are
written, the staging directory itself last, just before the rename.

Checked as they come: every path under ``node_modules/``, no ``..``, no entry whose
parent is not a directory of the archive (so nothing goes through a symlink), symlink
targets inside the workspace, only directories, files and symlinks. Small files are
written by a few threads (the kernel's file creation is most of the cost).
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from supervisor.depcache.pack import NODE_MODULES, NotCacheable, check_link
from supervisor.depcache.tarstream import DIR, FILE, BadArchive, Source, next_member, padding

WRITERS = 2
PREFETCH = 16  # decompressed chunks (about 1-4 MiB each) waiting for the writer
SMALL_FILE = 1 << 20  # larger files are streamed by the reading thread itself
BATCH_BYTES = 256 << 10
STAGING_PREFIX = f".{NODE_MODULES}.restore-"
OLD_PREFIX = f".{NODE_MODULES}.old-"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PREFIX = NODE_MODULES.encode() + b"/"
_UMASK = os.umask(0o022)
os.umask(_UMASK)

Owner = tuple[int, int] | None
Batch = list[tuple[bytes, bytes | memoryview, int, int]]


class RestoreCancelled(Exception):
    pass


@dataclass
class Restored:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    old: str | None = None  # the replaced node_modules, renamed aside: remove it


def _write(
    root: int,
    rel: bytes,
    data: bytes | memoryview | Iterator[memoryview],
    mode: int,
    owner: Owner,
    mtime: int,
) -> None:
    fd = os.open(rel, _CREATE, mode, dir_fd=root)
    try:
        for piece in (data,) if isinstance(data, (bytes, memoryview)) else data:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        if owner is not None:
            os.fchown(fd, *owner)
        if mode & _UMASK:
            os.fchmod(fd, mode)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


def _write_batch(root: int, batch: Batch, owner: Owner) -> None:
    for rel, data, mode, mtime in batch:
        _write(root, rel, data, mode, owner, mtime)


class _Writers:
    """Small files written by a thread pool, a bounded number of batches in flight."""

    def __init__(self, root: int, owner: Owner, threads: int) -> None:
        self.root, self.owner = root, owner
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="restore")
        self.pending: deque[Future[None]] = deque()
        self.limit = threads * 2
        self.batch: Batch = []
        self.batch_bytes = 0

    def add(self, rel: bytes, data: bytes | memoryview, mode: int, mtime: int) -> None:
        self.batch.append((rel, data, mode, mtime))
        self.batch_bytes += len(data) + 4096
        if self.batch_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.pending.append(self.pool.submit(_write_batch, self.root, self.batch, self.owner))
            self.batch, self.batch_bytes = [], 0
        while len(self.pending) > self.limit:
            self.pending.popleft().result()

    def finish(self) -> None:
        self.flush()
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _relative(path: bytes, dirs: set[bytes], seen: set[bytes]) -> bytes:
    if path in seen:
        raise BadArchive(f"{path!r} appears twice")
    seen.add(path)
    if not path.startswith(_PREFIX):
        raise BadArchive(f"{path!r} is outside node_modules")
    rel = path[len(_PREFIX) :]
    parts = rel.split(b"/")
    if b"\0" in rel or any(p in (b"", b".", b"..") for p in parts):
        raise BadArchive(f"{path!r} is not a plain relative path")
    parent = rel.rpartition(b"/")[0]
    if parent and parent not in dirs:
        raise BadArchive(f"{path!r}: its directory is not in the archive (or is a symlink)")
    return rel


def restore_tree(
    chunks: Iterator[bytes],
    workspace: Path,
    owner: Owner,
    stop: Callable[[], bool] = lambda: False,
    threads: int = WRITERS,
    keep: Callable[[int, Restored], None] | None = None,
) -> Restored:
    """Unpack the tar stream ``chunks`` as ``workspace/node_modules``, replacing what is
    there only on success. BadArchive/CorruptArchive (from ``chunks``) for a bad stream,
    RestoreCancelled when ``stop()`` turned true, OSError for the disk's own failures.
    ``keep(fd, restored)`` sees the whole checked tree before the app user gets it
    (``trees``)."""

    def unpack(root: int) -> tuple[Restored, int]:
        with _prefetched(chunks) as ahead:
            return _unpack(Source(ahead), root, owner, stop, threads)

    return staged(workspace, owner, unpack, keep)


def staged(
    workspace: Path,
    owner: Owner,
    fill: Callable[[int], tuple[Restored, int]],
    keep: Callable[[int, Restored], None] | None = None,
) -> Restored:
    """``fill(fd)`` writes node_modules into a root-only staging directory (returning what
    it wrote and the top's mode), then it replaces ``workspace/node_modules`` at once."""
    ws = os.open(workspace, DIR_FLAGS)
    staging = STAGING_PREFIX + secrets.token_hex(6)
    try:
        remove_leftovers(ws)
        os.mkdir(staging, 0o700, dir_fd=ws)
        root = os.open(staging, DIR_FLAGS, dir_fd=ws)
        try:
            if os.fstat(root).st_uid != os.geteuid():
                raise OSError(f"{staging} was replaced while we made it")
            result, top_mode = fill(root)
            if keep is not None:
                keep(root, result)
            if owner is not None:
                os.fchown(root, *owner)
            os.fchmod(root, top_mode)
        finally:
            os.close(root)
        old = OLD_PREFIX + secrets.token_hex(6)
        with contextlib.suppress(FileNotFoundError):
            os.rename(NODE_MODULES, old, src_dir_fd=ws, dst_dir_fd=ws)
            result.old = old
        os.rename(staging, NODE_MODULES, src_dir_fd=ws, dst_dir_fd=ws)
        return result
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True, dir_fd=ws)
        raise
    finally:
        os.close(ws)


def _unpack(
    source: Source, root: int, owner: Owner, stop: Callable[[], bool], threads: int
) -> tuple[Restored, int]:
    first = next_member(source)
    if first is None or first.kind != DIR or first.path != NODE_MODULES.encode():
        raise BadArchive("the archive does not start with node_modules/")
    result = Restored()
    dirs: set[bytes] = set()
    seen: set[bytes] = set()
    modes: list[tuple[bytes, int]] = []  # directories whose mode would stop our writes
    writers = _Writers(root, owner, threads)
    try:
        while (member := next_member(source)) is not None:
            if stop():
                raise RestoreCancelled
            rel = _relative(member.path, dirs, seen)
            if member.kind == DIR:
                os.mkdir(rel, 0o700, dir_fd=root)
                if owner is not None:
                    os.chown(rel, *owner, dir_fd=root, follow_symlinks=False)
                if member.mode & 0o700 != 0o700:
                    modes.append((rel, member.mode & 0o777))
                else:
                    os.chmod(rel, member.mode & 0o777, dir_fd=root)
                dirs.add(rel)
                result.dirs += 1
            elif member.kind == FILE:
                mode = member.mode & 0o777
                if member.size <= SMALL_FILE:
                    writers.add(rel, source.view(member.size), mode, member.mtime)
                else:
                    _write(root, rel, source.pieces(member.size), mode, owner, member.mtime)
                source.skip(padding(member.size))
                result.files += 1
                result.bytes += member.size
            else:
                try:
                    check_link(os.fsdecode(member.path), os.fsdecode(member.link))
                except NotCacheable as exc:
                    raise BadArchive(str(exc)) from None
                os.symlink(member.link, rel, dir_fd=root)
                if owner is not None:
                    os.chown(rel, *owner, dir_fd=root, follow_symlinks=False)
                result.symlinks += 1
        writers.finish()
    finally:
        writers.close()
    # Draining the stream is what makes the archive's checksum and size checks run.
    if not source.at_end():
        raise BadArchive("data after the end of the archive")
    for rel, mode in reversed(modes):
        os.chmod(rel, mode, dir_fd=root)
    return result, first.mode & 0o777 | 0o700


@contextlib.contextmanager
def _prefetched(chunks: Iterator[bytes]) -> Iterator[Iterator[bytes]]:
    """``chunks`` produced by a thread of its own: inflating (which releases the GIL)
    overlaps with writing files."""
    ahead: queue.Queue[bytes | BaseException | None] = queue.Queue(PREFETCH)
    done = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not done.is_set():
                    try:
                        ahead.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            ahead.put(None)
        except BaseException as exc:
            ahead.put(exc)

    def consume() -> Iterator[bytes]:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    producer = threading.Thread(target=produce, name="restore-inflate", daemon=True)
    producer.start()
    try:
        yield consume()
    finally:
        done.set()
        with contextlib.suppress(queue.Empty):
            while True:
                ahead.get_nowait()
        producer.join()


def remove_leftovers(ws: int) -> None:
    """Staging and replaced trees a crashed restore left in the workspace."""
    for entry in os.scandir(ws):
        if entry.name.startswith((STAGING_PREFIX, OLD_PREFIX)):
            shutil.rmtree(entry.name, ignore_errors=True, dir_fd=ws)
