"""Project detection: package manager, framework, and how to run its dev server so that it
listens on 0.0.0.0:PORT and accepts the preview's public host. Pure: no I/O.

How each framework is told (checked against their sources):

- Vite (and Vite-based SvelteKit, Astro, Nuxt, Remix/React Router, SolidStart): CLI flags
  ``--host 0.0.0.0 --port P --strictPort``. Vite appends the single host in
  ``__VITE_ADDITIONAL_SERVER_ALLOWED_HOSTS`` to ``server.allowedHosts`` (vite
  ``resolveServerOptions``). HMR needs nothing: when ``server.hmr`` is not configured the
  client connects to ``importMetaUrl.hostname:port``, i.e. the page's host and port — the
  gateway's — which is right behind our proxy. ``server.hmr.clientPort`` exists only in
  the config file; a project that sets it to something else breaks HMR here.
- Next.js: ``next dev -H 0.0.0.0 -p P``. ``allowedDevOrigins`` is read only from
  next.config; Next allows ``localhost`` and ``*.localhost`` itself, so previews under
  ``*.preview.localhost`` work. For other domains the project's next.config must list the
  host (we export ``ALLOWED_DEV_ORIGINS``, which many configs read by convention).
- Create React App: environment only (HOST, PORT, BROWSER=none,
  DANGEROUSLY_DISABLE_HOST_CHECK=true, WDS_SOCKET_PORT = the public port).
- Angular: ``ng serve --host 0.0.0.0 --port P --disable-host-check``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

LOCKFILES = (
    ("pnpm-lock.yaml", "pnpm"),
    ("yarn.lock", "yarn"),
    ("bun.lock", "bun"),
    ("bun.lockb", "bun"),
    ("package-lock.json", "npm"),
    ("npm-shrinkwrap.json", "npm"),
)
PACKAGE_MANAGERS = ("npm", "pnpm", "yarn", "bun")
SCRIPTS = ("dev", "start", "serve")

_VITE_FLAGS = ("--host", "0.0.0.0", "--port", "{port}", "--strictPort")
_HOST_PORT = ("--host", "0.0.0.0", "--port", "{port}")
# First word of the dev script (and its subcommand, if any) -> flags it understands.
_CLI_FLAGS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("vite", None): _VITE_FLAGS,
    ("vite", "dev"): _VITE_FLAGS,
    ("vite", "serve"): _VITE_FLAGS,
    ("next", "dev"): ("-H", "0.0.0.0", "-p", "{port}"),
    ("nuxt", "dev"): _HOST_PORT,
    ("nuxi", "dev"): _HOST_PORT,
    ("astro", "dev"): _HOST_PORT,
    ("ng", "serve"): (*_HOST_PORT, "--disable-host-check"),
    ("remix", "vite:dev"): _VITE_FLAGS,
    ("react-router", "dev"): _VITE_FLAGS,
    ("vinxi", "dev"): _HOST_PORT,
    ("webpack", "serve"): (*_HOST_PORT, "--allowed-hosts", "all"),
    ("webpack-dev-server", None): (*_HOST_PORT, "--allowed-hosts", "all"),
}
_VITE_BASED = {"vite", "sveltekit", "astro", "nuxt", "remix", "react-router", "solid-start"}


@dataclass(frozen=True)
class Exposure:
    """Where the dev server listens and how the browser reaches it through the gateway."""

    port: int
    public_host: str = ""  # "abc.preview.localhost:8080"
    public_port: int = 0  # 0: the scheme's default
    public_scheme: str = "http"

    @property
    def hostname(self) -> str:
        host = self.public_host
        if host.startswith("["):
            return host[1 : host.find("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @property
    def browser_port(self) -> int:
        return self.public_port or (443 if self.public_scheme == "https" else 80)


@dataclass(frozen=True)
class Project:
    package_manager: str
    framework: str
    framework_package: str | None = None  # the package whose version is the framework's
    framework_version: str | None = None  # its version spec in package.json
    lockfile: str | None = None
    install: tuple[str, ...] | None = None  # None: nothing to install
    script: str | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why it cannot run at all

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def package_manager_of(package_json: Mapping[str, Any], files: set[str]) -> tuple[str, str | None]:
    """(package manager, its lockfile): the ``packageManager`` field wins, then lockfiles."""
    declared = str(package_json.get("packageManager") or "").split("@", 1)[0].strip()
    for lockfile, manager in LOCKFILES:
        if lockfile in files and (not declared or declared == manager):
            return manager, lockfile
    if declared in PACKAGE_MANAGERS:
        return declared, None
    return "npm", None


def _dependencies(package_json: Mapping[str, Any]) -> dict[str, str]:
    deps: dict[str, str] = {}
    for section in ("devDependencies", "dependencies"):
        value = package_json.get(section)
        if isinstance(value, dict):
            deps.update({str(k): str(v) for k, v in value.items()})
    return deps


def framework_of(deps: Mapping[str, str]) -> tuple[str, str | None]:
    """(framework, the package whose version says which release) from dependencies."""
    ordered = (
        ("next", "next"),
        ("nuxt", "nuxt"),
        ("nuxt3", "nuxt"),
        ("@sveltejs/kit", "sveltekit"),
        ("astro", "astro"),
        ("@angular/core", "angular"),
        ("@react-router/dev", "react-router"),
        ("@remix-run/dev", "remix"),
        ("@solidjs/start", "solid-start"),
        ("react-scripts", "create-react-app"),
    )
    for package, name in ordered:
        if package in deps:
            return name, package
    if "vite" in deps:
        for package, flavour in (
            ("react", "react"),
            ("vue", "vue"),
            ("svelte", "svelte"),
            ("solid-js", "solid"),
        ):
            if package in deps:
                return f"vite-{flavour}", "vite"
        return "vite", "vite"
    return "node", None


def _last_command(script: str) -> list[str]:
    """Words of the last command of a shell script line, without leading ``VAR=x`` and
    ``cross-env``/``npx`` wrappers: that is where npm appends extra arguments."""
    last = re.split(r"&&|\|\||;|\|", script)[-1]
    try:
        words = shlex.split(last)
    except ValueError:
        words = last.split()
    while words and (
        re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])
        or words[0]
        in {
            "cross-env",
            "npx",
            "exec",
            "env",
        }
    ):
        words.pop(0)
    return words


def cli_flags(script: str, port: int) -> tuple[str, ...]:
    words = _last_command(script)
    if not words:
        return ()
    cli = words[0].rsplit("/", 1)[-1]
    sub = next((w for w in words[1:] if not w.startswith("-")), None)
    flags = _CLI_FLAGS.get((cli, sub)) or (_CLI_FLAGS.get((cli, None)) if sub is None else None)
    if flags is None and cli == "vite" and sub not in {"build", "preview", "optimize"}:
        flags = _VITE_FLAGS  # `vite --mode x` or `vite src`: the dev server all the same
    present = set(words)
    if flags and ("--port" in present or "-p" in present):
        return ()  # the project chose its own; do not fight it with duplicates
    return tuple(f.format(port=port) for f in flags or ())


def run_command(manager: str, script: str, flags: tuple[str, ...]) -> tuple[str, ...]:
    if manager == "npm":
        return ("npm", "run", script, *(("--", *flags) if flags else ()))
    return (manager, "run", script, *flags)


def install_command(
    manager: str, lockfile: str | None, package_json: Mapping[str, Any], files: set[str]
) -> tuple[str, ...] | None:
    if not _dependencies(package_json) and not package_json.get("optionalDependencies"):
        return None
    if manager == "npm":
        return ("npm", "ci" if lockfile else "install", "--no-audit", "--no-fund")
    if manager == "yarn":
        declared = str(package_json.get("packageManager") or "")
        berry = ".yarnrc.yml" in files or bool(re.match(r"yarn@([2-9]|\d\d)", declared))
        if not lockfile:
            return ("yarn", "install")
        return ("yarn", "install", "--immutable" if berry else "--frozen-lockfile")
    return (manager, "install", *(("--frozen-lockfile",) if lockfile else ()))


def dev_environment(framework: str, exposure: Exposure) -> dict[str, str]:
    env = {"PORT": str(exposure.port), "HOST": "0.0.0.0", "BROWSER": "none"}
    hostname = exposure.hostname
    if framework in _VITE_BASED or framework.startswith("vite"):
        if hostname:
            env["__VITE_ADDITIONAL_SERVER_ALLOWED_HOSTS"] = hostname
    if framework == "create-react-app":
        env["DANGEROUSLY_DISABLE_HOST_CHECK"] = "true"
        env["WDS_SOCKET_PORT"] = str(exposure.browser_port)
    if framework == "next":
        env["NEXT_TELEMETRY_DISABLED"] = "1"
        if hostname:
            env["ALLOWED_DEV_ORIGINS"] = hostname
    if framework == "nuxt":
        env["NUXT_TELEMETRY_DISABLED"] = "1"
    if framework == "astro":
        env["ASTRO_TELEMETRY_DISABLED"] = "1"
    if framework == "angular":
        env["NG_CLI_ANALYTICS"] = "false"
    return env


def detect(package_json: Mapping[str, Any] | None, files: set[str], exposure: Exposure) -> Project:
    """How to install and run the project whose root holds ``files``."""
    if package_json is None:
        problem = "no package.json in the project root: nothing to run"
        return Project("npm", "unknown", problem=problem)
    manager, lockfile = package_manager_of(package_json, files)
    deps = _dependencies(package_json)
    framework, version_package = framework_of(deps)
    install = install_command(manager, lockfile, package_json, files)
    scripts = package_json.get("scripts")
    scripts = scripts if isinstance(scripts, dict) else {}
    script = next((s for s in SCRIPTS if isinstance(scripts.get(s), str)), None)
    base = Project(
        package_manager=manager,
        framework=framework,
        framework_package=version_package,
        framework_version=deps.get(version_package) if version_package else None,
        lockfile=lockfile,
        install=install,
        env=dev_environment(framework, exposure),
    )
    if script is not None:
        flags = cli_flags(str(scripts[script]), exposure.port)
        return replace(base, script=script, command=run_command(manager, script, flags))
    for entry in ("server.js", "index.js", "main.js"):
        if entry in files:
            return replace(base, command=("node", entry))
    problem = 'package.json has no "dev", "start" or "serve" script and there is no server.js'
    return replace(base, problem=problem)


def with_turbopack(project: Project, package_json: Mapping[str, Any]) -> Project:
    """Next.js 15's dev server on Turbopack (``next dev --turbopack``), when the operator
    opted in (PREVIEW_NEXT_TURBOPACK) and the project chose no bundler itself. Next 16
    uses Turbopack already; other majors are left as they are."""
    version = _version(project.framework_version or "")
    if project.framework != "next" or not version or version[0] != 15 or not project.script:
        return project
    scripts = package_json.get("scripts")
    script = str(scripts.get(project.script, "")) if isinstance(scripts, dict) else ""
    words = _last_command(script)
    if words[:2] != ["next", "dev"] or {"--turbo", "--turbopack", "--webpack"} & set(words):
        return project
    command = project.command
    if "--" not in command:  # npm: flags follow "--"; others take them as they are
        command = (*command, "--") if command[:2] == ("npm", "run") else command
    return replace(project, command=(*command, "--turbopack"))


def _version(spec: str) -> tuple[int, int] | None:
    found = re.search(r"(\d+)\.(\d+)", spec)
    return (int(found[1]), int(found[2])) if found else None


def warnings_for(framework: str, version: str | None) -> list[tuple[str, str]]:
    """(type, message) warnings about a framework release; ``version`` is the installed
    one when known, else the spec from package.json."""
    found = _version(version or "")
    if framework == "next" and found in {(16, 0), (16, 1)}:
        return [
            (
                "framework_version",
                f"Next.js {version} has known dev-server hangs; use 15.3 or 16.2 and newer.",
            )
        ]
    return []
