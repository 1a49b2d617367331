"""The ``prepare`` command: project files, then dependencies, then the dev server, with
progress events for each phase (see ``commands`` for its arguments and result)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any, NoReturn

from shared import keys
from shared.messages import Command
from shared.redact import public_url
from supervisor import buildcache, buildenv, fence, hibernation, procs, sources, workspace
from supervisor.context import Context
from supervisor.depcache import cache as depcache
from supervisor.dependencies import InstallError, ensure_dependencies, resolve_tool
from supervisor.detect import Exposure, Project, detect, warnings_for, with_turbopack
from supervisor.devserver import LaunchSpec
from supervisor.errors import CommandError
from supervisor.events import Progress

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class PrepareFailed(Exception):
    def __init__(self, reason: str, detail: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or []


def _user_env(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): str(v)
        for k, v in raw.items()
        if _ENV_NAME.match(str(k)) and not str(k).startswith("PREVIEW_")
    }


def read_project(root: Path) -> tuple[dict[str, Any] | None, set[str]]:
    files = {p.name for p in root.iterdir()} if root.is_dir() else set()
    if "package.json" not in files:
        return None, files
    try:
        data = json.loads((root / "package.json").read_text())
    except (OSError, ValueError) as exc:
        raise PrepareFailed(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PrepareFailed("package.json is not a JSON object")
    return data, files


def installed_version(root: Path, package: str | None) -> str | None:
    if not package:
        return None
    try:
        data = json.loads((root / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version else None


async def blob(ctx: Context, command: Command) -> bytes:
    data = await ctx.redis.get(keys.command_blob(ctx.config.container_id, command.id))
    if data is None:
        raise CommandError("the archive of this command is missing (expired?)")
    return data if isinstance(data, bytes) else data.encode()


async def _write_source(ctx: Context, command: Command, source: dict[str, Any]) -> str:
    kind = source.get("type")
    if kind == "template":
        name = str(source.get("name") or "")
        archive = await asyncio.to_thread(sources.template_archive, ctx.config.templates_dir, name)
        await sources.unpack(ctx, archive, "merge")
        return f"template {name}"
    if kind == "git":
        url, ref = str(source.get("url") or ""), source.get("ref")
        if source.get("url_in_blob"):  # the URL with its credentials (commands docstring)
            url = (await blob(ctx, command)).decode("utf-8", "replace")
        await sources.git_checkout(ctx, url, str(ref) if ref else None)
        return f"git {public_url(url)}" + (f" ({ref})" if ref else "")
    if kind == "hibernated":
        try:
            data, env = await asyncio.to_thread(
                hibernation.load,
                ctx,
                str(source.get("archive") or ""),
                str(command.args.get("owner") or ""),
                str(source.get("sha256") or ""),
            )
        except hibernation.HibernationError as exc:
            raise PrepareFailed(str(exc)) from None
        await sources.unpack(ctx, data, "replace")
        if not ctx.session.user_env:  # the environment it was started with
            ctx.session.user_env = _user_env(env)
        return "the hibernated workspace"
    if kind == "archive":
        if command.args.get("blob"):
            await sources.unpack(ctx, await blob(ctx, command), "replace")
            return "archive"
        return "files already in the workspace"
    raise PrepareFailed(f"unknown source type {kind!r} (archive, git, template or hibernated)")


async def prepare(ctx: Context, command: Command) -> dict[str, Any]:
    args = command.args
    session_id = str(args.get("session_id") or command.session_id or "")
    if not session_id:
        raise CommandError("prepare needs a session_id")
    raw_source = args.get("source")
    source: dict[str, Any] = raw_source if isinstance(raw_source, dict) else {}
    try:
        exposure = Exposure(
            port=ctx.config.dev_port,
            public_host=str(args.get("public_host") or f"localhost:{ctx.config.dev_port}"),
            public_port=int(args.get("public_port") or 0),
            public_scheme=str(args.get("public_scheme") or "http"),
        )
        ready_timeout = float(args.get("ready_timeout") or ctx.config.ready_timeout)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"bad arguments: {exc}") from None
    user_env = _user_env(args.get("env"))
    # fence.admit made it current at dispatch; a reset since then has ended it.
    if ctx.session.session_id != session_id:
        raise fence.refused(f"session {session_id} ended before its prepare ran")
    ctx.session.project_id = str(args.get("project_id") or "") or None
    owner = f"{args.get('owner') or ''}\x00{ctx.session.project_id or ''}"
    if ctx.session.lock_hash is not None and ctx.session.modules_owner != owner:
        # Kept from someone else's session: their install scripts and code wrote it.
        ctx.session.lock_hash = ctx.session.node_modules_key = None
        await asyncio.to_thread(workspace.drop, ctx.config.workspace, "node_modules")
    ctx.session.modules_owner = owner
    ctx.session.dev_wanted = False
    ctx.session.user_env = user_env
    ctx.save()
    progress = Progress(ctx.events, session_id)
    result: dict[str, Any] = {"timings_ms": {}}
    phase, mark = "files", time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        result["timings_ms"][name] = int((now - mark) * 1000)
        mark = now

    try:
        # One prepare at a time; other writers wait only for its files phase, so that an
        # editor's save is not held up by a long install.
        async with ctx.prepare_lock:
            async with ctx.workspace_lock:
                await ctx.devserver.stop("installing")
                await progress.report("files", 0, "writing the project files", force=True)
                what = await _write_source(ctx, command, source)
                await progress.report("files", 100, f"project files ready ({what})", force=True)
            lap("files")
            user_env = ctx.session.user_env
            package_json, files = read_project(ctx.config.workspace)
            project = detect(package_json, files, exposure)
            if ctx.config.next_turbopack and package_json is not None:
                project = with_turbopack(project, package_json)
            result.update(_describe(project))
            if project.problem or package_json is None:
                raise PrepareFailed(project.problem or "nothing to run")
            ctx.session.framework = project.framework
            ctx.save()
            phase = "dependencies"
            result["dependencies"] = await _dependencies(
                ctx, project, package_json, user_env, progress, result
            )
            lap("dependencies")
            cached = await buildcache.restore(ctx, project.framework)
            result["build_cache"] = cached.state
            if cached.state == "restored":
                lap("build_cache")
            cache_env = await buildenv.environment(ctx, project.framework)
            version = installed_version(ctx.config.workspace, project.framework_package)
            result["framework_version"] = version or project.framework_version
            for kind, message in warnings_for(project.framework, result["framework_version"]):
                await progress.warning(kind, message, framework=project.framework)
        phase = "devserver"
        dev_env = procs.child_environment(
            ctx.base_env, ctx.user, {**cache_env, **user_env, **_QUIET, **project.env}
        )
        spec = LaunchSpec(
            argv=resolve_tool(project.command, dev_env.get("PATH", "")),
            env=dev_env,
            cwd=ctx.config.workspace,
            port=exposure.port,
            host_header=exposure.public_host,
            ready_timeout=ready_timeout,
            warmup=ctx.config.warmup_seconds > 0,
            warmup_budget=ctx.config.warmup_seconds,
        )
    except (PrepareFailed, InstallError, sources.SourceError, workspace.UnsafePath) as exc:
        await _failed(ctx, session_id, result, phase, str(exc), getattr(exc, "detail", []))
    except CommandError as exc:
        await _failed(ctx, session_id, result, phase, exc.error, [])
    await progress.report("devserver", 0, f"starting {project.command_line}", force=True)
    ctx.session.dev_wanted = True
    started = await ctx.devserver.start(spec, session_id, progress)
    lap("devserver")
    parts = {"boot": started.boot_ms, "answer": started.answer_ms, "warmup": started.warmup_ms}
    for name, ms in parts.items():  # parts of "devserver", shown apart
        if ms is not None:
            result["timings_ms"][name] = ms
    result.update(port=exposure.port, forwarded=started.forwarded)
    if not started.ready:  # the dev server has reported its error event itself
        reason = started.reason or "the dev server did not start"
        result.update(state=ctx.devserver.state, phase=phase, reason=reason, detail=started.detail)
        raise CommandError(reason, result)
    result.update(state="ready", node_modules_key=ctx.session.node_modules_key)
    return result


async def _dependencies(
    ctx: Context,
    project: Project,
    package_json: dict[str, Any],
    user_env: dict[str, str],
    progress: Progress,
    result: dict[str, Any],
) -> str:
    env = procs.child_environment(ctx.base_env, ctx.user, {**user_env, "CI": "1", **_QUIET})
    await progress.report(
        "dependencies", 0, f"{project.package_manager}: checking dependencies", force=True
    )
    cache = depcache.for_config(ctx.config)
    report = result.setdefault("dependency_cache", {})
    outcome = await ensure_dependencies(ctx, project, package_json, env, progress, cache, report)
    ctx.session.node_modules_key = node_modules_key(ctx)
    ctx.save()
    # The outcome with it: the gateway shows it from here on, not only once prepare answers
    # (after `ready`).
    await progress.report(
        "dependencies", 100, f"dependencies {outcome}", force=True, dependencies=outcome
    )
    return outcome


async def _failed(
    ctx: Context,
    session_id: str,
    result: dict[str, Any],
    phase: str,
    reason: str,
    detail: list[str],
) -> NoReturn:
    """Before the dev server: state ``failed``, an error event, and the command's error."""
    ctx.devserver.set_state("failed", reason)
    await ctx.events.emit("error", session_id, {"reason": reason, "detail": detail})
    result.update(state="failed", phase=phase, reason=reason, detail=detail)
    raise CommandError(reason, result)


# Less noise from package managers and CLIs that think they talk to a person.
_QUIET = {
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0",
}


def _describe(project: Project) -> dict[str, Any]:
    return {
        "framework": project.framework,
        "framework_version": project.framework_version,
        "package_manager": project.package_manager,
        "command": project.command_line,
    }


def node_modules_key(ctx: Context) -> str | None:
    session = ctx.session
    if not session.lock_hash or not (ctx.config.workspace / "node_modules").is_dir():
        return None
    return f"{session.project_id or ''}:{session.lock_hash}"
