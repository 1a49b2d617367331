"""npm package tarballs shared by every preview on a host, through the cache volume.

npm finds a locked package in its cache by the integrity hash from the lockfile and
checks what it reads against that hash (pacote's by-digest path): content-addressed data
is the one part of npm's cache that whoever writes it cannot poison. So that is all the
host shares: tarballs named by their sha512, stored by root after hashing them itself,
and only packages from the public registry (a private package stays with its project).
npm's index and registry metadata, which npm does not verify, are never shared.

Before an install, the tarballs its lockfile names are copied from the store into a new
npm cache made for that install (``Scratch``); afterwards the ones it downloaded are
taken back and the scratch directory is removed.

A template image (``scripts/build-image --template-deps``) also carries a read-only store
in the image, ``BAKED``: the tarballs of the common frameworks' default projects, laid out
the same way and verified by their sha512 when the image was built. It is read when the
volume lacks a tarball. Only the digests a project's own lockfile names are ever used, so
its own versions always win; the baked ones merely spare downloads when they match.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTRY = "https://registry.npmjs.org/"
MAX_TARBALL = 1 << 30
BAKED = Path("/opt/preview/npm-store")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def locked_tarballs(lockfile: Any) -> set[str]:
    """sha512 digests (hex) of the public-registry packages an npm lockfile (v2+) pins."""
    found: set[str] = set()
    packages = lockfile.get("packages") if isinstance(lockfile, dict) else None
    if not isinstance(packages, dict):
        return found
    for name, entry in packages.items():
        if not name or not isinstance(entry, dict):
            continue
        resolved, integrity = entry.get("resolved"), entry.get("integrity")
        if not isinstance(resolved, str) or not resolved.startswith(REGISTRY):
            continue
        for part in str(integrity or "").split():
            if part.startswith("sha512-"):
                with contextlib.suppress(binascii.Error, ValueError):
                    digest = base64.b64decode(part[7:], validate=True)
                    if len(digest) == 64:
                        found.add(digest.hex())
    return found


def cache_content(npm_cache: Path, digest: str) -> Path:
    """Where npm's cache (cacache) keeps the content whose sha512 is ``digest``."""
    return npm_cache / "_cacache/content-v2/sha512" / digest[:2] / digest[2:4] / digest[4:]


@dataclass(frozen=True)
class Scratch:
    """A directory for one install: its npm cache and an empty user config (so that a
    ~/.npmrc left by earlier user code in this container has no say)."""

    root: Path

    @property
    def npm_cache(self) -> Path:
        return self.root / "npm"

    @property
    def userconfig(self) -> Path:
        return self.root / "npmrc"

    def environment(self) -> dict[str, str]:
        return {
            "npm_config_cache": str(self.npm_cache),
            "npm_config_userconfig": str(self.userconfig),
        }

    @classmethod
    def create(cls, parent: str | None = None) -> Scratch:
        """Made by root with mode 0700: user code cannot enter it until ``hand_over``."""
        scratch = cls(Path(tempfile.mkdtemp(prefix="preview-install-", dir=parent)))
        scratch.npm_cache.mkdir(mode=0o755)
        scratch.userconfig.touch(mode=0o644)
        return scratch

    def hand_over(self, owner: tuple[int, int] | None) -> None:
        """Give the tree to the app user: its contents first, the top last, so that user
        code never gets into it while we still change things there."""
        if owner is not None:
            for directory, dirs, files in os.walk(self.root, topdown=False):
                for name in (*files, *dirs):
                    os.chown(os.path.join(directory, name), *owner, follow_symlinks=False)
            os.chown(self.root, *owner)
        self.root.chmod(0o755)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class NpmStore:
    def __init__(self, root: Path, baked: Path = BAKED) -> None:
        self.root = root
        self.baked = baked

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def _source(self, digest: str) -> Path:
        """The volume's copy, else the image's (``BAKED``)."""
        found = self.path(digest)
        if found.exists():
            return found
        baked = self.baked / digest[:2] / digest
        return baked if baked.exists() else found

    def seed(self, digests: Iterable[str], scratch: Scratch) -> tuple[int, int]:
        """Copy the stored tarballs among ``digests`` into the scratch npm cache (still
        root's); (count, bytes). Each one copied counts as used (for eviction)."""
        count = size = 0
        for digest in sorted(digests):
            source = self._source(digest)
            target = cache_content(scratch.npm_cache, digest)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                if source.is_relative_to(self.root):
                    os.utime(source)
            except FileNotFoundError:
                continue
            count += 1
            size += target.stat().st_size
        return count, size

    def harvest(
        self, digests: Iterable[str], scratch: Scratch, owner: int | None
    ) -> tuple[int, int]:
        """Store the tarballs the install downloaded; (count, bytes). They are read as
        root from a cache that user code may have written: nothing is followed, only
        the app user's regular files are read, and a file is kept only if its sha512
        is the digest it is stored as."""
        count = size = 0
        for digest in sorted(digests):
            final = self.path(digest)
            if final.exists() or (self.baked / digest[:2] / digest).exists():
                continue
            try:
                fd = os.open(cache_content(scratch.npm_cache, digest), _READ)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_TARBALL:
                    continue
                if owner is not None and st.st_uid != owner:
                    continue
                final.parent.mkdir(mode=0o700, exist_ok=True)
                temp = final.parent / f".{digest[:16]}.{secrets.token_hex(4)}.tmp"
                if _copy_verified(fd, temp, digest):
                    os.replace(temp, final)
                    count += 1
                    size += st.st_size
            finally:
                os.close(fd)
        return count, size


def _copy_verified(fd: int, temp: Path, digest: str) -> bool:
    hasher = hashlib.sha512()
    out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        while data := os.read(fd, 1 << 20):
            hasher.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
    finally:
        os.close(out)
    if hasher.hexdigest() != digest:
        temp.unlink()
        return False
    return True
