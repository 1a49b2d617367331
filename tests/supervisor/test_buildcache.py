"""Build caches (supervisor/buildcache.py) with a real supervisor, a real npm install and a
dev server that behaves like Next.js's towards .next/cache: it reads what is there at boot
and writes its own. A project detected as Next.js (its "next" is a local package, so no
registry is needed) is started, reset, and started again: for the same user's same
project the cache comes back; for another user it never does; a corrupt archive means a
fresh build and a start that still succeeds."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import secrets
import time
from pathlib import Path
from typing import Any

from supervisor.buildcache import SETTLE_MAX, SETTLE_QUIET, cache_key, dirs_for
from tests.supervisor.conftest import SupervisorProcess
from tests.supervisor.test_daemon import get, prepare_args

# Says what it found in .next/cache at boot (build-cache.json), then writes its own entry.
SERVER = """
const fs = require("fs"), http = require("http");
let found = null;
try { found = fs.readFileSync(".next/cache/compiled.txt", "utf8"); } catch (e) {}
const key = process.env.NEXT_SERVER_ACTIONS_ENCRYPTION_KEY || null;
fs.writeFileSync("build-cache.json", JSON.stringify({found, key}));
fs.mkdirSync(".next/cache/webpack", {recursive: true});
fs.writeFileSync(".next/cache/compiled.txt", process.env.MARK || "unmarked");
fs.writeFileSync(".next/cache/webpack/0.pack", "x".repeat(200000));
http.createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT));
"""


# As webpack stores its cache 1 s after a large compile: GET /compile prints a line, and a
# second later a pack is written in 9 parts 0.2 s apart, "END" last (GET /forever: without
# end). At boot it says what pack it found.
STORING_SERVER = """
const fs = require("fs"), http = require("http");
let found = null;
try { found = fs.readFileSync(".next/cache/webpack/1.pack", "utf8"); } catch (e) {}
fs.writeFileSync("build-cache.json", JSON.stringify({found}));
http.createServer((q, s) => {
  if (q.url === "/compile" || q.url === "/forever") {
    console.log("compiled " + q.url);
    setTimeout(() => {
      fs.mkdirSync(".next/cache/webpack", {recursive: true});
      let n = 0;
      const part = () => {
        fs.appendFileSync(".next/cache/webpack/1.pack", n < 8 ? "x".repeat(1000) : "END");
        if (n++ < 8 || q.url === "/forever") setTimeout(part, 200);
      };
      part();
    }, 1000);
  }
  s.end("ok");
}).listen(Number(process.env.PORT));
"""


def next_project(sup: SupervisorProcess, mark: str, server: str = SERVER) -> None:
    package = {
        "name": "app",
        "scripts": {"dev": f"MARK={mark} node server.js"},
        "dependencies": {"next": "file:./fake-next"},
    }
    sup.write("package.json", json.dumps(package))
    sup.write("server.js", server)
    sup.write("fake-next/package.json", json.dumps({"name": "next", "version": "15.5.0"}))


def found_at_boot(sup: SupervisorProcess) -> str | None:
    found: str | None = json.loads((sup.workspace / "build-cache.json").read_text())["found"]
    return found


def key_at_boot(sup: SupervisorProcess) -> str:
    """The Server Actions key the dev server was given (Next salts its webpack cache's
    version with it: supervisor/buildenv.py)."""
    key: str = json.loads((sup.workspace / "build-cache.json").read_text())["key"]
    assert len(base64.b64decode(key, validate=True)) == 32
    return key


def archive_of(sup: SupervisorProcess, owner: str, project: str) -> Path:
    key = cache_key(f"{owner}\x00{project}", "next")
    return Path(sup.env["PREVIEW_CACHE_DIR"]) / "deps" / "v1" / key[-40:-38] / f"{key}.tar.zst"


async def start(
    sup: SupervisorProcess, session: str, owner: str, mark: str, server: str = SERVER
) -> dict[str, Any]:
    next_project(sup, mark, server)
    result = await sup.send(
        "prepare",
        prepare_args(session_id=session, project_id="p1", owner=owner),
        timeout=180,
    )
    assert result.ok, (result, sup.log()[-3000:])
    assert result.result["framework"] == "next"
    return result.result


async def reset(sup: SupervisorProcess) -> dict[str, Any]:
    done = await sup.send("reset", {"keep_node_modules": True}, timeout=120)
    assert done.ok, done
    return done.result


async def test_same_user_and_project_get_their_build_cache_back(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    first = await start(sup, "s1", "alice", "first")
    assert first["build_cache"] == "none" and found_at_boot(sup) is None
    key = key_at_boot(sup)
    assert (await reset(sup))["build_cache"] == "packed"
    assert not (sup.workspace / ".next").exists()  # reset emptied the workspace
    assert archive_of(sup, "alice", "p1").is_file()

    second = await start(sup, "s2", "alice", "second")
    assert second["build_cache"] == "restored"
    assert "build_cache" in second["timings_ms"]
    assert found_at_boot(sup) == "first"  # what the first start compiled
    assert key_at_boot(sup) == key  # so Next's webpack cache matches its version

    # Another user's start on this host, even of a project with the same name: never.
    await reset(sup)
    other = await start(sup, "s3", "mallory", "mallory")
    assert other["build_cache"] == "none" and found_at_boot(sup) is None
    assert key_at_boot(sup) != key


async def test_the_kept_key_is_never_read_through_a_link(sup_factory: Any) -> None:
    """User code plants the key file as a symlink to a root-only file that holds a valid
    key (a secret of ours, say): the dev server never gets that file's content, and the
    file is not written through the link either."""
    sup: SupervisorProcess = sup_factory()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    target = sup.workspace.parent / f"pv-root-only-{secrets.token_hex(4)}"
    target.write_text(secret)
    target.chmod(0o600)
    try:
        cache = sup.workspace / ".next" / "cache"
        cache.mkdir(parents=True)
        app = sup.env.get("PREVIEW_APP_USER")
        if app:
            entry = pwd.getpwnam(app)
            for path in (cache.parent, cache):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        (cache / "preview-server-actions-key").symlink_to(target)
        await start(sup, "s1", "eve", "eve")
        assert key_at_boot(sup) != secret
        assert target.read_text() == secret
    finally:
        target.unlink()


async def test_the_projects_own_key_wins(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    own = base64.b64encode(b"k" * 32).decode()
    next_project(sup, "own")
    args = prepare_args(session_id="s1", project_id="p1", owner="alice")
    result = await sup.send(
        "prepare", {**args, "env": {"NEXT_SERVER_ACTIONS_ENCRYPTION_KEY": own}}, timeout=180
    )
    assert result.ok, result
    assert key_at_boot(sup) == own


async def test_a_corrupt_build_cache_means_a_fresh_build(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    await start(sup, "s1", "alice", "first")
    assert (await reset(sup))["build_cache"] == "packed"
    archive = archive_of(sup, "alice", "p1")
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one flipped byte inside the compressed frame
    archive.write_bytes(bytes(data))

    again = await start(sup, "s2", "alice", "second")
    assert again["build_cache"] == "corrupt"
    assert found_at_boot(sup) is None  # nothing half-restored: a fresh build
    assert not archive.exists()  # dropped, the next reset packs a good one
    logs = await sup.send("logs", {"lines": 100})
    assert any("build cache dropped" in line for line in logs.result["lines"])


async def test_a_reset_lets_the_dev_server_finish_writing_its_cache(sup_factory: Any) -> None:
    """A reset right after a compile waits for the cache the dev server writes then, so
    the next start gets the whole pack (a stop cut it short, or came before it began)."""
    sup: SupervisorProcess = sup_factory()
    await start(sup, "s1", "alice", "first", STORING_SERVER)
    assert await asyncio.to_thread(get, sup, "/compile") == "ok"
    done = await reset(sup)
    assert done["build_cache"] == "packed"
    assert SETTLE_QUIET * 1000 < done["settled_ms"] <= SETTLE_MAX * 1000, done

    await start(sup, "s2", "alice", "second", STORING_SERVER)
    assert found_at_boot(sup) == "x" * 8000 + "END"


async def test_a_dev_server_writing_without_end_holds_a_reset_only_so_long(
    sup_factory: Any,
) -> None:
    sup: SupervisorProcess = sup_factory()
    await start(sup, "s1", "mallory", "first", STORING_SERVER)
    assert await asyncio.to_thread(get, sup, "/forever") == "ok"
    began = time.monotonic()
    done = await reset(sup)
    assert done["settled_ms"] == SETTLE_MAX * 1000
    assert time.monotonic() - began < SETTLE_MAX + 10  # the stop and the pack follow


def test_caches_by_framework() -> None:
    assert dirs_for("next") == (".next/cache", ".next/dev/cache")
    assert "node_modules/.vite" in dirs_for("vite-react")
    assert set(dirs_for("sveltekit")) == {".svelte-kit", "node_modules/.vite"}
    assert ".nuxt" in dirs_for("nuxt")
    assert dirs_for("node") == () and dirs_for(None) == ()
    # Keyed by owner (user and project) and framework.
    assert cache_key("a\x00p", "next") != cache_key("b\x00p", "next")
    assert cache_key("a\x00p", "next") != cache_key("a\x00q", "next")


async def test_nothing_kept_without_an_owner(sup_factory: Any) -> None:
    """A prepare that names no user (only a project) cannot tell users apart."""
    sup: SupervisorProcess = sup_factory()
    await start(sup, "s1", "", "first")
    assert (await reset(sup))["build_cache"] == "none"
