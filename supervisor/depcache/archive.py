"""Dependency archives on disk: one zstd frame (with its content checksum) holding the tar
stream of a node_modules tree, then a trailer in a zstd skippable frame that records how
long that frame is and how many bytes it inflates to. ``zstd -dc`` and ``tar`` read the
files as they are (zstd skips the trailer).

A truncated file has lost its trailer; a damaged one fails the frame checksum or a size
check. Either way ``CorruptArchive`` — and the restorer commits nothing before the whole
frame has checked out. Neither direction holds more than a few MiB in memory.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import zstandard

FORMAT = 1
SUFFIX = ".tar.zst"
READ_CHUNK = 1 << 20
_SKIPPABLE_MAGIC = 0x184D2A5E  # one of zstd's sixteen skippable-frame magic numbers
_TAG = b"PVNM"
_MAX_TRAILER = 64 << 10


class CorruptArchive(Exception):
    """The archive is damaged, truncated, or not one of ours."""


@dataclass(frozen=True)
class ArchiveInfo:
    key: str
    zstd_bytes: int  # the compressed frame, from offset 0
    tar_bytes: int  # what it inflates to
    entries: int
    data_bytes: int  # regular files' contents
    level: int
    created: float
    format: int = FORMAT

    def trailer(self) -> bytes:
        payload = json.dumps(asdict(self), separators=(",", ":")).encode()
        body = payload + struct.pack("<I", len(payload)) + _TAG
        return struct.pack("<II", _SKIPPABLE_MAGIC, len(body)) + body


def compress(
    fd: int, chunks: Iterable[bytes | bytearray], level: int, threads: int
) -> tuple[int, int]:
    """Write the tar stream ``chunks`` to ``fd`` as one zstd frame (checksummed; ``threads``
    compression workers, 0 for none); (compressed bytes, tar bytes)."""
    compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    tar_bytes = 0
    with os.fdopen(fd, "wb", buffering=0, closefd=False) as raw:
        # Leaving the block ends the frame (a flush(FLUSH_FRAME) first would add a second,
        # empty one).
        with compressor.stream_writer(raw, closefd=False, write_size=READ_CHUNK) as writer:
            for chunk in chunks:
                writer.write(chunk)
                tar_bytes += len(chunk)
        return raw.tell(), tar_bytes


def append_trailer(fd: int, info: ArchiveInfo) -> None:
    os.lseek(fd, info.zstd_bytes, os.SEEK_SET)
    data = info.trailer()
    while data:
        data = data[os.write(fd, data) :]


def read_info(fd: int, key: str | None = None) -> ArchiveInfo:
    """The trailer of the archive open at ``fd``, checked against the file's size (and
    ``key``, when given)."""
    size = os.fstat(fd).st_size
    if size < 16:
        raise CorruptArchive(f"{size} bytes: too short to be an archive")
    length, tag = struct.unpack("<I4s", os.pread(fd, 8, size - 8))
    if tag != _TAG or length > _MAX_TRAILER or length + 16 > size:
        raise CorruptArchive("no trailer (truncated, or not a dependency archive)")
    start = size - length - 16
    head = os.pread(fd, length + 8, start)
    magic, body_length = struct.unpack("<II", head[:8])
    if magic != _SKIPPABLE_MAGIC or body_length != length + 8:
        raise CorruptArchive("damaged trailer")
    try:
        fields = json.loads(head[8:])
        info = ArchiveInfo(**fields)
    except (ValueError, TypeError) as exc:
        raise CorruptArchive(f"unreadable trailer: {exc}") from None
    if info.format != FORMAT:
        raise CorruptArchive(f"archive format {info.format}, expected {FORMAT}")
    if info.zstd_bytes != start:
        raise CorruptArchive(f"size mismatch: trailer says {info.zstd_bytes}, file has {start}")
    if key is not None and info.key != key:
        raise CorruptArchive(f"archive of {info.key!r} stored as {key!r}")
    return info


def decompressed(fd: int, info: ArchiveInfo) -> Iterator[bytes]:
    """The tar stream of the archive at ``fd``. Raises CorruptArchive — at the latest
    once exhausted — unless the frame ended exactly where the trailer says, its checksum
    matched and it inflated to exactly ``info.tar_bytes``."""
    frame = zstandard.ZstdDecompressor().decompressobj()
    position = produced = 0
    while position < info.zstd_bytes:
        data = os.pread(fd, min(READ_CHUNK, info.zstd_bytes - position), position)
        if not data:
            raise CorruptArchive("the file ended early")
        position += len(data)
        try:
            chunk = frame.decompress(data)
        except zstandard.ZstdError as exc:
            raise CorruptArchive(f"zstd: {exc}") from None
        produced += len(chunk)
        if produced > info.tar_bytes:
            raise CorruptArchive("inflates to more than its trailer says")
        if frame.eof and (frame.unused_data or position < info.zstd_bytes):
            raise CorruptArchive("data after the end of the frame")
        if chunk:
            yield chunk
    if not frame.eof:
        raise CorruptArchive("the frame is truncated")
    if produced != info.tar_bytes:
        raise CorruptArchive(f"inflated to {produced} bytes, expected {info.tar_bytes}")


def new_info(
    key: str, sizes: tuple[int, int], entries: int, data_bytes: int, level: int
) -> ArchiveInfo:
    return ArchiveInfo(key, sizes[0], sizes[1], entries, data_bytes, level, time.time())
