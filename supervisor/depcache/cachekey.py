"""The key a node_modules archive is stored under: everything the install's result depends
on, hashed. Same key, identical node_modules — and, since archives are shared by every
preview on a host, a key nobody can reach with a tree of their own making.

Always in the key: the key format, the package manager and its version, Node's major
version, platform, CPU and C library, the lockfile (or, without one, the dependency
fields of package.json), the install-relevant fields of package.json, the package
managers' config files, and the install's environment beyond the supervisor's own (the
user's variables: ``NODE_ENV`` or ``npm_config_*`` change what gets installed).

Scope ``shared``: the install ran no code but npm itself — an npm lockfile (v2+) that pins
every package and marks none as having install scripts, and a project with no install
scripts of its own, no local packages and no code-loading npm config. Then node_modules
is a function of the above, and any project with the same inputs may restore it.

Scope ``workspace`` otherwise: install scripts may read any file of the project (think
``patch-package`` or ``prisma generate``), so the key also covers every file of the
workspace but node_modules and .git. Such archives help the same project only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import procs
from supervisor.detect import Project

FORMAT = "preview-deps-1"
SHARED, WORKSPACE = "shared", "workspace"
LIFECYCLE_SCRIPTS = frozenset(
    {
        "preinstall",
        "install",
        "postinstall",
        "prepublish",
        "preprepare",
        "prepare",
        "postprepare",
        "dependencies",
    }
)
INSTALL_FIELDS = (
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "overrides",
    "resolutions",
    "pnpm",
    "packageManager",
    "workspaces",
    "engines",
    "os",
    "cpu",
    "dependenciesMeta",
    "trustedDependencies",
)
CONFIG_FILES = (".npmrc", ".yarnrc", ".yarnrc.yml", "pnpm-workspace.yaml", ".pnpmfile.cjs")
_LOCAL_SPECS = ("file:", "link:", "portal:", "workspace:", "./", "../", "/", "~/")
_CODE_LOADING_NPMRC = (b"node-options", b"script-shell", b"onload-script")
FINGERPRINT_MAX_FILES = 50_000
FINGERPRINT_MAX_BYTES = 512 << 20


class KeyUnavailable(Exception):
    """No key for this project (the message says why); it is installed, not cached."""


@dataclass(frozen=True)
class CacheKey:
    value: str  # "npm-node22-x86_64-<40 hex>"
    scope: str  # SHARED | WORKSPACE
    why: str  # why that scope, for the log


@dataclass(frozen=True)
class Toolchain:
    manager: str  # "npm@10.9.9"
    node_major: str
    platform: str  # "linux-x86_64-glibc2.36"


def platform_tag() -> str:
    try:
        libc = (os.confstr("CS_GNU_LIBC_VERSION") or "").replace(" ", "")
    except (ValueError, OSError):
        libc = ""
    return f"{sys.platform}-{platform.machine()}-{libc or 'nonglibc'}"


class Toolchains:
    """Versions of node and the package managers, found once per PATH (a few tens of
    milliseconds each, on the first prepare only)."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], str] = {}

    async def get(
        self,
        user: procs.AppUser,
        manager: str,
        package_json: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> Toolchain:
        path = env.get("PATH", "")
        node = await self._version(user, ("node", "--version"), env)
        declared = str(package_json.get("packageManager") or "")
        if declared.split("@", 1)[0] == manager and "@" in declared:
            version = declared  # what corepack runs, exactly
        elif manager == "npm":
            version = "npm@" + (npm_version(path) or await self._version(user, ("npm", "-v"), env))
        else:
            version = f"{manager}@" + await self._version(user, (manager, "--version"), env)
        major = node.lstrip("v").split(".", 1)[0]
        if not major.isdigit():
            raise KeyUnavailable(f"cannot tell the Node version from {node!r}")
        return Toolchain(version, major, platform_tag())

    async def _version(
        self, user: procs.AppUser, argv: tuple[str, ...], env: Mapping[str, str]
    ) -> str:
        memo = (argv[0], env.get("PATH", ""))
        if memo in self._versions:
            return self._versions[memo]
        if not shutil.which(argv[0], path=env.get("PATH", "")):
            if argv[0] not in {"pnpm", "yarn"}:
                raise KeyUnavailable(f"{argv[0]} is not installed")
            argv = ("corepack", *argv)
        finished = await procs.run_to_end(
            argv, user=user, env=env, cwd=Path("/"), on_line=lambda _: None, timeout=60
        )
        lines = [line.strip() for line in finished.lines if line.strip()]
        if finished.returncode != 0 or not lines:
            raise KeyUnavailable(f"`{' '.join(argv)}` failed")
        self._versions[memo] = lines[-1]
        return lines[-1]


def npm_version(path: str) -> str | None:
    """npm's version from its own package.json, without starting it (~200 ms)."""
    found = shutil.which("npm", path=path)
    if not found:
        return None
    here = Path(os.path.realpath(found)).parent
    for directory in (here, *list(here.parents)[:2]):
        try:
            data = json.loads((directory / "package.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("name") == "npm":
            return str(data.get("version"))
    return None


def shared_blocker(
    workspace: Path, project: Project, package_json: Mapping[str, Any], lockfile: Any
) -> str | None:
    """Why this install may run code beyond npm itself (None: it cannot)."""
    if project.package_manager != "npm":
        return f"{project.package_manager} lockfiles do not say which packages run scripts"
    if not isinstance(lockfile, dict) or not isinstance(lockfile.get("packages"), dict):
        return "no npm lockfile of version 2 or later"
    scripts = package_json.get("scripts")
    own = sorted(LIFECYCLE_SCRIPTS & set(scripts)) if isinstance(scripts, dict) else []
    if own:
        return f"the project's own {own[0]} script"
    if "workspaces" in package_json:
        return "npm workspaces"
    for field in ("dependencies", "devDependencies", "optionalDependencies"):
        specs = package_json.get(field)
        if isinstance(specs, dict):
            for name, spec in specs.items():
                if str(spec).startswith(_LOCAL_SPECS):
                    return f"local package {name}"
    for name, entry in lockfile["packages"].items():
        if not name or not isinstance(entry, dict):
            continue
        if entry.get("hasInstallScript"):
            return f"{name} has an install script"
        if entry.get("link"):
            return f"{name} is a local link"
        if not entry.get("inBundle") and not (entry.get("resolved") and entry.get("integrity")):
            return f"{name} is not pinned by the lockfile"
    try:
        npmrc = (workspace / ".npmrc").read_bytes()
    except OSError:
        npmrc = b""
    if any(word in npmrc for word in _CODE_LOADING_NPMRC):
        return ".npmrc loads code"
    return None


def install_environment(env: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """What the install's environment adds to the supervisor's own: the user's variables
    and ours — not the container's hostname and the like, which differ per container, nor
    the app user's identity, which is the image's, nor the places under its home the
    supervisor points npm, corepack and XDG programs at (``procs.supervised_config``)."""
    chosen = procs.supervised_config(env.get("HOME", ""))
    return {
        k: v
        for k, v in env.items()
        if base.get(k) != v and k not in {"HOME", "USER", "LOGNAME"} and chosen.get(k) != v
    }


def compute(
    workspace: Path,
    project: Project,
    package_json: Mapping[str, Any],
    toolchain: Toolchain,
    environment: Mapping[str, str],
    owner: int | None,
) -> CacheKey:
    """The key (blocking: reads the lockfile, and for scope ``workspace`` every file)."""
    digest = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        digest.update(b"%s %d\n" % (label.encode(), len(data)))
        digest.update(data)

    feed("format", FORMAT.encode())
    feed(
        "toolchain",
        json.dumps([toolchain.manager, toolchain.node_major, toolchain.platform]).encode(),
    )
    fields = {k: package_json[k] for k in INSTALL_FIELDS if k in package_json}
    scripts = package_json.get("scripts")
    if isinstance(scripts, dict):
        fields["scripts"] = {k: v for k, v in scripts.items() if k in LIFECYCLE_SCRIPTS}
    feed("package.json", json.dumps(fields, sort_keys=True).encode())
    lockfile: Any = None
    if project.lockfile:
        try:
            raw = (workspace / project.lockfile).read_bytes()
        except OSError as exc:
            raise KeyUnavailable(f"cannot read {project.lockfile}: {exc}") from None
        feed(project.lockfile, raw)
        if project.lockfile.endswith(".json"):
            try:
                lockfile = json.loads(raw)
            except ValueError:
                raise KeyUnavailable(f"{project.lockfile} is not valid JSON") from None
    for name in CONFIG_FILES:
        try:
            feed(name, (workspace / name).read_bytes())
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise KeyUnavailable(f"cannot read {name}: {exc}") from None
    feed("environment", json.dumps(sorted(environment.items())).encode())
    blocker = shared_blocker(workspace, project, package_json, lockfile)
    if blocker:
        feed("workspace", fingerprint(workspace, owner))
    arch = platform.machine().lower().replace("_", "")
    value = f"{project.package_manager}-node{toolchain.node_major}-{arch}-{digest.hexdigest()[:40]}"
    return CacheKey(value, WORKSPACE if blocker else SHARED, blocker or "pinned by the lockfile")


def fingerprint(workspace: Path, owner: int | None) -> bytes:
    """A hash of every file in the workspace but node_modules and .git (paths, modes,
    contents, symlink targets). Read as root from a tree user code writes: nothing is
    followed, and only the app user's files are read."""
    digest = hashlib.sha256()
    count = total = 0
    stack = [""]
    while stack:
        relative = stack.pop()
        directory = workspace / relative if relative else workspace
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise KeyUnavailable(f"cannot read {relative or 'the workspace'}: {exc}") from None
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            if path in {"node_modules", ".git"} or entry.name.startswith(".node_modules."):
                continue
            st = entry.stat(follow_symlinks=False)
            count += 1
            if count > FINGERPRINT_MAX_FILES:
                raise KeyUnavailable("the project has too many files to fingerprint")
            if owner is not None and st.st_uid != owner:
                raise KeyUnavailable(f"{path} is not the app user's")
            digest.update(b"%s\0%o\0" % (os.fsencode(path), st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif stat.S_ISLNK(st.st_mode):
                digest.update(os.fsencode(os.readlink(entry.path)) + b"\0")
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > FINGERPRINT_MAX_BYTES:
                    raise KeyUnavailable("the project is too large to fingerprint")
                _hash_file(digest, entry.path, st)
            else:
                raise KeyUnavailable(f"{path} is a device, FIFO or socket")
    return digest.digest()


def _hash_file(digest: Any, path: str, st: os.stat_result) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            raise KeyUnavailable(f"{path} changed while it was read")
        digest.update(b"%d\0" % st.st_size)
        while data := os.read(fd, 1 << 20):
            digest.update(data)
    finally:
        os.close(fd)


async def key_for(
    toolchains: Toolchains,
    user: procs.AppUser,
    workspace: Path,
    project: Project,
    package_json: Mapping[str, Any],
    env: Mapping[str, str],
    base_env: Mapping[str, str],
) -> CacheKey:
    toolchain = await toolchains.get(user, project.package_manager, package_json, env)
    return await asyncio.to_thread(
        compute,
        workspace,
        project,
        package_json,
        toolchain,
        install_environment(env, base_env),
        user.uid,
    )
