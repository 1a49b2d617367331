"""The commands a supervisor obeys: their arguments and results (the gateway's contract).

Each ``Command`` on ``keys.commands(cid)`` is answered by one ``CommandResult`` pushed to
``keys.command_result(cid, id)``: ``ok`` with ``result``, or not ``ok`` with ``error`` (a
reason a person can act on) and whatever ``result`` is known. Blobs (archives) are read
from ``keys.command_blob(cid, id)``.

``prepare`` — put a project in the workspace, install its dependencies, start its dev
server; answered once the dev server answers HTTP or has failed. Progress events flow
meanwhile. Args:
    session_id (or Command.session_id), project_id,
    source: {"type": "template", "name"} | {"type": "git", "url", "ref"?, "url_in_blob"?}
          (url_in_blob: the URL with its credentials is the blob; ``url`` has none),
          | {"type": "archive"} (with ``blob``: the tar[.zst] replaces the workspace;
            without: the files already written by ``write_files`` are used),
    blob: bool, env: {name: value} for install and dev server,
    public_host: "abc.preview.localhost:8080", public_port: 8080, public_scheme: "http",
    ready_timeout: seconds (default 180).
  result: {state: "ready", dependencies: restored|installed|skipped, framework,
    framework_version, package_manager, command, port, forwarded, node_modules_key,
    timings_ms: {files, dependencies, build_cache?, devserver, and as parts of devserver
    boot, answer, warmup}}; on failure also {state, phase, reason,
    detail: [log lines]}.
``write_files`` — {files: {path: base64}} or {blob: true, mode: merge|replace}
  (tar, optionally gzip or zstd; replace keeps node_modules). Paths leaving the workspace
  are refused and then nothing is written. Waits only while a prepare writes its files
  (not during its install). result: {files, bytes}.
``restart`` — restart the dev server ({ready_timeout?}); result {state: "ready", port}.
``stop`` — stop the dev server (and a prepare in progress); result {state: "stopped"}.
``reset`` — {keep_node_modules: bool, node_modules_budget_bytes: int}: let a running dev
  server finish writing its build cache (``buildcache.settle``), stop everything, kill
  every ``app`` process, pack the build cache, empty the workspace (node_modules kept when
  asked, known and under budget), restore app's home and the temporary directories
  (``scrub``), forget the session. result {state: "idle", kept_node_modules,
  node_modules_bytes, node_modules_key, build_cache, settled_ms}.
``logs`` — {lines: int (default 100, at most 2000)}; result {lines: [...]}.
``sleep`` — freeze every process of the ready dev server (supervisor/freeze.py); the
  heartbeat then says ``sleeping``. result {state: "sleeping", frozen: n}; refused when the
  dev server is not ready (starting, crashed, stopped).
``wake`` — thaw it; result {state: "ready", woke: bool (false: it was awake)}. ``restart``,
  ``stop`` and ``reset`` thaw it first on their own.
``hibernate`` — {archive: name, owner, max_age}: pack the workspace (without node_modules
  and build caches) to the host's cache volume (supervisor/hibernation.py) and remove
  archives older than max_age; result {archive, sha256, bytes}. A later ``prepare`` with
  source {"type": "hibernated", "archive", "sha256"} and the same ``owner`` restores it
  (its environment too, unless the prepare names one) on any container of this host.
``claim`` — make ``Command.session_id`` the current session without doing anything else
  (sent when a container is attached to an archive-source session, whose ``prepare`` waits
  for its files); result {session_id}.

Sessions (the fence, ``supervisor/fence.py``). The container has at most one current
session; ``Command.session_id`` says whose a command is. Decided at dispatch, in stream
order:
- ``prepare`` and ``claim`` make their session current when there is none or it is
  already theirs; refused when another session is current or theirs has ended here (but
  for a prepare resuming a hibernated session, when none is current: its new life).
- ``reset`` ends a session: it must name the current one. With no current session (a
  start abandoned before its prepare, a warm container) any reset is accepted, and a
  session-less one only then: a container whose session its releaser cannot name is
  destroyed, not reset. The ended session can never become current again here.
- ``write_files``, ``restart``, ``stop``, ``logs``, ``sleep``, ``wake``: their session
  must be the current one (checked again when they act); a command without a session only
  while none is current.
A refused command does nothing; its result is ``ok: false`` with ``result.code ==
"wrong_session"`` (``shared.messages.WRONG_SESSION``), which the gateway answers with 409.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shared import keys
from shared.messages import LOG_LINES, Command
from supervisor import buildcache, fence, hibernation, procs, scrub, sources, workspace
from supervisor.cgroup import tree_size
from supervisor.context import Context, SessionState
from supervisor.devserver import NotRunning
from supervisor.errors import CommandError
from supervisor.events import Progress
from supervisor.prepare import blob, node_modules_key, prepare


async def write_files(ctx: Context, command: Command) -> dict[str, Any]:
    args = command.args
    mode = str(args.get("mode") or "merge")
    if mode not in ("merge", "replace"):
        raise CommandError(f"unknown mode {mode!r} (merge or replace)")
    try:
        if args.get("blob"):
            archive = await blob(ctx, command)
        else:
            files = args.get("files")
            if not isinstance(files, dict) or not files:
                raise CommandError("write_files needs files {path: base64} or blob: true")
            decoded = {}
            for path, content in files.items():
                try:
                    decoded[str(path)] = base64.b64decode(str(content), validate=True)
                except (binascii.Error, ValueError):
                    raise CommandError(f"content of {path!r} is not base64") from None
            archive = sources.files_archive(decoded)
        async with ctx.workspace_lock:
            # A reset may have ended the session while this waited for the lock.
            fence.check(ctx, command)
            return await sources.unpack(ctx, archive, mode)
    except workspace.UnsafePath as exc:
        raise CommandError(f"refused: {exc} (nothing was written)") from None
    except sources.SourceError as exc:
        raise CommandError(str(exc)) from None


async def restart(ctx: Context, command: Command) -> dict[str, Any]:
    spec = ctx.devserver.spec
    if spec is None:
        raise CommandError("nothing to restart: no project has been prepared")
    if command.args.get("ready_timeout"):
        try:
            spec = dataclasses.replace(spec, ready_timeout=float(command.args["ready_timeout"]))
        except (TypeError, ValueError):
            raise CommandError("ready_timeout must be a number") from None
    progress = Progress(ctx.events, ctx.devserver.session_id)
    await progress.report("devserver", 0, "restarting the dev server", force=True)
    fence.check(ctx, command)  # not ended by a reset during the progress report
    ctx.session.dev_wanted = True
    started = await ctx.devserver.start(spec, ctx.devserver.session_id, progress)
    if not started.ready:
        raise CommandError(
            started.reason or "the dev server did not start",
            {"state": ctx.devserver.state, "detail": started.detail},
        )
    return {"state": "ready", "port": spec.port, "forwarded": started.forwarded}


async def stop(ctx: Context, command: Command) -> dict[str, Any]:
    await ctx.cancel_prepares("stopped")
    await ctx.devserver.stop("stopped")
    ctx.session.dev_wanted = False
    ctx.save()
    return {"state": "stopped"}


async def reset(ctx: Context, command: Command) -> dict[str, Any]:
    keep = bool(command.args.get("keep_node_modules", False))
    try:
        budget = int(command.args.get("node_modules_budget_bytes", 1 << 30))
    except (TypeError, ValueError):
        raise CommandError("node_modules_budget_bytes must be a number") from None
    await ctx.cancel_prepares("reset")
    async with ctx.workspace_lock:
        settled = 0.0
        if ctx.devserver.state == "ready":  # not a frozen one: it writes nothing
            settled = await buildcache.settle(ctx, ctx.session.framework, ctx.logs.appended_at)
        await ctx.devserver.stop("idle")
        ctx.devserver.forget()
        if ctx.user.uid is not None:
            await procs.kill_user_processes(ctx.user.uid)
        root = ctx.config.workspace
        node_modules = root / "node_modules"
        size = await asyncio.to_thread(tree_size, node_modules) if node_modules.is_dir() else 0
        kept = keep and size > 0 and size <= budget and bool(ctx.session.lock_hash)
        key = node_modules_key(ctx) if kept else None
        # No app process is left: what the dev server compiled, for its owner's next start.
        packed = await buildcache.pack(ctx, ctx.session.framework)
        await asyncio.to_thread(_clear, root, ["node_modules"] if kept else [])
        if ctx.config.restore_user_files and ctx.user.uid is not None and ctx.user.gid is not None:
            owner = (ctx.user.uid, ctx.user.gid)
            try:
                await asyncio.to_thread(scrub.restore, Path(ctx.user.home), root, owner)
            except OSError as exc:  # the gateway then destroys the container
                raise CommandError(f"could not restore the container's files: {exc}") from None
        ctx.session = SessionState(
            lock_hash=ctx.session.lock_hash if kept else None,
            node_modules_key=key,
            modules_owner=ctx.session.modules_owner if kept else None,
            ended=ctx.session.ended,
        )
        ctx.save()
        ctx.logs.clear()
        await ctx.redis.delete(keys.logs(ctx.config.container_id))
        ctx.disk_dirty = True
        ctx.devserver.set_state("idle")
    return {
        "state": "idle",
        "kept_node_modules": kept,
        "node_modules_bytes": size if kept else 0,
        "node_modules_key": key,
        "build_cache": packed.state,
        "settled_ms": int(settled * 1000),  # waited for the dev server's cache writes
    }


def _clear(root: Path, keep: list[str]) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        workspace.clear(fd, keep)
    finally:
        os.close(fd)


async def logs(ctx: Context, command: Command) -> dict[str, Any]:
    try:
        count = int(command.args.get("lines") or 100)
    except (TypeError, ValueError):
        raise CommandError("lines must be a number") from None
    return {"lines": ctx.logs.tail(max(0, min(count, LOG_LINES)))}


async def sleep(ctx: Context, command: Command) -> dict[str, Any]:
    try:
        frozen = await ctx.devserver.sleep()
    except NotRunning as exc:
        raise CommandError(f"cannot sleep: {exc}", {"state": ctx.devserver.state}) from None
    return {"state": "sleeping", "frozen": frozen}


async def wake(ctx: Context, command: Command) -> dict[str, Any]:
    woke = await ctx.devserver.wake()
    return {"state": ctx.devserver.state, "woke": woke}


async def hibernate(ctx: Context, command: Command) -> dict[str, Any]:
    args = command.args
    try:
        max_age = float(args.get("max_age") or 86400)
    except (TypeError, ValueError):
        raise CommandError("max_age must be a number") from None
    async with ctx.workspace_lock:
        fence.check(ctx, command)
        try:
            return await hibernation.pack(
                ctx, str(args.get("archive") or ""), str(args.get("owner") or ""), max_age
            )
        except (hibernation.HibernationError, OSError) as exc:
            raise CommandError(f"could not hibernate: {exc}") from None


async def claim(ctx: Context, command: Command) -> dict[str, Any]:
    # All of it happened in fence.admit, at dispatch.
    return {"session_id": ctx.session.session_id}


HANDLERS: dict[str, Callable[[Context, Command], Awaitable[dict[str, Any]]]] = {
    "prepare": prepare,
    "claim": claim,
    "write_files": write_files,
    "restart": restart,
    "stop": stop,
    "reset": reset,
    "logs": logs,
    "sleep": sleep,
    "wake": wake,
    "hibernate": hibernate,
}
