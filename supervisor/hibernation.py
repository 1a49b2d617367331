"""Hibernation: a preview's workspace packed to this host's cache volume, and restored
from it into whichever container of this host resumes the preview.

    /cache/hibernated/              root 0700
    /cache/hibernated/<name>.tar.zst    the workspace without node_modules and build caches
    /cache/hibernated/<name>.json       {owner, project_id, env, sha256, bytes, created}

``name`` is ``<owner>-<session id>`` (owner: the gateway's opaque key of one user's one
project), chosen by the gateway, never by user code, which cannot read or write this
directory at all. A restore checks the owner the gateway names against the one recorded at
packing, and the archive's sha256 against the gateway's record: one user's workspace is
never restored into another's preview, and a damaged archive is refused before anything
is written. The files are read by ``tar`` running as ``app`` (so a symlink planted in the
workspace reaches nothing of root's) and unpacked by the usual checked path
(``sources.unpack``). Archives older than the resume window are removed at each packing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import zstandard

from supervisor.context import Context
from supervisor.depcache.cachevolume import _private_dir

NAME = re.compile(r"^[0-9a-f]{32}-[a-z0-9]{1,64}$")
SUFFIX = ".tar.zst"
# Rebuilt from the lockfile (dependency cache) or by the dev server on its next start.
EXCLUDED = ("node_modules", ".next", ".vite", ".cache", ".turbo", ".parcel-cache", ".nuxt")
CHUNK = 1 << 20
LEVEL = 3


class HibernationError(Exception):
    """Packing or restoring failed; the message says why in the user's terms."""


def directory(ctx: Context) -> Path:
    root = ctx.config.cache_dir
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _private_dir(fd, "hibernated", os.geteuid())
    finally:
        os.close(fd)
    return root / "hibernated"


def paths(ctx: Context, name: str) -> tuple[Path, Path]:
    if not NAME.match(name):
        raise HibernationError(f"not a hibernation name: {name!r}")
    where = directory(ctx)
    return where / (name + SUFFIX), where / (name + ".json")


async def pack(ctx: Context, name: str, owner: str, max_age: float) -> dict[str, Any]:
    """Pack the workspace to ``name``; its sha256, size and file count."""
    archive, meta = paths(ctx, name)
    temp = archive.with_suffix(f".{os.getpid()}.tmp")
    # The top-level names (not "."): the workspace itself is not an entry the checked
    # unpacking accepts. An empty workspace is an empty archive (-T /dev/null).
    names = sorted(set(os.listdir(ctx.config.workspace)) - set(EXCLUDED))
    argv = ["tar", "-C", str(ctx.config.workspace), "--numeric-owner", "-cf", "-"]
    argv += ["--exclude=node_modules", "-T", "/dev/null", "--", *names]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **ctx.user.spawn_kwargs(),
    )
    assert process.stdout is not None and process.stderr is not None
    digest = hashlib.sha256()
    compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True).compressobj()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:

            def write(data: bytes) -> None:
                if data:
                    digest.update(data)
                    out.write(data)

            while chunk := await process.stdout.read(CHUNK):
                write(compressor.compress(chunk))
            write(compressor.flush())
            out.flush()
            os.fsync(out.fileno())
        errors = (await process.stderr.read()).decode(errors="replace").strip()
        if await process.wait() not in (0, 1):  # 1: a file changed while read
            raise HibernationError(f"packing the workspace failed: {errors[-300:]}")
        sha256, size = digest.hexdigest(), temp.stat().st_size
        record = {
            "owner": owner,
            "project_id": ctx.session.project_id,
            "env": ctx.session.user_env,
            "sha256": sha256,
            "bytes": size,
            "created": time.time(),
        }
        meta_temp = meta.with_suffix(".json.tmp")
        fd = os.open(meta_temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(temp, archive)
        os.replace(meta_temp, meta)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    await asyncio.to_thread(prune, archive.parent, max_age)
    return {"archive": name, "sha256": sha256, "bytes": size}


def load(ctx: Context, name: str, owner: str, sha256: str) -> tuple[bytes, dict[str, str]]:
    """The archive's bytes and the environment recorded with it; HibernationError when it
    is gone, another owner's, or damaged."""
    archive, meta = paths(ctx, name)
    try:
        record = json.loads(meta.read_text())
        data = archive.read_bytes()
    except FileNotFoundError:
        raise HibernationError(
            "this preview's saved workspace is no longer on its host (the host was replaced "
            "or the archive expired): start the preview again"
        ) from None
    except (OSError, ValueError) as exc:
        raise HibernationError(f"this preview's saved workspace is unreadable: {exc}") from None
    if not isinstance(record, dict) or record.get("owner") != owner:
        raise HibernationError("refused: this saved workspace belongs to another preview")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise HibernationError(
            "this preview's saved workspace is damaged (checksum mismatch): start the preview again"
        )
    os.utime(archive)
    os.utime(meta)
    env = record.get("env")
    return data, {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}


def prune(where: Path, max_age: float) -> int:
    """Remove archives (and their records) older than ``max_age`` seconds."""
    removed, now = 0, time.time()
    for entry in os.scandir(where):
        with contextlib.suppress(FileNotFoundError):
            if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                os.unlink(entry.path)
                removed += 1
    return removed
