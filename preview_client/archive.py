"""A folder (or some of its files) as the tar the gateway accepts, zstd-compressed when
the optional `zstandard` package is installed, refused before upload when over the limit."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, cast

from preview_client.errors import ArchiveTooLarge
from preview_client.ignore import project_files

DEFAULT_MAX_UPLOAD = 50 * 1024 * 1024  # the gateway's default PREVIEW_MAX_UPLOAD_BYTES

zstandard: Any
try:
    import zstandard
except ImportError:  # pragma: no cover - the plain tar works, only bigger
    zstandard = None


class _Limited(io.RawIOBase):
    """A write sink that gives up as soon as more than `limit` bytes arrived."""

    def __init__(self, limit: int, folder: str) -> None:
        self.buffer = io.BytesIO()
        self.limit = limit
        self.folder = folder

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self.buffer.write(data)
        if self.buffer.tell() > self.limit:
            raise ArchiveTooLarge(self.folder, self.limit)
        return written


def _member(root: Path, relative: str) -> tuple[tarfile.TarInfo, Path] | None:
    """The tar header for one file; None for what must not travel (links out of the
    folder, which the gateway refuses, and anything but files and links)."""
    path = root / relative
    try:
        info = path.lstat()
    except OSError:
        return None  # deleted since it was listed
    member = tarfile.TarInfo(relative)
    member.mtime = int(info.st_mtime)
    member.mode = 0o755 if info.st_mode & 0o111 else 0o644
    if path.is_symlink():
        target = os.readlink(path)
        resolved = (path.parent / target).resolve()
        if os.path.isabs(target) or not resolved.is_relative_to(root.resolve()):
            return None
        member.type = tarfile.SYMTYPE
        member.linkname = target
    elif path.is_file():
        member.size = info.st_size
    else:
        return None
    return member, path


def pack(root: Path, files: Iterable[str], limit: int = DEFAULT_MAX_UPLOAD) -> bytes:
    """The tar(.zst) of `files` (relative to `root`); ArchiveTooLarge past `limit` bytes."""
    sink = _Limited(limit, str(root))
    compressor = zstandard.ZstdCompressor(level=3) if zstandard is not None else None
    target: Any = sink
    if compressor is not None:
        target = compressor.stream_writer(cast(IO[bytes], sink), closefd=False)
    with tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for relative in files:
            found = _member(root, relative)
            if found is None:
                continue
            member, path = found
            if member.isfile():
                with path.open("rb") as data:
                    tar.addfile(member, data)
            else:
                tar.addfile(member)
    if compressor is not None:
        target.close()
    return sink.buffer.getvalue()


def pack_folder(folder: str | os.PathLike[str], limit: int = DEFAULT_MAX_UPLOAD) -> bytes:
    """The project in `folder` (see preview_client.ignore) as one upload."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{folder}: no such folder")
    return pack(root, project_files(root), limit)
