"""The host dependency cache, as one supervisor uses it (``DependencyCache`` of
``dependencies``):

- ``key``: what the project's node_modules would be stored under (``cachekey``);
- ``restore``: the archive for that key, unpacked straight into the workspace
  (``restore``); a corrupt one is deleted and reported as a miss;
- ``before_install`` / ``after_install``: a fresh install runs with a new npm cache seeded
  from the host's tarballs, after every leftover process of the app user has been
  stopped; once it succeeds the tree is snapshotted and packed in the background
  (``pack``), one packer per key on the host, then the volume is trimmed to its bound.

Which archives may be shared is decided in ``cachekey``; the snapshot rules in ``pack``
keep user code from slipping anything into one. One more: an install whose own scripts
ran (scope ``workspace``) is packed only if no user code ever ran in this container
before it (user code could have left something in $HOME for those scripts to pick up).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import procs
from supervisor.config import SupervisorConfig
from supervisor.context import Context
from supervisor.depcache import archive
from supervisor.depcache.cachekey import SHARED, CacheKey, KeyUnavailable, Toolchains, key_for
from supervisor.depcache.cachevolume import CacheVolume
from supervisor.depcache.npmstore import NpmStore, Scratch, locked_tarballs
from supervisor.depcache.pack import NotCacheable, PackCancelled, Packer, Snapshot, take_snapshot
from supervisor.depcache.restore import (
    DIR_FLAGS,
    WRITERS,
    RestoreCancelled,
    Restored,
    restore_tree,
    staged,
)
from supervisor.depcache.tarstream import BadArchive
from supervisor.depcache.threads import cancellable, in_thread
from supervisor.depcache.trees import CloneUnsupported, clone_tree
from supervisor.detect import Project
from supervisor.events import Progress

log = logging.getLogger(__name__)

PACK_LOCK_WAIT = 900.0  # another container packing the same key: wait, then find it there
TAINT_MARKER = "user-code-ran"
# A clone failing so says the tree itself is damaged (a part gone or unreadable): it goes.
# Others (a full workspace, too many open files) are not the tree's fault.
_TREE_DAMAGED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EIO, errno.EUCLEAN}


@dataclass
class InstallPlan:
    """How a fresh install runs, and what to do once it is over."""

    env: dict[str, str]
    key: CacheKey | None = None
    pristine: bool = False  # no user code had run in this container before
    scratch: Scratch | None = None
    tarballs: set[str] = field(default_factory=set)


class ArchiveCache:
    """The cache volume as seen by one supervisor; ``for_config`` gives the one instance."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.toolchains = Toolchains()
        self.tasks: set[asyncio.Task[Any]] = set()
        self._stopping = threading.Event()
        self._volume: CacheVolume | None = None
        self._unusable: str | None = None if config.cache_max_bytes > 0 else "turned off"
        # Whether node_modules trees can be cloned here (``trees``): None until tried.
        self.clones: bool | None = None

    # --- the volume -----------------------------------------------------------------------

    def volume(self) -> CacheVolume | None:
        if self._volume is None and self._unusable is None:
            try:
                self._volume = CacheVolume.open(self.config.cache_dir)
            except OSError as exc:
                self._unusable = str(exc)
                log.warning("dependency cache off: %s", exc)
        return self._volume

    def _marker(self) -> Path:
        return self.config.state_dir / TAINT_MARKER

    def user_code_runs(self) -> None:
        """Record that user code runs in this container (from now on it is not pristine)."""
        with contextlib.suppress(OSError):
            self._marker().touch(mode=0o600)

    # --- tiers ----------------------------------------------------------------------------

    async def key(
        self,
        ctx: Context,
        project: Project,
        package_json: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> CacheKey | None:
        if self.volume() is None:
            return None
        try:
            return await key_for(
                self.toolchains,
                ctx.user,
                ctx.config.workspace,
                project,
                package_json,
                env,
                ctx.base_env,
            )
        except KeyUnavailable as exc:
            ctx.logs.append(f"[supervisor] dependency cache not used: {exc}")
            log.info("no cache key: %s", exc)
            return None

    async def restore(
        self, ctx: Context, key: CacheKey, progress: Progress, report: dict[str, Any]
    ) -> bool:
        """Put the node_modules of ``key`` into the workspace: cloned from its tree where
        the filesystem can (``trees``), else unpacked from its archive (then a tree is
        kept for the next restore). False when there is neither (or the archive was bad:
        then it is gone and the workspace is as it was)."""
        volume = self.volume()
        if volume is None:
            return False
        if self.clones is not False and await self._clone(ctx, volume, key, progress, report):
            return True
        path = volume.archive_path(key.value)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        started = time.monotonic()
        try:
            try:
                info = archive.read_info(fd, key.value)
            except archive.CorruptArchive as exc:
                await self._discard(ctx, volume, key, fd, str(exc))
                return False
            await progress.report(
                "dependencies",
                5,
                f"restoring node_modules from the host cache ({info.data_bytes >> 20} MiB)",
                force=True,
            )
            stop = threading.Event()
            owner = _owner(ctx.user)
            keep = _TreeKeeper(self, volume, key, stop) if self.clones is not False else None
            try:
                restored = await cancellable(
                    stop,
                    in_thread(
                        restore_tree,
                        archive.decompressed(fd, info),
                        ctx.config.workspace,
                        owner,
                        stop.is_set,
                        WRITERS,
                        keep,
                    ),
                )
            except (archive.CorruptArchive, BadArchive) as exc:
                await self._discard(ctx, volume, key, fd, str(exc))
                return False
            except RestoreCancelled:
                raise asyncio.CancelledError from None
            except OSError as exc:
                ctx.logs.append(f"[supervisor] restoring node_modules failed: {exc}")
                log.warning("restore of %s failed: %s", key.value, exc)
                return False
            with contextlib.suppress(OSError):
                os.utime(fd)  # used: last to be evicted
            report["archive_bytes"] = info.zstd_bytes
            self._restored(ctx, key, restored, started, "restored", report)
            if keep is not None and keep.stored:  # the volume may be over its bound now
                self._background(self._trim(volume), "trim the cache")
            return True
        finally:
            os.close(fd)

    async def _clone(
        self,
        ctx: Context,
        volume: CacheVolume,
        key: CacheKey,
        progress: Progress,
        report: dict[str, Any],
    ) -> bool:
        """Clone the tree of ``key`` into the workspace; False when there is none or it
        cannot be cloned (the archive is used then)."""
        try:
            fd = os.open(volume.tree_path(key.value), DIR_FLAGS)
        except FileNotFoundError:
            return False
        started = time.monotonic()
        try:
            await progress.report(
                "dependencies", 5, "cloning node_modules from the host cache", force=True
            )
            stop = threading.Event()
            owner = _owner(ctx.user)

            def fill(root: int) -> tuple[Restored, int]:
                return clone_tree(fd, root, owner, stop.is_set)

            try:
                restored = await cancellable(
                    stop, in_thread(staged, ctx.config.workspace, owner, fill)
                )
            except RestoreCancelled:
                raise asyncio.CancelledError from None
            except CloneUnsupported as exc:
                self.clones = False
                log.info("node_modules trees off: %s", exc)
                return False
            except OSError as exc:
                log.warning("clone of %s failed (the archive is used): %s", key.value, exc)
                if exc.errno in _TREE_DAMAGED:  # else the workspace's or the process's
                    with contextlib.suppress(OSError):
                        volume.drop_tree(key.value)
                return False
            with contextlib.suppress(OSError):
                os.utime(fd)  # used: last to be evicted
            self._restored(ctx, key, restored, started, "cloned", report)
            return True
        finally:
            os.close(fd)

    def _restored(
        self,
        ctx: Context,
        key: CacheKey,
        restored: Restored,
        started: float,
        how: str,
        report: dict[str, Any],
    ) -> None:
        ctx.disk_dirty = True
        seconds = time.monotonic() - started
        report.update(restore_ms=int(seconds * 1000), files=restored.files, restored_by=how)
        message = (
            f"[supervisor] node_modules {how} from the host cache: {restored.files} "
            f"files, {restored.bytes >> 20} MiB in {seconds:.2f}s"
        )
        ctx.logs.append(message)
        log.info("%s (key %s)", message.removeprefix("[supervisor] "), key.value)
        if restored.old:
            old = ctx.config.workspace / restored.old
            self._background(in_thread(shutil.rmtree, old, True), "remove old node_modules")

    async def _discard(
        self, ctx: Context, volume: CacheVolume, key: CacheKey, fd: int, why: str
    ) -> None:
        """Delete the bad archive open at ``fd`` (only if it is still the one stored)."""
        path = volume.archive_path(key.value)
        async with volume.lock(volume.key_lock_name(key.value), 30) as held:
            with contextlib.suppress(FileNotFoundError):
                if held and os.stat(path).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
        ctx.logs.append(f"[supervisor] the cached node_modules archive was bad ({why}): removed")
        log.warning("corrupt archive %s removed: %s", key.value, why)

    async def before_install(
        self, ctx: Context, key: CacheKey | None, project: Project, env: Mapping[str, str]
    ) -> InstallPlan:
        plan = InstallPlan(dict(env), key)
        volume = self.volume()
        if key is None or volume is None:
            return plan
        plan.pristine = not self._marker().exists()
        self.user_code_runs()  # install scripts are user code too
        async with ctx.workspace_lock:
            await self._stop_user_processes(ctx)
        if project.package_manager == "npm" and project.lockfile:
            plan.tarballs = await asyncio.to_thread(
                _tarballs, ctx.config.workspace / project.lockfile
            )
        plan.scratch = await asyncio.to_thread(Scratch.create)
        store = NpmStore(volume.npm)
        owner = _owner(ctx.user)
        try:
            count, size = await asyncio.to_thread(store.seed, plan.tarballs, plan.scratch)
            await asyncio.to_thread(plan.scratch.hand_over, owner)
        except BaseException:
            plan.scratch.remove()
            raise
        plan.env.update(plan.scratch.environment())
        if count:
            ctx.logs.append(f"[supervisor] {count} packages ({size >> 20} MiB) from the host cache")
        return plan

    async def after_install(self, ctx: Context, plan: InstallPlan, ok: bool) -> str:
        """Once the install is over: what happens to its result (for the report)."""
        key, volume = plan.key, self.volume()
        snapshot: Snapshot | None = None
        if not ok or key is None or volume is None:
            status = "not packed"
        elif key.scope != SHARED and not plan.pristine:
            status = "not packed: install scripts ran in a container that ran user code before"
        else:
            try:
                async with ctx.workspace_lock:
                    if not await self._stop_user_processes(ctx):
                        raise NotCacheable("processes of the app user would not stop")
                    snapshot = await asyncio.to_thread(take_snapshot, ctx.config.workspace)
                status = "packing"
            except (NotCacheable, OSError) as exc:
                status = f"not packed: {exc}"
        if not status.startswith("packing"):
            log.info("%s", status)
        self._background(self._finish(ctx, plan, snapshot), f"pack {key.value if key else ''}")
        return status

    # --- background work ------------------------------------------------------------------

    async def _finish(self, ctx: Context, plan: InstallPlan, snapshot: Snapshot | None) -> None:
        volume = self.volume()
        try:
            if snapshot is not None and plan.key is not None and volume is not None:
                await self._pack(ctx, volume, plan.key, snapshot)
            if plan.scratch is not None and volume is not None and plan.tarballs:
                count, size = await asyncio.to_thread(
                    NpmStore(volume.npm).harvest, plan.tarballs, plan.scratch, ctx.user.uid
                )
                if count:
                    log.info("stored %d npm tarballs (%d MiB) on the host", count, size >> 20)
            if volume is not None:
                await self._trim(volume)
        finally:
            if plan.scratch is not None:
                await asyncio.to_thread(plan.scratch.remove)

    async def _trim(self, volume: CacheVolume) -> None:
        """Bring the volume under its bound (unless another container is at it)."""
        async with volume.lock("evict", 0) as held:
            if held:
                usage = await asyncio.to_thread(volume.evict, self.config.cache_max_bytes)
                if usage.removed:
                    log.info(
                        "cache trimmed: %d entries (%d MiB) removed, %d MiB kept",
                        usage.removed,
                        usage.freed >> 20,
                        usage.bytes >> 20,
                    )

    async def _pack(
        self, ctx: Context, volume: CacheVolume, key: CacheKey, snapshot: Snapshot
    ) -> None:
        final = volume.archive_path(key.value)
        async with volume.lock(volume.key_lock_name(key.value), PACK_LOCK_WAIT) as held:
            if final.exists():
                log.info("pack of %s skipped: already in the cache", key.value)
                return
            if not held:
                log.warning("pack of %s skipped: its lock was held too long", key.value)
                return
            started = time.monotonic()
            stop = threading.Event()
            try:
                info = await cancellable(
                    stop, in_thread(self._write, ctx, key, snapshot, final, stop, nice=10)
                )
            except (NotCacheable, PackCancelled, OSError) as exc:
                log.info("node_modules of %s not packed: %s", key.value, exc or "cancelled")
                return
        log.info(
            "packed %s: %d entries, %d MiB -> %d MiB in %.1fs (scope %s)",
            key.value,
            info.entries,
            info.tar_bytes >> 20,
            info.zstd_bytes >> 20,
            time.monotonic() - started,
            key.scope,
        )

    def _write(
        self, ctx: Context, key: CacheKey, snapshot: Snapshot, final: Path, stop: threading.Event
    ) -> archive.ArchiveInfo:
        """Pack into a temporary file of the volume, then rename it into place (readers
        never see half an archive)."""
        volume = self._volume
        assert volume is not None
        config = self.config
        temp = volume.temp_path(key.value)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            packer = Packer(
                ctx.config.workspace,
                snapshot,
                ctx.user.uid,
                config.cache_max_bytes,
                lambda: stop.is_set() or self._stopping.is_set(),
            )
            sizes = archive.compress(
                fd, packer.chunks(), config.cache_zstd_level, config.cache_zstd_threads
            )
            info = archive.new_info(
                key.value, sizes, packer.entries, packer.data_bytes, config.cache_zstd_level
            )
            if info.zstd_bytes > config.cache_max_bytes:
                raise NotCacheable("the archive is larger than the whole cache")
            archive.append_trailer(fd, info)
            os.fsync(fd)
            os.rename(temp, final)
            return info
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        finally:
            os.close(fd)

    async def _stop_user_processes(self, ctx: Context) -> bool:
        """Kill what the app user left running (a daemon of an earlier install or dev
        server could change node_modules behind our back); True when none is left."""
        uid = ctx.user.uid
        if uid is None:
            return True
        await procs.kill_user_processes(uid)
        return not procs.pids_of_user(uid)

    def _background(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.create_task(work, name=what)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Stop background packs (they leave no temporary file behind) and wait for them."""
        self._stopping.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _TreeKeeper:
    """Stores the tree of a restore that checked out (called in the restoring thread,
    ``restore.staged``'s ``keep``); ``stored`` once it did."""

    def __init__(
        self, cache: ArchiveCache, volume: CacheVolume, key: CacheKey, stop: threading.Event
    ) -> None:
        self.cache, self.volume, self.key, self.stop = cache, volume, key, stop
        self.stored = False

    def __call__(self, root: int, restored: Restored) -> None:
        try:
            size = self.volume.store_tree(self.key.value, root, restored, self.stop.is_set)
        except CloneUnsupported as exc:
            self.cache.clones = False
            log.info("node_modules trees off: %s", exc)
        except OSError as exc:
            log.warning("tree of %s not stored: %s", self.key.value, exc)
        else:
            if size is not None:
                self.stored = True
                log.info("stored the tree of %s (%d MiB)", self.key.value, size >> 20)


def _owner(user: procs.AppUser) -> tuple[int, int] | None:
    if user.uid is None or user.gid is None:
        return None
    return user.uid, user.gid


def _tarballs(lockfile: Path) -> set[str]:
    try:
        return locked_tarballs(json.loads(lockfile.read_bytes()))
    except (OSError, ValueError):
        return set()


_instances: dict[Path, ArchiveCache] = {}


def for_config(config: SupervisorConfig) -> ArchiveCache:
    """The supervisor's one ArchiveCache (the process-wide registry stands in for a field
    of ``Context``, which another change owns)."""
    cache = _instances.get(config.cache_dir)
    if cache is None:
        cache = _instances[config.cache_dir] = ArchiveCache(config)
    return cache
