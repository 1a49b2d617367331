"""Unpack an archive into the workspace; run as ``app`` by the supervisor.

    python -P -m supervisor.fsworker ROOT merge|replace

reads a tar (optionally gzip-compressed; the supervisor decompresses zstd, so that this
needs nothing beyond the standard library) on stdin, checks every entry before writing
any (see ``workspace``), and prints one JSON line: ``{"ok": true, "files": n, "bytes":
n}`` or ``{"ok": false, "refused": bool, "error": "..."}`` (exit status 2). Running as ``app``
keeps a race with user code (a directory swapped for a symlink mid-way) from reaching
anything ``app`` could not write anyway.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import tempfile
from typing import IO

from supervisor import workspace

SPOOL_IN_MEMORY = 64 << 20


def _spool(source: IO[bytes]) -> IO[bytes]:
    """A seekable copy of ``source`` (checking every entry first needs two passes)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    total = 0
    while chunk := source.read(1 << 20):
        total += len(chunk)
        if total > workspace.MAX_BYTES + (64 << 20):
            raise workspace.UnsafePath("archive is too large")
        spool.write(chunk)
    spool.seek(0)
    return spool


def unpack(root: str, mode: str, source: IO[bytes]) -> dict[str, object]:
    spool = _spool(source)
    try:
        archive = tarfile.open(fileobj=spool, mode="r:*")
    except tarfile.TarError as exc:
        raise workspace.UnsafePath(f"not a tar archive: {exc}") from None
    with archive:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries = workspace.check_archive(archive.getmembers(), root_fd, mode == "replace")
            if mode == "replace":
                workspace.clear(root_fd, keep=[workspace.KEEP_ON_REPLACE])
            size = 0
            for entry in entries:
                data = archive.extractfile(entry.member) if entry.kind == "file" else None
                workspace.write_entry(root_fd, entry, data)
                size += entry.member.size if entry.kind == "file" else 0
        finally:
            os.close(root_fd)
    return {"ok": True, "files": sum(e.kind != "dir" for e in entries), "bytes": size}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("merge", "replace"):
        print(json.dumps({"ok": False, "error": "usage: fsworker ROOT merge|replace"}))
        return 2
    os.umask(0o022)
    try:
        result = unpack(argv[0], argv[1], sys.stdin.buffer)
    except (workspace.UnsafePath, tarfile.TarError, EOFError) as exc:
        print(json.dumps({"ok": False, "refused": True, "error": str(exc)}))
        return 2
    except Exception as exc:  # a full disk and the like: still one JSON line
        print(json.dumps({"ok": False, "refused": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
