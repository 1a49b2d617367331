"""Dependency cache benchmark (issue 7): restoring node_modules with our zstd code against
the usual ways, on the same real projects from the npm registry, in the same run.

Projects: a Vite React app (vite@7, react, react-dom, @vitejs/plugin-react) and a Next.js
app (next@15, react, react-dom), installed once with npm (lockfile included).

1. Sizes: node_modules on disk, its tar stream, our .tar.zst (level 1), a .tgz.
2. Restore into a fresh directory, each method in turn, several rounds (median and best):
   our code (``restore.restore_tree`` over ``archive.decompressed``, exactly what the
   supervisor runs), ``tar -xzf`` of the same tree, ``cp -a``, a fresh ``npm ci`` with a
   warm npm cache, and ``zstd -dc | tar -x`` as the C-tools reference for zstd. The
   methods are interleaved in every round (order rotated), so a busy machine slows them
   alike; nothing restored is deleted before the end (see ``measure_restores``).
   ``--restore-dir`` (repeatable) compares filesystems in the same rounds, e.g. this
   machine's disk (ext4 without a journal) and a journalled ext4 image, as hosts have:

       truncate -s 20G /tmp/ext4.img && mkfs.ext4 -q -F /tmp/ext4.img
       mkdir -p /tmp/ext4 && mount -o loop /tmp/ext4.img /tmp/ext4
       ... --restore-dir /tmp/bench --restore-dir /tmp/ext4 --workdir /tmp/bench
       umount /tmp/ext4 && rm /tmp/ext4.img
3. Warm start in real containers (``gateway.containers.containers.Containers``, the preview image,
   a cache volume of its own): a first container installs and packs; then new pooled
   containers each get a ``prepare`` with the project as an archive blob and restore;
   then the same container again (node_modules kept). Seconds from sending ``prepare``
   until it answers ``ready`` (the dev server answers HTTP), the supervisor's own
   timings (restore_tree alone among them) and the host's load average at the start.
   Each warm container is removed before the next starts, as a pool turns over; on
   ext4 without a journal that makes the next restore slower (see 2.).

    .venv/bin/python bench/bench_depcache.py [--rounds 3] [--warm 3] [--no-container]
        [--no-next-container] [--workdir DIR] [--keep] [--restore-dir DIR ...]

``--rounds 0`` skips 1. and 2. (only the container starts).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zstandard
from _root import ROOT
from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import DockerRuntime
from shared.messages import Command
from shared.settings import Settings
from supervisor.depcache import archive
from supervisor.depcache.pack import Packer, take_snapshot
from supervisor.depcache.restore import restore_tree
from tests.utils import start_redis

LABEL = "preview-gateway.bench"
RESTORES = f"restores-{os.getpid()}"  # deleted at the end of the run, even with --keep

VITE_APP = {
    "package.json": {
        "name": "vite-react-app",
        "private": True,
        "type": "module",
        "scripts": {"dev": "vite"},
        "dependencies": {"react": "^19.0.0", "react-dom": "^19.0.0"},
        "devDependencies": {"vite": "^7.0.0", "@vitejs/plugin-react": "^5.0.0"},
    },
    "index.html": '<!doctype html><html><body><div id="root"></div>'
    '<script type="module" src="/src/main.jsx"></script></body></html>\n',
    "vite.config.js": "import { defineConfig } from 'vite';\n"
    "import react from '@vitejs/plugin-react';\n"
    "export default defineConfig({ plugins: [react()] });\n",
    "src/main.jsx": "import { createRoot } from 'react-dom/client';\n"
    "createRoot(document.getElementById('root')).render(<h1>Hello from Vite + React</h1>);\n",
}
NEXT_APP = {
    "package.json": {
        "name": "next-app",
        "private": True,
        "scripts": {"dev": "next dev"},
        "dependencies": {"next": "^15.0.0", "react": "^19.0.0", "react-dom": "^19.0.0"},
    },
    "app/layout.js": "export default function Layout({ children }) {\n"
    "  return <html><body>{children}</body></html>;\n}\n",
    "app/page.js": "export default function Page() { return <h1>Hello from Next.js</h1>; }\n",
}
PROJECTS = {"vite-react": VITE_APP, "next": NEXT_APP}


@dataclass
class Project:
    name: str
    path: Path
    install_seconds: float = 0.0
    tree_bytes: int = 0
    files: int = 0
    info: archive.ArchiveInfo | None = None
    zst: Path | None = None
    tgz: Path | None = None
    tgz_bytes: int = 0
    pack_seconds: float = 0.0
    tgz_seconds: float = 0.0
    # (filesystem, method) -> (seconds, CPU seconds) of each round
    restores: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], cwd: Path | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def npm_env(workdir: Path) -> dict[str, str]:
    """npm with a cache of our own and no user config (the host's ~/.npmrc may omit
    `resolved` from lockfiles, which would make them unpinned for the cache)."""
    empty = workdir / "npmrc"
    empty.touch()
    return {
        **os.environ,
        "npm_config_cache": str(workdir / "npm-cache"),
        "npm_config_userconfig": str(empty),
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }


def write_project(spec: dict[str, Any], path: Path) -> None:
    for name, content in spec.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(content, indent=2) if isinstance(content, dict) else content
        target.write_text(text)


def tree_size(path: Path) -> tuple[int, int]:
    total = files = 0
    for entry in path.rglob("*"):
        st = entry.lstat()
        if entry.is_file() and not entry.is_symlink():
            total += st.st_size
            files += 1
    return total, files


def settle() -> None:
    """Let the previous method's writes reach the disk first: each starts on a quiet one."""
    subprocess.run(["sync"], check=False)
    time.sleep(1.5)


def cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed(action: Callable[[], object]) -> tuple[float, float]:
    settle()
    started, used = time.perf_counter(), cpu()
    action()
    return time.perf_counter() - started, cpu() - used


# --- 1. projects, sizes ----------------------------------------------------------------


def install(project: Project, workdir: Path) -> None:
    if (project.path / "package-lock.json").exists() and (project.path / "node_modules").is_dir():
        say(f"{project.name}: installed by an earlier run (--workdir), kept")
        project.tree_bytes, project.files = tree_size(project.path / "node_modules")
        return
    project.path.mkdir(parents=True)
    write_project(PROJECTS[project.name], project.path)
    say(f"{project.name}: npm install (resolves, writes the lockfile, warms the npm cache)")
    started = time.perf_counter()
    run(["npm", "install"], cwd=project.path, env=npm_env(workdir))
    project.install_seconds = round(time.perf_counter() - started, 1)
    project.tree_bytes, project.files = tree_size(project.path / "node_modules")


def pack(project: Project, workdir: Path, level: int, threads: int) -> None:
    project.zst = workdir / f"{project.name}.tar.zst"
    project.tgz = workdir / f"{project.name}.tgz"
    started = time.perf_counter()
    packer = Packer(project.path, take_snapshot(project.path), None, 64 << 30)
    fd = os.open(project.zst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        sizes = archive.compress(fd, packer.chunks(), level, threads)
        project.info = archive.new_info("bench", sizes, packer.entries, packer.data_bytes, level)
        archive.append_trailer(fd, project.info)
    finally:
        os.close(fd)
    project.pack_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run(["tar", "-czf", str(project.tgz), "node_modules"], cwd=project.path)
    project.tgz_seconds = time.perf_counter() - started
    project.tgz_bytes = project.tgz.stat().st_size


# --- 2. restores -----------------------------------------------------------------------


def ours(project: Project, target: Path) -> None:
    assert project.zst is not None
    fd = os.open(project.zst, os.O_RDONLY)
    try:
        info = archive.read_info(fd)
        # As in a container: every entry handed to a user (here root: same system calls).
        restore_tree(archive.decompressed(fd, info), target, (os.getuid(), os.getgid()))
    finally:
        os.close(fd)


def methods(project: Project, workdir: Path) -> dict[str, Callable[[Path], object]]:
    env = npm_env(workdir)

    def npm_ci(target: Path) -> None:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(project.path / name, target / name)
        run(["npm", "ci", "--prefer-offline"], cwd=target, env=env)

    return {
        "ours (zstd, restore.py)": lambda t: ours(project, t),
        "tar -xzf": lambda t: run(["tar", "-xzf", str(project.tgz), "-C", str(t)]),
        "cp -a": lambda t: run(["cp", "-a", str(project.path / "node_modules"), str(t)]),
        "zstd -dc | tar -x (C ref.)": lambda t: run(
            ["sh", "-c", f"zstd -dcq '{project.zst}' | tar -x -C '{t}'"]
        ),
        "npm ci (warm npm cache)": npm_ci,
    }


def filesystem(path: Path) -> str:
    """``ext4 (no journal) /`` etc.: what the mount under ``path`` is. ext4 without a
    journal keeps inodes freed in the last minute (five while their block is dirty) from
    reuse, and every file creation scans past them (``recently_deleted``)."""
    path = path.resolve()
    best: tuple[str, str, str] = ("/", "?", "?")
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            point, rest = fields[4], fields[fields.index("-") + 1 :]
            inside = path == Path(point) or Path(point) in path.parents
            if inside and len(point) >= len(best[0]):
                best = (point, rest[0], rest[1])
    point, kind, device = best
    if kind == "ext4":
        name = Path(device).name
        journal = any(Path("/proc/fs/jbd2").glob(f"{name}-*"))
        kind = f"ext4 ({'journal' if journal else 'no journal'})"
    return f"{kind} {point}"


def measure_restores(
    project: Project, workdir: Path, targets: list[Path], rounds: int, npm_rounds: int
) -> None:
    """Each method on each filesystem in turn, the order rotated every round. Every restore
    goes into a directory of its own, and nothing is deleted until the end of the run: on
    ext4 without a journal (this machine's disk), a file created soon after many were
    deleted is slow, so deleting one method's tree would slow down the next one."""
    runs = [
        (target, filesystem(target), name, method)
        for target in targets
        for name, method in methods(project, workdir).items()
    ]
    for round_ in range(rounds):
        shift = round_ % len(runs)
        for i, (target, fs, name, method) in enumerate(runs[shift:] + runs[:shift]):
            if name.startswith("npm ci") and round_ >= npm_rounds:
                continue
            scratch = target / RESTORES / f"{project.name}-{round_}-{i}"
            scratch.mkdir(parents=True)
            seconds, used = timed(functools.partial(method, scratch))
            restored, _ = tree_size(scratch / "node_modules")
            if abs(restored - project.tree_bytes) > project.tree_bytes // 100:
                raise RuntimeError(f"{name} restored {restored} bytes of {project.tree_bytes}")
            project.restores.setdefault((fs, name), []).append((seconds, used))
            say(f"{project.name}: {fs}: {name}: {seconds:.2f}s (cpu {used:.2f}s)")


# --- 3. warm starts in containers ------------------------------------------------------


def project_blob(project: Project) -> bytes:
    """The project's files (not node_modules) as a tar.zst, as an editor would upload it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(project.path.rglob("*")):
            rel = path.relative_to(project.path)
            if rel.parts[0] in {"node_modules", ".next"} or not path.is_file():
                continue
            tar.add(path, arcname=str(rel))
    return zstandard.ZstdCompressor(level=3).compress(buffer.getvalue())


@dataclass
class Start:
    kind: str
    seconds: float
    dependencies: str
    timings: dict[str, int]
    restore_ms: int  # restore_tree alone, as the supervisor timed it
    load: float  # the host's 1-minute load average as the start began (2 cores)


async def container_starts(
    projects: list[Project], warm: int, volume: str, image: str
) -> dict[str, list[Start]]:
    server = start_redis()
    settings = Settings.from_env(
        {},
        redis_url=server.url,
        image=image,
        cache_volume=volume,
        heartbeat_interval=1.0,
        heartbeat_ttl=4.0,
    )
    redis = Redis.from_url(server.url, socket_timeout=900)
    runtime = DockerRuntime(settings)
    containers = Containers(settings, redis, runtime, labels={LABEL: "depcache"})
    made: list[str] = []
    results: dict[str, list[Start]] = {}

    async def pooled() -> str:
        info = await containers.launch()
        made.append(info.cid)
        await containers.wait_idle(info.cid, timeout=120)
        return info.cid

    async def prepare(cid: str, project: Project, blob: bytes, session: str) -> Start:
        command = Command(
            "prepare",
            {
                "session_id": session,
                "project_id": project.name,
                "source": {"type": "archive"},
                "blob": True,
                "public_host": f"{session}.preview.localhost:8080",
                "public_port": 8080,
            },
        )
        load, started = os.getloadavg()[0], time.monotonic()
        result = await containers.send(cid, command, blob=blob, timeout=900)
        seconds = time.monotonic() - started
        if not result.ok:
            raise RuntimeError(f"prepare of {project.name} failed: {result.error} {result.result}")
        cache = result.result.get("dependency_cache", {})
        return Start(
            "",
            seconds,
            result.result["dependencies"],
            result.result["timings_ms"],
            cache.get("restore_ms", 0),
            load,
        )

    async def archived(cid: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, out = await runtime.default.exec(cid, ["sh", "-c", "ls /cache/deps/v1/*/"])
            if code == 0 and ".tar.zst" in out:
                return
            await asyncio.sleep(0.5)
        raise RuntimeError("no archive appeared on the cache volume")

    try:
        for project in projects:
            blob = project_blob(project)
            starts = results.setdefault(project.name, [])
            say(f"{project.name}: cold start in a new container (installs, then packs)")
            cold = await pooled()
            start = await prepare(cold, project, blob, "cold")
            starts.append(replace(start, kind="fresh install (cold volume)"))
            await archived(cold)
            for i in range(warm):
                cid = await pooled()  # warm: idle, as in the pool
                start = await prepare(cid, project, blob, f"warm{i}")
                starts.append(replace(start, kind="pooled container + cached archive"))
                say(f"{project.name}: warm start {start.seconds:.2f}s {start.timings}")
                if i == warm - 1:
                    reset = Command("reset", {"keep_node_modules": True}, session_id=f"warm{i}")
                    assert (await containers.send(cid, reset, timeout=60)).ok
                    start = await prepare(cid, project, blob, "kept")
                    starts.append(replace(start, kind="same container, node_modules kept"))
                else:
                    await containers.destroy(cid, "bench")
                    made.remove(cid)
            await containers.destroy(cold, "bench")
            made.remove(cold)
    finally:
        for cid in made:
            await containers.destroy(cid, "bench cleanup")
        await runtime.close()
        await redis.aclose()
        server.stop()
    return results


# --- report ----------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f}"


def report(projects: list[Project], starts: dict[str, list[Start]], level: int) -> None:
    packed = [p for p in projects if p.info is not None]  # none with --rounds 0
    if packed:
        report_sizes(packed, level)
        report_restores(packed)
    if starts:
        report_starts(starts)


def report_sizes(projects: list[Project], level: int) -> None:
    print("\n### Sizes\n")
    print(
        "| project | files | node_modules MiB | tar MiB | ours .tar.zst MiB (level "
        f"{level}) | .tgz MiB | pack ours s | tar -czf s | npm install s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in projects:
        assert p.info is not None
        print(
            f"| {p.name} | {p.files} | {mib(p.tree_bytes)} | {mib(p.info.tar_bytes)} | "
            f"{mib(p.info.zstd_bytes)} | {mib(p.tgz_bytes)} | {p.pack_seconds:.2f} | "
            f"{p.tgz_seconds:.2f} | {p.install_seconds or '-'} |"
        )


def report_restores(projects: list[Project]) -> None:
    print("\n### Restore node_modules into a fresh directory (median of rounds)\n")
    print(
        "| project | filesystem | method | runs | seconds | best s | CPU s | MB/s | vs tar -xzf "
        "| best vs best |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in projects:
        for (fs, name), samples in p.restores.items():
            baseline = statistics.median(s for s, _ in p.restores[fs, "tar -xzf"])
            base_best = min(s for s, _ in p.restores[fs, "tar -xzf"])
            seconds = statistics.median(s for s, _ in samples)
            best = min(s for s, _ in samples)
            used = statistics.median(c for _, c in samples)
            rate = p.tree_bytes / 1e6 / seconds
            cell = name.replace("|", "\\|")
            print(
                f"| {p.name} | {fs} | {cell} | {len(samples)} | {seconds:.2f} | {best:.2f} | "
                f"{used:.2f} | {rate:.0f} | {baseline / seconds:.2f}x | {base_best / best:.2f}x |"
            )


def report_starts(starts: dict[str, list[Start]]) -> None:
    print("\n### Start to ready in real containers (prepare sent -> ready answered)\n")
    print(
        "| project | case | dependencies | seconds | files ms | deps ms | of which restore ms "
        "| dev server ms | host load (1 min) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in starts.items():
        for s in runs:
            t = s.timings
            print(
                f"| {name} | {s.kind} | {s.dependencies} | {s.seconds:.2f} | "
                f"{t.get('files', 0)} | {t.get('dependencies', 0)} | {s.restore_ms or '-'} | "
                f"{t.get('devserver', 0)} | {s.load:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--npm-rounds", type=int, default=2)
    parser.add_argument("--warm", type=int, default=3, help="warm container starts per project")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-container", action="store_true")
    parser.add_argument("--no-next-container", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, help="work here; projects a kept run installed are reused"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--restore-dir",
        type=Path,
        action="append",
        help="restore into this directory (repeat to compare filesystems); default: workdir",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pv-bench-depcache-"))
    workdir.mkdir(parents=True, exist_ok=True)
    volume = f"pv-bench-depcache-{secrets.token_hex(4)}"
    projects = [Project(name, workdir / name) for name in PROJECTS]
    targets = args.restore_dir or [workdir]
    starts: dict[str, list[Start]] = {}
    try:
        for project in projects:
            install(project, workdir)
            if args.rounds:
                pack(project, workdir, args.level, args.threads)
                measure_restores(project, workdir, targets, args.rounds, args.npm_rounds)
        if not args.no_container:
            say("preview image: scripts/build-image (cached)")
            # Its own tag, not :latest, which other builds on this host move.
            image = run([str(ROOT / "scripts/build-image")]).stdout.split()[-1]
            run(["docker", "volume", "create", "--label", f"{LABEL}=depcache", volume])
            wanted = [p for p in projects if p.name != "next" or not args.no_next_container]
            starts = asyncio.run(container_starts(wanted, args.warm, volume, image))
    finally:
        if not args.no_container:
            subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)
        for target in targets:
            shutil.rmtree(target / RESTORES, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(projects, starts, args.level)


if __name__ == "__main__":
    main()
