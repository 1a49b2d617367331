"""Checking uploaded workspace archives (tar, optionally zstd) before any container sees them.

Refused with 400: absolute paths and ``..``, links pointing out of the workspace, members
reached through a link in the same archive (the classic two-step escape), devices, FIFOs
and other special files, and archives that unpack to more than the configured size. The
supervisor extracts defensively too; this keeps bad input from ever reaching it.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from dataclasses import dataclass
from typing import IO

import zstandard

from gateway.errors import ApiError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_MEMBERS = 200_000


class ArchiveError(ValueError):
    pass


@dataclass(frozen=True)
class ArchiveSummary:
    format: str  # "tar" | "tar.zst"
    files: int
    unpacked_bytes: int


class _Capped(io.RawIOBase):
    """A reader that fails once more than `limit` bytes came through (zstd bombs)."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.left -= len(data)
        if self.left < 0:
            raise ArchiveError("the archive unpacks to more than the allowed size")
        buffer[: len(data)] = data
        return len(data)


def _inside(path: str) -> bool:
    normal = posixpath.normpath(path)
    return not (path.startswith("/") or normal == ".." or normal.startswith("../"))


def _through_link(path: str, links: set[str]) -> bool:
    """Whether walking `path` passes through a link of the archive: a lexical check
    cannot know where the link really leads (``s -> .`` then ``t -> s/..`` is "inside"
    by spelling, and the workspace's parent on disk)."""
    pieces = [p for p in path.split("/") if p not in ("", ".")]
    walked: list[str] = []
    for i, piece in enumerate(pieces):
        if piece == "..":
            if walked:
                walked.pop()
            continue
        walked.append(piece)
        if i < len(pieces) - 1 and "/".join(walked) in links:
            return True
    return False


def _check_member(member: tarfile.TarInfo, links: set[str]) -> str:
    name = member.name
    if not name or "\x00" in name or name.startswith("/") or ".." in name.split("/"):
        raise ArchiveError(f"path escapes the workspace: {name[:200]!r}")
    normal = posixpath.normpath(name)
    parents = normal.split("/")[:-1]
    for depth in range(1, len(parents) + 1):
        if "/".join(parents[:depth]) in links:
            raise ArchiveError(f"path goes through a link in the archive: {name[:200]!r}")
    if member.issym():
        target = member.linkname
        joined = posixpath.join(posixpath.dirname(normal), target)
        if target.startswith("/") or not _inside(joined):
            raise ArchiveError(f"symlink points out of the workspace: {name[:200]!r}")
        if _through_link(joined, links):
            raise ArchiveError(f"symlink target goes through a link: {name[:200]!r}")
        links.add(normal)
    elif member.islnk():
        if not _inside(member.linkname) or ".." in member.linkname.split("/"):
            raise ArchiveError(f"hard link points out of the workspace: {name[:200]!r}")
        if _through_link(member.linkname, links):
            raise ArchiveError(f"hard link target goes through a link: {name[:200]!r}")
        links.add(normal)
    elif not (member.isreg() or member.isdir()):
        raise ArchiveError(f"special file (device, FIFO...) not allowed: {name[:200]!r}")
    return normal


def inspect(data: bytes, max_unpacked: int) -> ArchiveSummary:
    """Walk the whole archive without extracting it; ArchiveError on anything unsafe."""
    compressed = data.startswith(ZSTD_MAGIC)
    source: IO[bytes] = io.BytesIO(data)
    if compressed:
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
        # Tar headers and padding add to the member sizes; allow for them.
        capped = _Capped(reader, max_unpacked + max_unpacked // 8 + 10 * 1024 * 1024)
        source = io.BufferedReader(capped, 1 << 16)
    links: set[str] = set()
    files = unpacked = count = 0
    try:
        with tarfile.open(fileobj=source, mode="r|") as archive:
            for member in archive:
                # Stream mode still keeps every header it read: 200,000 of them are
                # ~90 MB for a 0.5 MB upload. Nothing here looks back, so drop them.
                archive.members.clear()  # type: ignore[attr-defined]  # not in typeshed
                count += 1
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"more than {MAX_MEMBERS} entries")
                _check_member(member, links)
                if member.isreg():
                    files += 1
                    unpacked += member.size
                    if unpacked > max_unpacked:
                        raise ArchiveError("the archive unpacks to more than the allowed size")
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        raise ArchiveError(f"not a valid tar archive: {exc}") from None
    return ArchiveSummary("tar.zst" if compressed else "tar", files, unpacked)


def check(data: bytes, max_unpacked: int) -> ArchiveSummary:
    """`inspect`, with failures as the API's 400 (413 when it is only too big)."""
    try:
        return inspect(data, max_unpacked)
    except ArchiveError as exc:
        detail = str(exc)
        if "allowed size" in detail:
            raise ApiError(413, "payload_too_large", detail, limit=max_unpacked) from None
        raise ApiError(400, "invalid_archive", detail) from None
