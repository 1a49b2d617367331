"""The npm tarball store with a template image's baked store behind it (npmstore.BAKED):
used for the digests a lockfile names when the volume lacks them, never for others, and
never copied onto the volume again."""

from __future__ import annotations

import hashlib
from pathlib import Path

from supervisor.depcache.npmstore import NpmStore, Scratch, cache_content


def put(store_root: Path, data: bytes) -> str:
    digest = hashlib.sha512(data).hexdigest()
    path = store_root / digest[:2] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def test_baked_tarballs_seed_an_install_when_the_volume_lacks_them(tmp_path: Path) -> None:
    volume, baked = tmp_path / "volume", tmp_path / "baked"
    volume.mkdir()
    next_15 = put(baked, b"next 15.5 tarball")
    other = put(baked, b"a version the project does not lock")
    mine = put(volume, b"the volume's own")
    store = NpmStore(volume, baked)
    scratch = Scratch.create(str(tmp_path))
    try:
        missing = hashlib.sha512(b"not anywhere").hexdigest()
        count, _ = store.seed({next_15, mine, missing}, scratch)
        assert count == 2
        assert cache_content(scratch.npm_cache, next_15).read_bytes() == b"next 15.5 tarball"
        assert cache_content(scratch.npm_cache, mine).read_bytes() == b"the volume's own"
        # The project's lockfile decides: a baked tarball it does not name is not offered.
        assert not cache_content(scratch.npm_cache, other).exists()
        # After the install: a baked tarball is not copied onto the volume.
        assert store.harvest({next_15}, scratch, None) == (0, 0)
        assert not store.path(next_15).exists()
    finally:
        scratch.remove()


def test_without_a_baked_store_nothing_changes(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    store = NpmStore(volume, tmp_path / "absent")
    scratch = Scratch.create(str(tmp_path))
    try:
        downloaded = b"downloaded by npm"
        digest = hashlib.sha512(downloaded).hexdigest()
        assert store.seed({digest}, scratch) == (0, 0)
        target = cache_content(scratch.npm_cache, digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(downloaded)
        assert store.harvest({digest}, scratch, None) == (1, len(downloaded))
        assert store.path(digest).read_bytes() == downloaded
    finally:
        scratch.remove()
