"""Putting a project into the workspace: from an archive, a bundled template, a set of
files, or a shallow git fetch. Every write runs as ``app`` (``fsworker``, ``git``)."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import zstandard

from shared.redact import scrub, url_secrets
from supervisor import procs
from supervisor.context import Context
from supervisor.workspace import MAX_BYTES, UnsafePath, normalize

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_GIT_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_GIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
GIT_TIMEOUT = 300.0
WRITE_TIMEOUT = 300.0


class SourceError(Exception):
    """The project could not be put into the workspace; the message says why."""


def template_archive(templates_dir: Path, name: str) -> bytes:
    """The bundled template ``name`` as an uncompressed tar."""
    if not _TEMPLATE_NAME.match(name) or not (templates_dir / name).is_dir():
        known = sorted(p.name for p in templates_dir.iterdir() if p.is_dir())
        raise SourceError(f"unknown template {name!r} (known: {', '.join(known) or 'none'})")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        root = templates_dir / name
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            info = archive.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_file():
                with path.open("rb") as f:
                    archive.addfile(info, f)
            else:
                archive.addfile(info)
    return buffer.getvalue()


def files_archive(files: Mapping[str, bytes]) -> bytes:
    """``{path: content}`` as a tar; UnsafePath for a path outside the workspace."""
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(normalize(name))
            info.size, info.mode, info.mtime = len(content), 0o644, now
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _decompressed(archive: bytes) -> Iterator[bytes]:
    """The archive as the worker reads it: zstd undone here (the worker has only the
    standard library), in small steps so that a decompression bomb is caught early, and
    refusing a truncated stream (the worker must never unpack half an archive)."""
    if not archive.startswith(ZSTD_MAGIC):
        yield archive
        return
    total, pos = 0, 0
    # 1 KiB of input inflates to 32 MiB at most (zstd's RLE blocks): memory stays bounded.
    step = 1024
    frame = zstandard.ZstdDecompressor().decompressobj()
    try:
        while pos < len(archive):
            chunk = frame.decompress(archive[pos : pos + step])
            pos = min(pos + step, len(archive))
            total += len(chunk)
            if total > MAX_BYTES:
                raise UnsafePath(f"archive holds more than {MAX_BYTES >> 20} MiB")
            if chunk:
                yield chunk
            if frame.eof and (frame.unused_data or pos < len(archive)):
                pos -= len(frame.unused_data)  # concatenated frames
                frame = zstandard.ZstdDecompressor().decompressobj()
    except zstandard.ZstdError as exc:
        raise UnsafePath(f"not a valid zstd archive: {exc}") from None
    if not frame.eof:
        raise UnsafePath("the zstd archive is truncated")


async def unpack(ctx: Context, archive: bytes, mode: str = "merge") -> dict[str, object]:
    """Write ``archive`` (tar, tar.gz or tar.zst) into the workspace as ``app``; its
    summary, or UnsafePath (refused: nothing was written) / SourceError."""
    # The worker imports this package from where we have it, whatever the interpreter.
    path = os.pathsep.join(p for p in (str(_PACKAGE_PARENT), ctx.base_env.get("PYTHONPATH")) if p)
    finished = await procs.run_to_end(
        [
            ctx.config.worker_python,
            "-P",
            "-m",
            "supervisor.fsworker",
            str(ctx.config.workspace),
            mode,
        ],
        user=ctx.user,
        env=procs.child_environment(ctx.base_env, ctx.user, {"PYTHONPATH": path}),
        cwd=Path("/"),
        on_line=lambda line: None,
        timeout=WRITE_TIMEOUT,
        stdin_data=_decompressed(archive),
    )
    ctx.disk_dirty = True
    for line in reversed(finished.lines):
        if line.startswith("{"):
            try:
                summary = json.loads(line)
            except ValueError:
                break
            if summary.pop("ok", False):
                return dict(summary)
            if summary.get("refused"):
                raise UnsafePath(str(summary.get("error")))
            raise SourceError(f"writing files failed: {summary.get('error')}")
    tail = " / ".join(finished.lines[-3:]) or "no output"
    raise SourceError(f"writing files failed ({procs_exit(finished.returncode)}): {tail}")


def procs_exit(returncode: int | None) -> str:
    return "timed out" if returncode is None else f"exit {returncode}"


async def git_checkout(ctx: Context, url: str, ref: str | None) -> None:
    """Shallow fetch of ``ref`` (default: the remote's HEAD) into the workspace, like
    ``git clone --depth 1 --branch ref`` but into a directory that may already hold a
    kept node_modules."""
    if not _GIT_URL.match(url):
        raise SourceError("git url must start with https://, http:// or file://")
    if ref is not None and (not _GIT_REF.match(ref) or ".." in ref):
        raise SourceError(f"invalid git ref {ref!r}")
    env = procs.child_environment(
        ctx.base_env,
        ctx.user,
        {
            "GIT_TERMINAL_PROMPT": "0",
            # No ext:: or ssh transports, for the repository or its submodules.
            "GIT_ALLOW_PROTOCOL": "http:https:file",
            "GIT_CONFIG_NOSYSTEM": "1",
        },
    )
    workspace = ctx.config.workspace
    steps = [
        ["git", "init", "-q"],
        ["git", "fetch", "--depth", "1", "--no-tags", "--", url, ref or "HEAD"],
        ["git", "checkout", "-q", "-f", "FETCH_HEAD"],
        # It names the URL fetched from; git leaves no other copy of it in the workspace.
        ["rm", "-f", ".git/FETCH_HEAD"],
    ]
    # The URL's credentials are the user's: git's output (the log, a failure's reason)
    # must not carry them, in whatever form git echoes the URL.
    secrets = url_secrets(url)
    for argv in steps:
        finished = await procs.run_to_end(
            argv,
            user=ctx.user,
            env=env,
            cwd=workspace,
            on_line=lambda line: ctx.logs.append(scrub(line, secrets)),
            timeout=GIT_TIMEOUT,
        )
        if finished.returncode != 0:
            lines = [scrub(line, secrets) for line in finished.lines[-3:]]
            tail = " / ".join(line for line in lines if line.strip())
            raise SourceError(
                f"{' '.join(argv[:2])} failed ({procs_exit(finished.returncode)}): {tail}"
            )
    ctx.disk_dirty = True
