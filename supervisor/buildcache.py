"""Framework build caches kept like node_modules: for the same user's same project only.

Dev servers keep what they compiled (``.next/cache``, ``.next/dev/cache`` for Next 16;
Vite's pre-bundled dependencies in ``node_modules/.vite``; ``.svelte-kit``, ``.nuxt``,
``node_modules/.cache`` ...). A reset
empties the workspace, and a new container starts with none, so every start compiled
everything again. Now ``reset`` packs them onto the host cache volume (after every
process of the app user is gone) and the next ``prepare`` of the same owner — the
gateway's opaque key of one user's one project — restores them before the dev server
starts: in the same reserved container or in any other on the host.

User code wrote these files, so an archive is keyed by its owner and never restored for
anyone else. Both directions run ``tar`` as the app user: it reads only what that user
can read and writes only where it can write, so a symlink or hard link planted in a cache
gains nothing. Archives have the dependency archives' format (``depcache.archive``: one
checksummed zstd frame and a trailer) and share their volume and its bound (least
recently used out). A corrupt one is deleted and whatever it half-restored removed: the
dev server then builds from scratch, and the start succeeds as without a cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from supervisor import procs
from supervisor.context import Context
from supervisor.depcache import archive
from supervisor.depcache.archive import CorruptArchive
from supervisor.depcache.cache import for_config
from supervisor.depcache.cachevolume import CacheVolume
from supervisor.workspace import open_dir

log = logging.getLogger(__name__)

FORMAT = "preview-build-1"
MAX_BYTES = 1 << 30  # a bigger cache is not kept (it would crowd out dependency archives)
TIMEOUT = 60.0  # seconds one pack or restore may take
# The directories each framework writes, relative to the project root.
_VITE = ("node_modules/.vite",)
DIRS: dict[str, tuple[str, ...]] = {
    # Next 16 keeps its Turbopack cache under .next/dev (its dev output directory).
    "next": (".next/cache", ".next/dev/cache"),
    "nuxt": (".nuxt", "node_modules/.cache", *_VITE),
    "sveltekit": (".svelte-kit", *_VITE),
    "astro": (".astro", *_VITE),
    "angular": (".angular/cache",),
    "create-react-app": ("node_modules/.cache",),
}


# Before a reset stops the dev server, it may be writing its build cache. Webpack (Next.js
# 15) stores its cache on idle timers, 1 s after a large compile, and on one CPU that takes
# seconds; Next's own SIGTERM handling does not finish it, so a stop just then left a part
# of the pack, and the next start compiled most of the entry again. The stop waits until
# neither the caches nor the dev server's output moved for SETTLE_QUIET, at most SETTLE_MAX.
SETTLE_QUIET = 1.5
SETTLE_MAX = 6.0
SETTLE_ENTRIES = 5000  # files looked at per scan (a cache is a few packs or deps)


def dirs_for(framework: str | None) -> tuple[str, ...]:
    """The build caches of ``framework``; Vite's for any Vite-based one."""
    if not framework:
        return ()
    if framework in DIRS:
        return DIRS[framework]
    return _VITE if framework.startswith("vite") or framework in _VITE_BASED else ()


# Vite-based frameworks detect.py names without "vite" (the others are in DIRS).
_VITE_BASED = {"remix", "react-router", "solid-start"}


def cache_key(owner: str, framework: str) -> str:
    """The archive's key: its owner and framework, hashed (the volume's key syntax; the
    build cache is not tied to a Node major, frameworks check their caches themselves)."""
    digest = hashlib.sha256(f"{FORMAT}\0{owner}\0{framework}".encode()).hexdigest()
    return f"build-node0-{re.sub('[^a-z0-9]', '', framework) or 'x'}-{digest[:40]}"


@dataclass
class Outcome:
    state: str  # "packed", "restored", "none", "corrupt", "skipped: <why>"
    bytes: int = 0
    ms: int = 0


def _owner(ctx: Context) -> str | None:
    """The session's "{user's affinity key}\0{project}"; None without a user part (then
    nothing tells users apart, and nothing is kept)."""
    owner = ctx.session.modules_owner
    return owner if owner and not owner.startswith("\x00") else None


def _present(workspace: Path, rels: tuple[str, ...]) -> list[str]:
    """Those of ``rels`` that are real directories (no symlink on the way)."""
    try:
        root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    found = []
    try:
        for rel in rels:
            try:
                os.close(open_dir(root, rel.split("/"), create=False))
            except OSError:
                continue
            found.append(rel)
    finally:
        os.close(root)
    return found


def newest_write(workspace: Path, rels: tuple[str, ...]) -> float:
    """The latest modification time (epoch seconds) of the files and directories under
    those of ``rels`` that pack would pack (``_present``), links not followed, at most
    SETTLE_ENTRIES looked at; 0.0 when there are none."""
    newest, seen = 0.0, 0
    for rel in _present(workspace, rels):
        top = workspace / rel
        with contextlib.suppress(OSError):
            newest = max(newest, top.lstat().st_mtime)
        for _, dirs, files, dirfd in os.fwalk(top, follow_symlinks=False):
            for name in (*dirs, *files):
                seen += 1
                if seen > SETTLE_ENTRIES:
                    return newest
                with contextlib.suppress(OSError):
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    newest = max(newest, st.st_mtime)
    return newest


async def settle(ctx: Context, framework: str | None, output_at: float | None) -> float:
    """Before a reset stops a running dev server: wait until its build caches and its
    output (``output_at``: the monotonic time of its last line) have been quiet for
    SETTLE_QUIET, at most SETTLE_MAX; the seconds waited. Nothing to wait for when the
    framework keeps no build cache or the session has no owner (nothing is packed)."""
    rels = dirs_for(framework)
    if not rels or not _owner(ctx):
        return 0.0
    began = time.monotonic()
    while (waited := time.monotonic() - began) < SETTLE_MAX:
        wrote = await asyncio.to_thread(newest_write, ctx.config.workspace, rels)
        quiet = time.time() - wrote
        if output_at is not None:
            quiet = min(quiet, time.monotonic() - output_at)
        if quiet >= SETTLE_QUIET:
            return waited
        await asyncio.sleep(min(SETTLE_QUIET - quiet + 0.05, SETTLE_MAX - waited))
    return SETTLE_MAX


def _run_as_app(
    ctx: Context, argv: list[str], stdin: int, stdout: int, stderr: int
) -> subprocess.Popen[bytes]:
    env = procs.child_environment(ctx.base_env, ctx.user, {})
    return subprocess.Popen(
        argv,
        cwd=ctx.config.workspace,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        umask=0o022,
        **ctx.user.spawn_kwargs(),
    )


def _killer(process: subprocess.Popen[bytes]) -> threading.Timer:
    """Kill ``process`` after TIMEOUT: the thread that reads or feeds it then ends."""
    timer = threading.Timer(TIMEOUT, process.kill)
    timer.daemon = True
    timer.start()
    return timer


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(archive.READ_CHUNK):
        yield chunk


def _pack(ctx: Context, present: list[str], key: str, volume: CacheVolume) -> int:
    """tar (as app) → zstd → a temporary file → renamed into place; compressed bytes."""
    level = ctx.config.cache_zstd_level
    process = _run_as_app(
        ctx,
        ["tar", "-cf", "-", "--one-file-system", "--", *present],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    timer = _killer(process)
    temp = volume.temp_path(key)
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        assert process.stdout is not None
        sizes = archive.compress(fd, _chunks(process.stdout), level, 0)
        code = process.wait()
        if code != 0:
            raise OSError(f"tar exited {code}" if code > 0 else "took too long")
        if sizes[1] > MAX_BYTES:
            raise OSError(f"over {MAX_BYTES >> 20} MiB")
        info = archive.new_info(key, sizes, 0, sizes[1], level)
        archive.append_trailer(fd, info)
        os.fsync(fd)
        path = volume.archive_path(key)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(temp, path)
        return sizes[0]
    except BaseException:
        process.kill()
        process.wait()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    finally:
        timer.cancel()
        os.close(fd)


def _restore(ctx: Context, key: str, path: Path) -> int:
    """The archive at ``path`` → zstd (checked) → tar (as app) in the workspace."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = archive.read_info(fd, key)
        process = _run_as_app(
            ctx,
            ["tar", "-xf", "-", "--no-same-owner", "--"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        timer = _killer(process)
        try:
            assert process.stdin is not None and process.stderr is not None
            try:
                for chunk in archive.decompressed(fd, info):
                    process.stdin.write(chunk)
                process.stdin.close()
            except BrokenPipeError:
                pass
            said = process.stderr.read(4000).decode(errors="replace").strip()
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            timer.cancel()
        if code != 0:
            raise CorruptArchive(f"tar exited {code}: {said[-300:]}")
        return info.zstd_bytes
    finally:
        os.close(fd)


async def pack(ctx: Context, framework: str | None) -> Outcome:
    """At reset, with no app process left: the session's build caches to the volume."""
    owner, rels = _owner(ctx), dirs_for(framework)
    volume = for_config(ctx.config).volume()
    if not owner or not framework or not rels or volume is None:
        return Outcome("none")
    present = await asyncio.to_thread(_present, ctx.config.workspace, rels)
    if not present:
        return Outcome("none")
    started = time.monotonic()
    try:
        size = await asyncio.to_thread(_pack, ctx, present, cache_key(owner, framework), volume)
    except OSError as exc:
        log.info("build cache not packed: %s", exc)
        return Outcome(f"skipped: {exc}")
    return Outcome("packed", size, int((time.monotonic() - started) * 1000))


async def restore(ctx: Context, framework: str | None) -> Outcome:
    """Before the dev server starts: the owner's build caches, if the volume has them and
    the workspace lacks some (those in a kept node_modules are from the same session as
    the archive)."""
    owner, rels = _owner(ctx), dirs_for(framework)
    volume = for_config(ctx.config).volume()
    if not owner or not framework or not rels or volume is None:
        return Outcome("none")
    workspace = ctx.config.workspace
    if len(await asyncio.to_thread(_present, workspace, rels)) == len(rels):
        return Outcome("none")  # all there already
    key = cache_key(owner, framework)
    path = volume.archive_path(key)
    if not path.is_file():
        return Outcome("none")
    started = time.monotonic()
    try:
        size = await asyncio.to_thread(_restore, ctx, key, path)
    except (CorruptArchive, OSError) as exc:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        await asyncio.to_thread(_remove, workspace, rels)
        ctx.logs.append(f"[supervisor] build cache dropped (a fresh build follows): {exc}")
        log.warning("build cache %s dropped: %s", path.name, exc)
        return Outcome("corrupt")
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: evicted last
    ctx.disk_dirty = True
    return Outcome("restored", size, int((time.monotonic() - started) * 1000))


def _remove(workspace: Path, rels: tuple[str, ...]) -> None:
    """Remove what a failed restore left, never following a symlink."""
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for rel in rels:
            *parents, name = rel.split("/")
            try:
                parent = open_dir(root, parents, create=False)
            except OSError:
                continue
            try:
                shutil.rmtree(name, dir_fd=parent)
            except OSError:
                pass
            finally:
                os.close(parent)
    finally:
        os.close(root)
