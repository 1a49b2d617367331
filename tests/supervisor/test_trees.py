"""Cloning a node_modules tree (supervisor/depcache/trees.py) on the host's filesystem:
its shape, modes and links, with few descriptors however many directories; a file with
data where the filesystem cannot clone is CloneUnsupported (the container test,
test_depcache_container.py, clones on btrfs)."""

from __future__ import annotations

import contextlib
import os
import resource
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.depcache.trees import CloneUnsupported, clone_tree

_DIR = os.O_RDONLY | os.O_DIRECTORY


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, _DIR)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def descriptors_at_most(more: int) -> Iterator[None]:
    """At most `more` descriptors beyond those open now (a full run holds many)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + more, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def shape(root: Path) -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
        detail = os.readlink(path) if kind == "l" else ""
        found.append(
            (f"{path.relative_to(root)}{detail and ' -> ' + detail}", kind, st.st_mode & 0o777)
        )
    return found


def test_the_clone_has_the_tree_s_shape_modes_and_links(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "pkg/bin").mkdir(parents=True)
    (src / "pkg/index.js").touch(mode=0o644)
    (src / "pkg/bin/run").touch(mode=0o755)
    (src / "pkg/locked").mkdir()
    (src / "pkg/locked/inside.js").touch(mode=0o444)
    (src / "pkg/locked").chmod(0o555)  # a directory its owner cannot write
    (src / ".bin").mkdir()
    (src / ".bin/run").symlink_to("../pkg/bin/run")
    for n in range(300):  # far more directories than descriptors allowed below
        (src / f"many/d{n}").mkdir(parents=True)
    dst.mkdir()
    try:
        with opened(src) as s, opened(dst) as d, descriptors_at_most(32):
            cloned, top = clone_tree(s, d, None)
        assert (cloned.files, cloned.dirs, cloned.symlinks) == (3, 305, 1)
        assert top == src.stat().st_mode & 0o777
        assert shape(dst) == shape(src)
    finally:
        for root in (src, dst):
            with contextlib.suppress(FileNotFoundError):
                (root / "pkg/locked").chmod(0o755)


def test_data_where_the_filesystem_cannot_clone(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "index.js").write_text("module.exports = 1;\n")
    with opened(src) as s, opened(dst) as d:
        try:
            clone_tree(s, d, None)
        except CloneUnsupported:
            return  # ext4, tmpfs, overlay: the archive is used there
    # A filesystem that clones (btrfs, XFS): then the data came along.
    assert (dst / "index.js").read_text() == "module.exports = 1;\n"
    pytest.skip("this filesystem clones: the unsupported path is not reachable here")
