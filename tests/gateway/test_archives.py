"""Uploaded workspace archives are checked before any container sees them."""

from __future__ import annotations

import io
import tarfile

import pytest
import zstandard

from gateway.containers.archives import ArchiveError, inspect


def make_tar(*members: tuple[str, str, bytes | str]) -> bytes:
    """members: (kind, name, content or link target); kind in file, dir, sym, hard, chr, fifo."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = value if isinstance(value, bytes) else value.encode()
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("sym", "hard"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = str(value)
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def test_a_normal_project_passes_plain_and_zstd() -> None:
    raw = make_tar(
        ("dir", "./", b""),
        ("file", "./package.json", "{}"),
        ("dir", "src", b""),
        ("file", "src/main.js", "console.log(1)"),
        ("sym", "src/link.js", "main.js"),
        ("sym", "up.js", "src/../package.json"),
        ("hard", "copy.js", "src/main.js"),
    )
    summary = inspect(raw, 1 << 20)
    assert (summary.format, summary.files, summary.unpacked_bytes) == ("tar", 2, 16)
    compressed = zstandard.ZstdCompressor().compress(raw)
    assert inspect(compressed, 1 << 20).format == "tar.zst"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("file", "/etc/passwd", "x")], "escapes"),
        ([("file", "../outside", "x")], "escapes"),
        ([("file", "a/../../outside", "x")], "escapes"),
        ([("sym", "evil", "/etc/passwd")], "symlink points out"),
        ([("sym", "a/evil", "../../etc")], "symlink points out"),
        ([("hard", "evil", "../outside")], "hard link points out"),
        ([("hard", "evil", "/etc/shadow")], "hard link points out"),
        ([("chr", "dev/null", b"")], "special file"),
        ([("fifo", "pipe", b"")], "special file"),
        # The two-step escape: a link inside, then a path through it.
        ([("sym", "d", "."), ("sym", "d/x", "../../etc")], "through a link"),
        ([("sym", "d", "sub"), ("file", "d/file", "x")], "through a link"),
    ],
)
def test_unsafe_members_are_refused(
    members: list[tuple[str, str, bytes | str]], message: str
) -> None:
    with pytest.raises(ArchiveError, match=message):
        inspect(make_tar(*members), 1 << 20)


def test_size_limits_hold_for_plain_and_compressed_bombs() -> None:
    big = make_tar(("file", "big.bin", b"\0" * 200_000))
    with pytest.raises(ArchiveError, match="allowed size"):
        inspect(big, 100_000)
    bomb = zstandard.ZstdCompressor().compress(make_tar(("file", "z", b"\0" * 5_000_000)))
    assert len(bomb) < 10_000
    with pytest.raises(ArchiveError, match="allowed size"):
        inspect(bomb, 1_000_000)


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, b"\x28\xb5\x2f\xfd garbage"])
def test_garbage_is_not_an_archive(data: bytes) -> None:
    with pytest.raises(ArchiveError, match="not a valid tar archive"):
        inspect(data, 1 << 20)
