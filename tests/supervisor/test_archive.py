"""Dependency archives on real files: pack a node_modules tree, restore it elsewhere, and
compare; damaged archives and hostile entries are refused with the workspace untouched."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.depcache import archive
from supervisor.depcache.pack import NotCacheable, Packer, take_snapshot
from supervisor.depcache.restore import STAGING_PREFIX, RestoreCancelled, restore_tree
from supervisor.depcache.tarstream import DIR, END, FILE, SYMLINK, BadArchive, header, padding
from tests.supervisor.conftest import make_dir

LONG = "a-rather-long-directory-name-that-node-modules-have/" * 3


def build_tree(workspace: Path) -> None:
    nm = workspace / "node_modules"
    (nm / ".bin").mkdir(parents=True)
    (nm / "pkg/lib").mkdir(parents=True)
    (nm / "pkg/package.json").write_text('{"name": "pkg"}')
    (nm / "pkg/lib/index.js").write_text("module.exports = 1;\n")
    (nm / "pkg/lib/empty.js").write_text("")
    (nm / "pkg/bin.js").write_text("#!/usr/bin/env node\n")
    (nm / "pkg/bin.js").chmod(0o755)
    (nm / "pkg/private.txt").write_text("600")
    (nm / "pkg/private.txt").chmod(0o600)
    (nm / ".bin/pkg").symlink_to("../pkg/bin.js")
    (nm / "dangling").symlink_to("missing-but-inside")
    (nm / "to-src").symlink_to("../src")  # a local package: outside node_modules, inside
    big = os.urandom(1 << 20) * 3 + b"tail"  # past the streamed-file threshold
    (nm / "pkg/big.bin").write_bytes(big)
    deep = nm / LONG / "ünïcödé-file-name.js"
    deep.parent.mkdir(parents=True)
    deep.write_text("deep")
    (nm / LONG / "link").symlink_to("../" * 3 + "pkg/" + "x" * 120)  # long target
    for i in range(300):  # batches for the writer threads
        (nm / f"many/f{i}.js").parent.mkdir(exist_ok=True)
        (nm / f"many/f{i}.js").write_text(f"// {i}\n" * (i % 7))
    (nm / "readonly-dir").mkdir()
    (nm / "readonly-dir/inside.js").write_text("ro")
    (nm / "readonly-dir").chmod(0o555)
    (nm / ".vite").mkdir()  # a dev server's cache: not archived
    (nm / ".vite/deps.json").write_text("{}")
    os.utime(nm / "pkg/lib/index.js", (1_600_000_000, 1_600_000_000))


def describe(root: Path) -> dict[str, Any]:
    """path -> (type, mode, content or link target, mtime for files)."""
    seen: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            seen[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            seen[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            seen[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), int(st.st_mtime))
    return seen


def pack_to(workspace: Path, target: Path, owner: int | None = None) -> archive.ArchiveInfo:
    snapshot = take_snapshot(workspace)
    packer = Packer(workspace, snapshot, owner, 1 << 30)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        sizes = archive.compress(fd, packer.chunks(), 1, 2)
        info = archive.new_info("k", sizes, packer.entries, packer.data_bytes, 1)
        archive.append_trailer(fd, info)
    finally:
        os.close(fd)
    return info


def restore_from(path: Path, workspace: Path, owner: tuple[int, int] | None = None) -> Any:
    fd = os.open(path, os.O_RDONLY)
    try:
        info = archive.read_info(fd, "k")
        return restore_tree(archive.decompressed(fd, info), workspace, owner)
    finally:
        os.close(fd)


@pytest.fixture
def dirs() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in made:
        for root, subdirs, _ in os.walk(path):
            for name in subdirs:
                os.chmod(os.path.join(root, name), 0o755)
        shutil.rmtree(path, ignore_errors=True)


def test_round_trip_keeps_content_modes_symlinks_and_times(
    dirs: list[Path], sup_app_user: str
) -> None:
    source, target, store = make_dir("pv-arc-src-"), make_dir("pv-arc-dst-"), make_dir("pv-arc-")
    dirs.extend([source, target, store])
    build_tree(source)
    info = pack_to(source, store / "a.tar.zst")
    assert info.entries > 300 and info.tar_bytes > 3 << 20
    owner = None
    if sup_app_user:
        entry = pwd.getpwnam(sup_app_user)
        owner = (entry.pw_uid, entry.pw_gid)
    (target / "node_modules").mkdir()
    (target / "node_modules/stale.js").write_text("replaced")
    restored = restore_from(store / "a.tar.zst", target, owner)
    assert restored.old  # the stale tree was renamed aside for removal
    shutil.rmtree(target / restored.old)

    expected = describe(source / "node_modules")
    del expected[".vite"], expected[".vite/deps.json"]
    assert describe(target / "node_modules") == expected
    assert os.access(target / "node_modules/.bin/pkg", os.X_OK)
    assert [p.name for p in target.iterdir()] == ["node_modules"]  # no staging left
    if owner:
        for path in [target / "node_modules", *(target / "node_modules").rglob("*")]:
            assert path.lstat().st_uid == owner[0], path

    # What tools other than ours see in it: GNU tar lists the same tree.
    listing = subprocess.run(
        f"zstd -dcq {store / 'a.tar.zst'} | tar -t",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert f"node_modules/{LONG}link" in listing and "node_modules/.bin/pkg" in listing


def test_damaged_or_truncated_archives_are_refused_before_anything_changes(
    dirs: list[Path],
) -> None:
    source, target, store = make_dir("pv-arc-src-"), make_dir("pv-arc-dst-"), make_dir("pv-arc-")
    dirs.extend([source, target, store])
    build_tree(source)
    good = store / "good.tar.zst"
    info = pack_to(source, good)
    (target / "node_modules").mkdir()
    (target / "node_modules/keep.js").write_text("untouched")
    data = good.read_bytes()

    def attempt(name: str, content: bytes) -> None:
        (store / name).write_bytes(content)
        with pytest.raises((archive.CorruptArchive, BadArchive)):
            restore_from(store / name, target)
        assert sorted(p.name for p in target.iterdir()) == ["node_modules"]
        assert [p.name for p in (target / "node_modules").iterdir()] == ["keep.js"]

    attempt("truncated.tar.zst", data[: len(data) // 2])
    attempt("no-trailer.tar.zst", data[: info.zstd_bytes])
    flipped = bytearray(data)
    flipped[info.zstd_bytes // 2] ^= 0x55  # fails the frame checksum at the end
    attempt("flipped.tar.zst", bytes(flipped))
    # A trailer that fits a shortened frame: the frame itself is found incomplete.
    short = data[: info.zstd_bytes - 100]
    trailer = archive.ArchiveInfo(**{**info.__dict__, "zstd_bytes": len(short)}).trailer()
    attempt("short-frame.tar.zst", short + trailer)


def tar_stream(*members: bytes) -> Iterator[bytes]:
    yield header(b"node_modules", DIR, 0o755) + b"".join(members) + END


def file_member(path: bytes, data: bytes = b"x") -> bytes:
    return header(path, FILE, 0o644, len(data)) + data + bytes(padding(len(data)))


@pytest.mark.parametrize(
    "members",
    [
        [file_member(b"node_modules/../escape.js")],
        [file_member(b"/etc/escape.js")],
        [file_member(b"src/not-node-modules.js")],
        [header(b"node_modules/up", SYMLINK, 0o777, link=b"../../outside")],
        [header(b"node_modules/abs", SYMLINK, 0o777, link=b"/etc")],
        # a file written through a symlink of the archive
        [header(b"node_modules/l", SYMLINK, 0o777, link=b"."), file_member(b"node_modules/l/x")],
        [file_member(b"node_modules/no-parent/x.js")],
        [file_member(b"node_modules/a.js"), file_member(b"node_modules/a.js")],
    ],
    ids=["dotdot", "absolute", "outside", "link-up", "link-abs", "via-link", "orphan", "dup"],
)
def test_hostile_entries_are_refused(dirs: list[Path], members: list[bytes]) -> None:
    target = make_dir("pv-arc-dst-")
    dirs.append(target)
    with pytest.raises(BadArchive):
        restore_tree(tar_stream(*members), target, None)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", ["hardlink", "fifo"])
def test_links_and_special_files_are_refused(dirs: list[Path], kind: str) -> None:
    target = make_dir("pv-arc-dst-")
    dirs.append(target)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        top = tarfile.TarInfo("node_modules")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        member = tarfile.TarInfo("node_modules/x")
        member.type = tarfile.LNKTYPE if kind == "hardlink" else tarfile.FIFOTYPE
        member.linkname = "node_modules/y"
        tar.addfile(member)
    with pytest.raises(BadArchive):
        restore_tree(iter([buffer.getvalue()]), target, None)
    assert list(target.iterdir()) == []


def tar_stream_of(source: Path, store: Path) -> bytes:
    """``source``'s node_modules packed, and inflated back to its tar stream."""
    pack_to(source, store / "a.tar.zst")
    fd = os.open(store / "a.tar.zst", os.O_RDONLY)
    try:
        return b"".join(archive.decompressed(fd, archive.read_info(fd)))
    finally:
        os.close(fd)


def test_restore_from_a_stream_split_at_odd_places(dirs: list[Path]) -> None:
    """Headers and small files cut across chunks take the copying path, the others are
    written from views into the chunks: both give the same tree."""
    source, target, store = make_dir("pv-arc-src-"), make_dir("pv-arc-dst-"), make_dir("pv-arc-")
    dirs.extend([source, target, store])
    build_tree(source)
    stream = tar_stream_of(source, store)
    restored = restore_tree((stream[i : i + 777] for i in range(0, len(stream), 777)), target, None)
    assert restored.files > 300
    expected = describe(source / "node_modules")
    del expected[".vite"], expected[".vite/deps.json"]
    assert describe(target / "node_modules") == expected


def test_our_tar_stream_reads_with_pythons_tarfile(dirs: list[Path]) -> None:
    source, store = make_dir("pv-arc-src-"), make_dir("pv-arc-")
    dirs.extend([source, store])
    build_tree(source)
    stream = tar_stream_of(source, store)
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names[f"node_modules/{LONG}ünïcödé-file-name.js"].size == 4
    assert names["node_modules/.bin/pkg"].linkname == "../pkg/bin.js"
    assert names["node_modules/pkg/bin.js"].mode == 0o755


def test_packing_refuses_what_changed_after_the_install(dirs: list[Path]) -> None:
    source, store = make_dir("pv-arc-src-"), make_dir("pv-arc-")
    dirs.extend([source, store])
    build_tree(source)
    snapshot = take_snapshot(source)
    # User code (the dev server) edits a package once the install is over.
    (source / "node_modules/pkg/lib/index.js").write_text("module.exports = 'evil';\n")
    with pytest.raises(NotCacheable, match="changed after the install"):
        list(Packer(source, snapshot, None, 1 << 30).chunks())
    # A file added to a package directory is caught through the directory.
    snapshot = take_snapshot(source)
    (source / "node_modules/pkg/extra.js").write_text("")
    with pytest.raises(NotCacheable, match="changed after the install"):
        list(Packer(source, snapshot, None, 1 << 30).chunks())
    # New top-level entries (Vite's cache) do not matter: they are not in the snapshot.
    snapshot = take_snapshot(source)
    (source / "node_modules/.vite-temp").mkdir()
    assert b"".join(Packer(source, snapshot, None, 1 << 30).chunks())


def test_packing_refuses_escaping_links_foreign_files_and_fifos(
    dirs: list[Path], sup_app_user: str
) -> None:
    source = make_dir("pv-arc-src-")
    dirs.append(source)
    nm = source / "node_modules"
    nm.mkdir()
    (nm / "up").symlink_to("../../etc/passwd")
    with pytest.raises(NotCacheable, match="leaves the workspace"):
        list(Packer(source, take_snapshot(source), None, 1 << 30).chunks())
    (nm / "up").unlink()
    os.mkfifo(nm / "pipe")
    with pytest.raises(NotCacheable, match="FIFO"):
        list(Packer(source, take_snapshot(source), None, 1 << 30).chunks())
    (nm / "pipe").unlink()
    (nm / "root-owned.js").write_text("")
    with pytest.raises(NotCacheable, match="not owned"):
        list(Packer(source, take_snapshot(source), 4242, 1 << 30).chunks())


def test_restore_leaves_nothing_behind_when_cancelled(dirs: list[Path]) -> None:
    source, target, store = make_dir("pv-arc-src-"), make_dir("pv-arc-dst-"), make_dir("pv-arc-")
    dirs.extend([source, target, store])
    build_tree(source)
    pack_to(source, store / "a.tar.zst")
    fd = os.open(store / "a.tar.zst", os.O_RDONLY)
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 50

    try:
        with pytest.raises(RestoreCancelled):
            restore_tree(archive.decompressed(fd, archive.read_info(fd)), target, None, stop)
    finally:
        os.close(fd)
    assert list(target.iterdir()) == []
    assert not any(p.name.startswith(STAGING_PREFIX) for p in target.iterdir())
