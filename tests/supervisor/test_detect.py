"""Project detection: package manager, framework, command, flags and environment."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.detect import (
    Exposure,
    cli_flags,
    detect,
    package_manager_of,
    warnings_for,
    with_turbopack,
)

EXPOSURE = Exposure(port=3000, public_host="abc.preview.localhost:8080", public_port=8080)


def pkg(scripts: dict[str, str] | None = None, **deps: str) -> dict[str, Any]:
    return {"name": "x", "scripts": scripts or {}, "dependencies": deps}


@pytest.mark.parametrize(
    ("files", "field", "expected"),
    [
        ({"package-lock.json"}, None, ("npm", "package-lock.json")),
        ({"pnpm-lock.yaml"}, None, ("pnpm", "pnpm-lock.yaml")),
        ({"yarn.lock"}, None, ("yarn", "yarn.lock")),
        ({"bun.lockb"}, None, ("bun", "bun.lockb")),
        ({"bun.lock"}, None, ("bun", "bun.lock")),
        (set(), None, ("npm", None)),
        (set(), "pnpm@9.12.0+sha512.abc", ("pnpm", None)),
        # the declared manager wins over a stray lockfile of another one
        ({"package-lock.json", "yarn.lock"}, "yarn@4.5.0", ("yarn", "yarn.lock")),
    ],
)
def test_package_manager(files: set[str], field: str | None, expected: tuple[str, Any]) -> None:
    package_json: dict[str, Any] = {"packageManager": field} if field else {}
    assert package_manager_of(package_json, files) == expected


def test_install_commands_follow_the_lockfile() -> None:
    deps = {"react": "^18"}
    assert detect(pkg({"dev": "x"}, **deps), {"package-lock.json"}, EXPOSURE).install == (
        "npm",
        "ci",
        "--no-audit",
        "--no-fund",
    )
    assert detect(pkg({"dev": "x"}, **deps), set(), EXPOSURE).install == (
        "npm",
        "install",
        "--no-audit",
        "--no-fund",
    )
    assert detect(pkg({"dev": "x"}, **deps), {"pnpm-lock.yaml"}, EXPOSURE).install == (
        "pnpm",
        "install",
        "--frozen-lockfile",
    )
    assert detect(pkg({"dev": "x"}, **deps), {"yarn.lock"}, EXPOSURE).install == (
        "yarn",
        "install",
        "--frozen-lockfile",
    )
    berry = {**pkg({"dev": "x"}, **deps), "packageManager": "yarn@4.1.0"}
    assert detect(berry, {"yarn.lock"}, EXPOSURE).install == ("yarn", "install", "--immutable")
    assert detect(pkg({"dev": "x"}, **deps), {"bun.lock"}, EXPOSURE).install == (
        "bun",
        "install",
        "--frozen-lockfile",
    )
    # nothing declared: nothing to install
    assert detect(pkg({"dev": "node server.js"}), set(), EXPOSURE).install is None


def test_vite_react_gets_host_port_and_allowed_host() -> None:
    project = detect(pkg({"dev": "vite"}, react="^19", vite="^7"), {"package-lock.json"}, EXPOSURE)
    assert project.framework == "vite-react"
    assert project.command == (
        "npm",
        "run",
        "dev",
        "--",
        "--host",
        "0.0.0.0",
        "--port",
        "3000",
        "--strictPort",
    )
    assert project.env["__VITE_ADDITIONAL_SERVER_ALLOWED_HOSTS"] == "abc.preview.localhost"
    assert project.env["PORT"] == "3000" and project.env["HOST"] == "0.0.0.0"


@pytest.mark.parametrize(
    ("deps", "framework"),
    [
        ({"vue": "^3", "vite": "^6"}, "vite-vue"),
        ({"svelte": "^5", "vite": "^6"}, "vite-svelte"),
        ({"solid-js": "^1", "vite": "^6"}, "vite-solid"),
        ({"vite": "^7"}, "vite"),
    ],
)
def test_vite_flavours(deps: dict[str, str], framework: str) -> None:
    project = detect(pkg({"dev": "vite"}, **deps), set(), EXPOSURE)
    assert project.framework == framework
    assert "--strictPort" in project.command


def test_pnpm_passes_flags_without_double_dash() -> None:
    project = detect(pkg({"dev": "vite"}, vite="^7"), {"pnpm-lock.yaml"}, EXPOSURE)
    assert project.command[:3] == ("pnpm", "run", "dev")
    assert "--" not in project.command
    assert project.command[3:] == ("--host", "0.0.0.0", "--port", "3000", "--strictPort")


def test_next() -> None:
    project = detect(
        pkg({"dev": "next dev --turbopack"}, next="15.3.2", react="^19"), set(), EXPOSURE
    )
    assert project.framework == "next"
    assert project.framework_package == "next"
    assert project.command[-4:] == ("-H", "0.0.0.0", "-p", "3000")
    assert project.env["ALLOWED_DEV_ORIGINS"] == "abc.preview.localhost"


def test_create_react_app_is_configured_by_environment() -> None:
    project = detect(
        pkg({"start": "react-scripts start"}, **{"react-scripts": "5.0.1"}), set(), EXPOSURE
    )
    assert project.framework == "create-react-app"
    assert project.command == ("npm", "run", "start")
    assert project.env["DANGEROUSLY_DISABLE_HOST_CHECK"] == "true"
    assert project.env["WDS_SOCKET_PORT"] == "8080"
    assert project.env["BROWSER"] == "none"
    https = Exposure(port=3000, public_host="x.example.com", public_scheme="https")
    assert (
        detect(pkg({"start": "react-scripts start"}, **{"react-scripts": "5"}), set(), https).env[
            "WDS_SOCKET_PORT"
        ]
        == "443"
    )


@pytest.mark.parametrize(
    ("deps", "script", "framework", "flags"),
    [
        ({"nuxt": "^3"}, "nuxt dev", "nuxt", ("--host", "0.0.0.0", "--port", "3000")),
        ({"nuxt": "^3"}, "nuxi dev", "nuxt", ("--host", "0.0.0.0", "--port", "3000")),
        (
            {"@sveltejs/kit": "^2", "vite": "^6"},
            "vite dev",
            "sveltekit",
            ("--host", "0.0.0.0", "--port", "3000", "--strictPort"),
        ),
        ({"astro": "^5"}, "astro dev", "astro", ("--host", "0.0.0.0", "--port", "3000")),
        (
            {"@angular/core": "^19", "@angular/cli": "^19"},
            "ng serve",
            "angular",
            ("--host", "0.0.0.0", "--port", "3000", "--disable-host-check"),
        ),
        (
            {"@remix-run/dev": "^2", "vite": "^5"},
            "remix vite:dev",
            "remix",
            ("--host", "0.0.0.0", "--port", "3000", "--strictPort"),
        ),
        (
            {"@react-router/dev": "^7"},
            "react-router dev",
            "react-router",
            ("--host", "0.0.0.0", "--port", "3000", "--strictPort"),
        ),
    ],
)
def test_frameworks(
    deps: dict[str, str], script: str, framework: str, flags: tuple[str, ...]
) -> None:
    project = detect(pkg({"dev": script}, **deps), set(), EXPOSURE)
    assert project.framework == framework
    assert project.command == ("npm", "run", "dev", "--", *flags)
    if framework in {"nuxt", "sveltekit", "astro", "remix", "react-router"}:
        assert project.env["__VITE_ADDITIONAL_SERVER_ALLOWED_HOSTS"] == "abc.preview.localhost"


def test_plain_node_project() -> None:
    project = detect(pkg({"dev": "node server.js", "start": "node prod.js"}), set(), EXPOSURE)
    assert project.framework == "node"
    assert project.command == ("npm", "run", "dev")  # dev wins over start
    assert project.env["PORT"] == "3000"
    start_only = detect(pkg({"start": "node index.js"}), set(), EXPOSURE)
    assert start_only.command == ("npm", "run", "start")
    bare = detect({"name": "x"}, {"package.json", "server.js"}, EXPOSURE)
    assert bare.command == ("node", "server.js") and bare.problem is None


def test_nothing_to_run_is_a_problem_a_person_can_act_on() -> None:
    assert "no package.json" in (detect(None, {"index.html"}, EXPOSURE).problem or "")
    assert '"dev"' in (detect({"name": "x"}, {"package.json"}, EXPOSURE).problem or "")


def test_flags_go_to_the_last_command_and_respect_the_projects_own_port() -> None:
    assert cli_flags("tsc && vite", 4000)[-2:] == ("4000", "--strictPort")
    assert cli_flags("cross-env NODE_ENV=development vite --mode dev", 4000)[0] == "--host"
    assert cli_flags("vite --port 5173", 4000) == ()  # the project chose; we do not fight it
    assert cli_flags("vite build", 4000) == ()
    assert cli_flags("node server.js", 4000) == ()
    assert cli_flags("next start", 4000) == ()


@pytest.mark.parametrize(
    ("version", "warned"),
    [
        ("16.0.3", True),
        ("16.1.0", True),
        ("^16.1.2", True),
        ("16.2.0", False),
        ("15.3.4", False),
        (None, False),
    ],
)
def test_next_16_early_releases_warn(version: str | None, warned: bool) -> None:
    found = warnings_for("next", version)
    assert bool(found) is warned
    if warned:
        assert "16.2" in found[0][1] and "15.3" in found[0][1]
    assert warnings_for("vite", version) == []


@pytest.mark.parametrize(
    ("script", "version", "turbopack"),
    [
        ("next dev", "15.5.4", True),
        ("NODE_OPTIONS=--inspect next dev", "^15.0.0", True),
        ("next dev --turbopack", "15.5.4", False),  # the project's own choice, as it is
        ("next dev --webpack", "15.5.4", False),
        ("next dev", "16.0.3", False),  # Turbopack already
        ("next dev", "14.2.0", False),
        ("node server.js", "15.5.4", False),
    ],
)
def test_turbopack_only_when_chosen_and_the_project_did_not(
    script: str, version: str, turbopack: bool
) -> None:
    package = pkg({"dev": script}, next=version)
    project = detect(package, set(), EXPOSURE)
    changed = with_turbopack(project, package)
    assert (changed.command[-1] == "--turbopack") is turbopack
    assert changed.command.count("--") <= 1
    if turbopack:
        assert changed.command[:-1] == project.command  # only appended
    else:
        assert changed == project
