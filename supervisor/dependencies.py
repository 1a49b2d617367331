"""Dependencies: keep, restore or install ``node_modules`` for the project's lockfile.

``ensure_dependencies`` tries the tiers in order and answers which one did it:

- ``skipped``: node_modules is already present for the same lockfile hash (a container
  kept from the same project), or there is nothing to install;
- ``restored``: unpacked from the host cache in /cache (``DependencyCache``, by default
  ``depcache.ArchiveCache``; a corrupt archive is deleted and counts as a miss);
- ``installed``: the package manager ran (as ``app``, with our credentials scrubbed);
  the cache then packs the result in the background for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from supervisor import failures, procs
from supervisor.context import Context
from supervisor.depcache.cache import InstallPlan
from supervisor.depcache.cachekey import CacheKey
from supervisor.detect import Project
from supervisor.events import Progress

Outcome = Literal["restored", "installed", "skipped"]


class InstallError(Exception):
    def __init__(self, reason: str, detail: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or []


class DependencyCache(Protocol):
    async def key(
        self,
        ctx: Context,
        project: Project,
        package_json: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> CacheKey | None: ...

    async def restore(
        self, ctx: Context, key: CacheKey, progress: Progress, report: dict[str, Any]
    ) -> bool: ...

    async def before_install(
        self, ctx: Context, key: CacheKey | None, project: Project, env: Mapping[str, str]
    ) -> InstallPlan: ...

    async def after_install(self, ctx: Context, plan: InstallPlan, ok: bool) -> str: ...

    def user_code_runs(self) -> None: ...


class NoCache:
    """No dependency cache: nothing is restored, nothing saved."""

    async def key(
        self,
        ctx: Context,
        project: Project,
        package_json: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> CacheKey | None:
        return None

    async def restore(
        self, ctx: Context, key: CacheKey, progress: Progress, report: dict[str, Any]
    ) -> bool:
        return False

    async def before_install(
        self, ctx: Context, key: CacheKey | None, project: Project, env: Mapping[str, str]
    ) -> InstallPlan:
        return InstallPlan(dict(env))

    async def after_install(self, ctx: Context, plan: InstallPlan, ok: bool) -> str:
        return "no cache"

    def user_code_runs(self) -> None:
        return None


def lock_hash(workspace: Path, project: Project, package_json: Mapping[str, Any]) -> str:
    """What node_modules depends on: the lockfile, else the declared dependencies."""
    digest = hashlib.sha256(project.package_manager.encode())
    if project.lockfile:
        digest.update((workspace / project.lockfile).read_bytes())
    specs = {
        k: package_json.get(k)
        for k in ("dependencies", "devDependencies", "optionalDependencies", "overrides")
    }
    digest.update(json.dumps(specs, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def resolve_tool(argv: tuple[str, ...], path: str) -> tuple[str, ...]:
    """``argv`` with its program found on ``path``; pnpm and yarn through corepack when
    their shims are not installed."""
    if shutil.which(argv[0], path=path):
        return argv
    if argv[0] in {"pnpm", "yarn"} and shutil.which("corepack", path=path):
        return ("corepack", *argv)
    raise InstallError(f"{argv[0]} is not installed in the preview image")


async def ensure_dependencies(
    ctx: Context,
    project: Project,
    package_json: Mapping[str, Any],
    env: Mapping[str, str],
    progress: Progress,
    cache: DependencyCache | None = None,
    report: dict[str, Any] | None = None,
) -> Outcome:
    """Make node_modules match the project; ``report`` receives what the cache did
    (key, scope, restore time, archive size, whether the install will be packed)."""
    cache = cache or NoCache()
    report = {} if report is None else report
    try:
        return await _ensure(ctx, project, package_json, env, progress, cache, report)
    finally:
        cache.user_code_runs()  # the dev server starts next


async def _ensure(
    ctx: Context,
    project: Project,
    package_json: Mapping[str, Any],
    env: Mapping[str, str],
    progress: Progress,
    cache: DependencyCache,
    report: dict[str, Any],
) -> Outcome:
    workspace = ctx.config.workspace
    if project.install is None:
        return "skipped"
    try:
        wanted = lock_hash(workspace, project, package_json)
    except OSError as exc:
        raise InstallError(f"cannot read {project.lockfile}: {exc}") from None
    if (workspace / "node_modules").is_dir() and ctx.session.lock_hash == wanted:
        return "skipped"
    key = await cache.key(ctx, project, package_json, env)
    if key is not None:
        report.update(key=key.value, scope=key.scope)
        if await cache.restore(ctx, key, progress, report):
            ctx.session.lock_hash = wanted
            return "restored"
    argv = resolve_tool(project.install, env.get("PATH", ""))
    ctx.session.lock_hash = None  # until it succeeds, whatever is there is not trusted
    ctx.save()
    plan = await cache.before_install(ctx, key, project, env)
    ok = False
    try:
        await _install(ctx, argv, plan.env, progress)
        ok = True
    finally:
        report["pack"] = await cache.after_install(ctx, plan, ok)
    ctx.session.lock_hash = wanted
    return "installed"


async def _install(
    ctx: Context, argv: tuple[str, ...], env: Mapping[str, str], progress: Progress
) -> None:
    workspace = ctx.config.workspace
    ctx.logs.append(f"[supervisor] $ {' '.join(argv)}")
    ticker = asyncio.create_task(_report_while_installing(ctx, progress, " ".join(argv)))
    try:
        finished = await procs.run_to_end(
            argv,
            user=ctx.user,
            env=env,
            cwd=workspace,
            on_line=ctx.logs.append,
            timeout=ctx.config.install_timeout,
        )
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    ctx.disk_dirty = True
    if finished.returncode != 0:
        if finished.returncode is None:
            reason = f"dependency install took longer than {ctx.config.install_timeout:.0f}s"
        else:
            reason = "dependency install failed: " + failures.classify(
                finished.lines, finished.returncode
            )
        raise InstallError(reason, failures.relevant_lines(finished.lines))


async def _report_while_installing(ctx: Context, progress: Progress, command: str) -> None:
    """A progress event every second: time-based percent (installs print little without
    a terminal) and the latest output line, so a person sees it move."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        await asyncio.sleep(1.0)
        waited = loop.time() - started
        tail = ctx.logs.tail(1)
        message = f"{command} ({waited:.0f}s)" + (f": {tail[0][:200]}" if tail else "")
        await progress.report("dependencies", 95 * (1 - 1 / (1 + waited / 20)), message)
