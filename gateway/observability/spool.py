"""A local, append-only spool of lines for when Redis cannot take them.

Each process appends to a file of its own under ``{PREVIEW_STATE_DIR}/spool/``, holding
an exclusive ``flock`` on it while it lives; every append is fsync'd before it returns.
Replay reads files line by line, in order, hands them to a sink and removes them once
the sink took everything. A file whose lock can be taken belongs to a process that died:
any process replays it. A crash in the middle of a replay leaves the file, so its lines
are sent again: the sink must be idempotent (preview records are, by id).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
BATCH = 200

Sink = Callable[[Sequence[str]], Awaitable[object]]


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as reader:
        return reader.read().splitlines()


class Spool:
    def __init__(self, directory: str | Path, prefix: str = "records") -> None:
        self.dir = Path(directory)
        name = f"{prefix}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self.path = self.dir / name
        self.prefix = prefix
        self._fd: int | None = None
        self._lock = asyncio.Lock()  # appends and replays of this process take turns

    # --- writing (blocking parts run in a thread) -------------------------------------------

    def _open(self) -> int:
        if self._fd is None:
            # Records name users and projects: the spool is the gateway user's alone.
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if not _lock(fd):  # a fresh unique name: only we can hold it
                os.close(fd)
                raise OSError(f"spool file {self.path} is locked by another process")
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the new file's name survives a crash too
            finally:
                os.close(dir_fd)
            self._fd = fd
        return self._fd

    def _append(self, lines: Sequence[str]) -> None:
        fd = self._open()
        data = "".join(line.replace("\n", " ") + "\n" for line in lines).encode()
        os.write(fd, data)
        os.fsync(fd)

    async def append(self, lines: Sequence[str]) -> None:
        """Append lines durably (fsync'd when this returns). Raises OSError."""
        async with self._lock:
            await asyncio.to_thread(self._append, lines)

    # --- replaying ----------------------------------------------------------------------

    def files(self) -> list[Path]:
        """Spool files with something in them, oldest first (ours included)."""
        try:
            found = [p for p in self.dir.glob(f"{self.prefix}-*{SUFFIX}") if p.is_file()]
        except OSError:
            return []
        with_data = []
        for path in found:
            with contextlib.suppress(OSError):
                stat = path.stat()
                if stat.st_size > 0:
                    with_data.append((stat.st_mtime, path))
        return [p for _, p in sorted(with_data)]

    def pending(self) -> bool:
        return bool(self.files())

    async def replay(self, sink: Sink) -> int:
        """Send every replayable file's lines to `sink`, in order; returns how many lines
        were sent. Stops at the first sink error (raised), leaving what was not done."""
        sent = 0
        async with self._lock:
            for path in self.files():
                sent += await self._replay_file(path, sink)
        return sent

    async def _replay_file(self, path: Path, sink: Sink) -> int:
        own = path == self.path
        try:
            fd = self._fd if own and self._fd is not None else os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return 0  # another process finished it
        try:
            if not own and (not _lock(fd) or os.fstat(fd).st_nlink == 0):
                return 0  # its writer is alive, or another replayer already removed it
            lines = await asyncio.to_thread(_read_lines, path)
            complete = [line for line in lines if line.strip()]
            for start in range(0, len(complete), BATCH):
                await sink(complete[start : start + BATCH])
            if own:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            else:
                path.unlink(missing_ok=True)
            if complete:
                log.info("spool replayed lines=%d file=%s", len(complete), path.name)
            return len(complete)
        finally:
            if not own:
                os.close(fd)

    def close(self) -> None:
        """Release our file; an empty one is removed."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_size == 0:
                self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
