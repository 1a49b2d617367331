"""The per-host cache volume, mounted at /cache in every preview container:

    /cache                          root 0755 (the volume itself)
    /cache/deps/v1/<ab>/<key>.tar.zst   node_modules archives (see ``archive``)
    /cache/deps/tmp/                archives being written, renamed into v1/ when whole
    /cache/deps/locks/              flock files: one pack per key, one eviction at a time
    /cache/deps/t1/<ab>/<key>/      unpacked node_modules trees, cloned by reflink (``trees``),
    /cache/deps/t1/<ab>/<key>.bytes its size; /cache/deps/ttmp/ trees being made or removed
    /cache/npm/<ab>/<sha512 hex>    npm package tarballs (see ``npmstore``)

deps/ and npm/ belong to root with mode 0700: user code (uid ``app``) can neither read
another project's packages nor write anything another preview will restore. The
supervisor (root) does all reading and writing. A volume made by an older image (its
root world-writable) is tightened, and a deps/ or npm/ that is not root's own — made by
user code before it was tightened — is set aside and deleted.

Size: ``evict`` removes the least recently used files and trees (archives, tarballs and
trees alike; a restore or a seed refreshes a file's or tree's mtime) until the total is
under the bound. A tree goes by being renamed into ttmp/ first: its path always names a
whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from supervisor.depcache.archive import SUFFIX
from supervisor.depcache.restore import DIR_FLAGS, Restored
from supervisor.depcache.trees import clone_tree

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[a-z0-9]+-node\d+-[a-z0-9]+-[0-9a-f]{40}$")
STALE_TEMP = 3600.0  # a temporary file this old belongs to a packer that died


@dataclass(frozen=True)
class Usage:
    files: int
    bytes: int
    removed: int = 0
    freed: int = 0


class CacheVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.deps = root / "deps"
        self.archives = self.deps / "v1"
        self.tmp = self.deps / "tmp"
        self.locks = self.deps / "locks"
        self.trees = self.deps / "t1"
        self.tree_tmp = self.deps / "ttmp"
        self.npm = root / "npm"

    @classmethod
    def open(cls, root: Path) -> CacheVolume:
        """The volume at ``root`` with its layout in place and safe; OSError when it
        cannot be used."""
        volume = cls(root)
        me = os.geteuid()
        st = os.stat(root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{root} is not a directory")
        if me == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
            # Made from an older image's world-writable /cache: from now on only root
            # creates anything at its top.
            os.chown(root, 0, 0)
            os.chmod(root, 0o755)
            log.warning("cache volume %s was writable by others: now root's, 0755", root)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in ("deps", "npm"):
                _private_dir(fd, name, me)
        finally:
            os.close(fd)
        for path in (volume.archives, volume.tmp, volume.locks, volume.trees, volume.tree_tmp):
            path.mkdir(mode=0o700, exist_ok=True)
        return volume

    def archive_path(self, key: str) -> Path:
        return self.archives / _shard(key) / (key + SUFFIX)

    def tree_path(self, key: str) -> Path:
        return self.trees / _shard(key) / key

    def store_tree(
        self, key: str, source: int, expected: Restored, stop: Callable[[], bool]
    ) -> int | None:
        """Clone the checked node_modules open at ``source`` (``expected``: what was
        written there) as the tree of ``key``, root's; its bytes, or None when another
        container stored it first. CloneUnsupported where the filesystem cannot clone."""
        final = self.tree_path(key)
        if final.exists():
            return None
        temp = self.tree_tmp / f"{key}.{secrets.token_hex(4)}"
        os.mkdir(temp, 0o700)
        try:
            fd = os.open(temp, DIR_FLAGS)
            try:
                cloned, _ = clone_tree(source, fd, None, stop)
                os.fchmod(fd, 0o700)
                counts = (cloned.files, cloned.dirs, cloned.symlinks, cloned.bytes)
                wanted = (expected.files, expected.dirs, expected.symlinks, expected.bytes)
                if counts != wanted:  # never keep a tree that is not the archive's
                    raise OSError(f"the tree came out as {counts}, not {wanted}")
            finally:
                os.close(fd)
            final.parent.mkdir(mode=0o700, exist_ok=True)
            _write_size(final, cloned.bytes)
            try:
                os.rename(temp, final)  # fails when a tree is there already (not empty)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                _remove(temp)
                return None
            return cloned.bytes
        except BaseException:
            _remove(temp)
            raise

    def drop_tree(self, key: str) -> None:
        """Remove the tree of ``key`` (a reader that has it open reads on, or fails)."""
        _drop_tree(self.tree_tmp, self.tree_path(key))

    def temp_path(self, key: str) -> Path:
        return self.tmp / f"{key}.{secrets.token_hex(4)}.tmp"

    @contextlib.asynccontextmanager
    async def lock(self, name: str, timeout: float) -> AsyncIterator[bool]:
        """Hold the flock ``name`` (waiting up to ``timeout`` seconds; yields False if it
        could not be had). flock works across the containers sharing the volume."""
        fd = os.open(self.locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        held = False
                        break
                    await asyncio.sleep(0.05)
            yield held
        finally:
            os.close(fd)

    def key_lock_name(self, key: str) -> str:
        # 256 lock files in all, never deleted (deleting a lock file races its holders);
        # two keys sharing one only take turns.
        return "pack-" + key[-40:-38]

    def _files(self) -> list[tuple[float, int, Path]]:
        found: list[tuple[float, int, Path]] = []
        for top in (self.archives, self.npm, self.trees):
            for shard in _scan(top):
                if not shard.is_dir(follow_symlinks=False):
                    continue
                for entry in _scan(Path(shard.path)):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) and not entry.name.endswith(SIZE_SUFFIX):
                            found.append((st.st_mtime, st.st_size, Path(entry.path)))
                        elif stat.S_ISDIR(st.st_mode):  # a tree: its size is written beside it
                            size = _read_size(Path(entry.path))
                            found.append((st.st_mtime, size, Path(entry.path)))
        return found

    def usage(self) -> Usage:
        files = self._files()
        return Usage(len(files), sum(max(0, size) for _, size, _ in files))

    def evict(self, max_bytes: int) -> Usage:
        """Remove the least recently used archives, tarballs and trees until they take at
        most ``max_bytes``, and temporary files that outlived their writer."""
        now = time.time()
        for temp in (self.tmp, self.tree_tmp):
            for entry in _scan(temp):
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP:
                        _remove(Path(entry.path))
        files = sorted(self._files())
        total = sum(max(0, size) for _, size, _ in files)
        removed = freed = 0
        for _, size, path in files:
            if total <= max_bytes and size != UNKNOWN:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.parent.parent == self.trees:
                    _drop_tree(self.tree_tmp, path)
                else:
                    path.unlink()
                removed += 1
                freed += max(0, size)
            total -= max(0, size)
        return Usage(len(files) - removed, total, removed, freed)


SIZE_SUFFIX = ".bytes"
UNKNOWN = -1  # the size of a tree whose size file is missing or unreadable


def _write_size(tree: Path, size: int) -> None:
    tree.with_name(tree.name + SIZE_SUFFIX).write_text(f"{size}\n")


def _read_size(tree: Path) -> int:
    """A tree's bytes as stored beside it; UNKNOWN without them (they are written before
    the tree's rename, so only a damaged volume lacks them): the next trim removes it."""
    try:
        return int(tree.with_name(tree.name + SIZE_SUFFIX).read_text())
    except (OSError, ValueError):
        return UNKNOWN


def _drop_tree(tmp: Path, tree: Path) -> None:
    aside = tmp / f"{tree.name}.{secrets.token_hex(4)}.gone"
    os.rename(tree, aside)  # FileNotFoundError when it is gone already
    with contextlib.suppress(FileNotFoundError):
        tree.with_name(tree.name + SIZE_SUFFIX).unlink()
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _shard(key: str) -> str:
    """The directory a key's files go in (ValueError for what is not a key)."""
    if not _KEY.match(key):
        raise ValueError(f"not a cache key: {key!r}")
    return key[-40:-38]


def _scan(path: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(path))
    except FileNotFoundError:
        return []


def _private_dir(parent: int, name: str, owner: int) -> None:
    """``parent/name``: a real directory of ``owner``'s that nobody else can write."""
    for _ in range(3):
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == owner and not st.st_mode & 0o022:
            if st.st_mode & 0o077:
                os.chmod(name, 0o700, dir_fd=parent)
            return
        aside = f".untrusted-{name}-{secrets.token_hex(4)}"
        os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
        log.warning(
            "cache %s was not root's own (uid %d, mode %o): removed", name, st.st_uid, st.st_mode
        )
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(aside, ignore_errors=True, dir_fd=parent)
        else:
            os.unlink(aside, dir_fd=parent)
    raise PermissionError(f"cannot make a private {name} directory in the cache volume")
