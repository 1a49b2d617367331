"""Safe archive extraction: everything that would leave the workspace is refused, and then
nothing at all is written."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from supervisor import sources
from supervisor.sources import _decompressed, files_archive
from supervisor.workspace import UnsafePath, check_archive, normalize
from tests.utils import ROOT


def member(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def unpack(root: Path, data: bytes, mode: str = "merge") -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "supervisor.fsworker", str(root), mode],
        input=data,
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    return done.returncode, done.stdout.decode()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/passwd", "absolute"),
        ("../x", "escapes"),
        ("a/../../x", "escapes"),
        ("", "invalid"),
        (".", "itself"),
    ],
)
def test_normalize_refuses(name: str, message: str) -> None:
    with pytest.raises(UnsafePath, match=message):
        normalize(name)


def test_normalize_accepts() -> None:
    assert normalize("./src//App.jsx") == "src/App.jsx"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([member("../evil")], "escapes"),
        ([member("/abs")], "absolute"),
        ([member("link", tarfile.SYMTYPE, "/etc")], "absolute"),
        ([member("a/link", tarfile.SYMTYPE, "../../outside")], "outside"),
        ([member("link", tarfile.SYMTYPE, "sub"), member("link/x")], "symlink"),
        ([member("dev", tarfile.CHRTYPE)], "device"),
        ([member("fifo", tarfile.FIFOTYPE)], "device"),
        ([member("hard", tarfile.LNKTYPE, "../../etc/shadow")], "escapes"),
        ([member("hard", tarfile.LNKTYPE, "not-in-archive")], "earlier file"),
    ],
)
def test_check_archive_refuses(members: list[tarfile.TarInfo], message: str) -> None:
    with pytest.raises(UnsafePath, match=message):
        check_archive(members, None)


def test_check_archive_accepts_links_inside() -> None:
    entries = check_archive(
        [
            member("src", tarfile.DIRTYPE),
            member("src/a.js"),
            member("src/alias.js", tarfile.SYMTYPE, "a.js"),
            member("up", tarfile.SYMTYPE, "src/../src"),
            member("copy.js", tarfile.LNKTYPE, "src/a.js"),
        ],
        None,
    )
    assert [e.kind for e in entries] == ["dir", "file", "symlink", "symlink", "hardlink"]


def test_unpack_writes_files_links_and_modes(tmp_path: Path) -> None:
    script = member("bin/run.sh")
    script.mode = 0o755
    data = archive(
        (member("src/a.js"), b"console.log(1)\n"),
        (script, b"#!/bin/sh\n"),
        (member("src/b.js", tarfile.SYMTYPE, "a.js"), b""),
    )
    code, out = unpack(tmp_path, data)
    assert code == 0, out
    assert (tmp_path / "src/a.js").read_text() == "console.log(1)\n"
    assert os.readlink(tmp_path / "src/b.js") == "a.js"
    assert (tmp_path / "bin/run.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "src/a.js").stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.rglob(".*pv-*")]  # no temporary files left


def test_a_bad_member_means_nothing_is_written(tmp_path: Path) -> None:
    data = archive((member("good.txt"), b"fine"), (member("../../escaped.txt"), b"evil"))
    code, out = unpack(tmp_path, data)
    assert code == 2 and "escapes the workspace" in out
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent.parent / "escaped.txt").exists()


def test_symlink_on_disk_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    root = tmp_path / "ws"
    outside.mkdir()
    root.mkdir()
    (root / "src").symlink_to(outside)  # planted by user code
    code, out = unpack(root, archive((member("src/pwned.js"), b"x")))
    assert code == 2 and "symlink" in out
    assert list(outside.iterdir()) == []


def test_gzip_and_replace_keeps_node_modules(tmp_path: Path) -> None:
    (tmp_path / "node_modules/react").mkdir(parents=True)
    (tmp_path / "node_modules/react/index.js").write_text("kept")
    (tmp_path / "old.js").write_text("gone")
    code, out = unpack(tmp_path, gzip.compress(archive((member("new.js"), b"new"))), "replace")
    assert code == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.js", "node_modules"]
    assert (tmp_path / "node_modules/react/index.js").read_text() == "kept"


def test_zstd_is_undone_by_the_supervisor_with_a_size_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = archive((member("a.txt"), b"a" * 100_000))
    packed = zstandard.ZstdCompressor().compress(plain)
    assert b"".join(_decompressed(packed)) == plain
    assert list(_decompressed(plain)) == [plain]  # not zstd: passed through
    monkeypatch.setattr(sources, "MAX_BYTES", 50_000)
    with pytest.raises(UnsafePath, match="more than"):
        b"".join(_decompressed(packed))
    monkeypatch.undo()
    with pytest.raises(UnsafePath, match="truncated"):
        b"".join(_decompressed(packed[: len(packed) // 2]))
    with pytest.raises(UnsafePath, match="zstd"):
        b"".join(_decompressed(packed[:4] + b"garbage" * 10))
    two = packed + zstandard.ZstdCompressor().compress(b"more")
    assert b"".join(_decompressed(two)) == plain + b"more"  # concatenated frames


def test_not_an_archive(tmp_path: Path) -> None:
    code, out = unpack(tmp_path, b"hello, this is not a tar file" * 30)
    assert code == 2 and "not a tar archive" in out


def test_files_archive_refuses_paths_before_building() -> None:
    with pytest.raises(UnsafePath):
        files_archive({"ok.txt": b"1", "../../etc/passwd": b"x"})
    names = tarfile.open(fileobj=io.BytesIO(files_archive({"./a/b.txt": b"1"}))).getnames()
    assert names == ["a/b.txt"]
