"""Commands across supervisor restarts (exactly once), write_files refusals, and reset."""

from __future__ import annotations

import io
import json
import pwd
import shutil
import tarfile
import time
from typing import Any

import zstandard

from shared import keys
from shared.messages import Command, CommandResult
from tests.supervisor.conftest import SupervisorProcess, b64, make_dir, proc_alive
from tests.supervisor.test_daemon import FLAKY_SERVER, get, node_project, prepare_args
from tests.utils import async_wait_until

SLOWER_SERVER = """
const fs = require("fs"), http = require("http");
fs.appendFileSync("starts.log", Date.now() + "\\n");
setTimeout(() => http.createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT)), 3000);
"""


def starts(sup: SupervisorProcess) -> int:
    path = sup.workspace / "starts.log"
    return len(path.read_text().split()) if path.exists() else 0


async def answers(sup: SupervisorProcess, command: Command) -> int:
    return int(await sup.redis.llen(keys.command_result(sup.cid, command.id)))


async def settled(sup: SupervisorProcess) -> None:
    """A round trip through a fresh supervisor: its pending entries are behind it."""
    assert (await sup.send("logs", {"lines": 1}, timeout=20)).ok


async def test_command_issued_while_stopped_runs_exactly_once(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, FLAKY_SERVER)
    assert (await sup.send("prepare", prepare_args())).ok
    assert starts(sup) == 1
    sup.kill9()
    restart = await sup.submit("restart")  # nobody is listening
    sup.start()
    result = await sup.result(restart, timeout=30)
    assert result.ok, result
    assert starts(sup) == 2 and get(sup) == "ok"
    assert await sup.redis.hexists(keys.command_done(sup.cid), restart.id)
    sup.kill9()
    sup.start()
    await settled(sup)
    assert starts(sup) == 2
    assert await answers(sup, restart) == 0  # popped above, never pushed again
    pending = await sup.redis.xpending(keys.commands(sup.cid), keys.COMMAND_GROUP)
    assert pending["pending"] == 0


async def test_interrupted_command_is_finished_by_the_next_supervisor(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, SLOWER_SERVER)
    prepare = await sup.submit("prepare", prepare_args())

    async def started() -> bool:
        return starts(sup) == 1

    await async_wait_until(started, 20, "the dev server to start")
    sup.kill9()  # mid-prepare: delivered, not acknowledged
    sup.start()
    result = await sup.result(prepare, timeout=60)
    assert result.ok, result
    assert starts(sup) == 2  # the interrupted attempt, and the one that finished
    sup.kill9()
    sup.start()
    await settled(sup)
    assert starts(sup) == 2
    assert await answers(sup, prepare) == 0


async def test_recorded_command_is_answered_not_run_again(sup_factory: Any) -> None:
    """Died after recording the result but before acknowledging: the done record wins."""
    sup: SupervisorProcess = sup_factory()
    await sup.wait_heartbeat()  # the group exists
    sup.stop()
    command = await sup.submit("write_files", {"files": {"ran.txt": b64("x")}})
    await sup.redis.xreadgroup(keys.COMMAND_GROUP, sup.cid, {keys.commands(sup.cid): ">"})
    recorded = CommandResult(command.id, True, {"files": 1, "bytes": 1}).to_json()
    await sup.redis.hset(keys.command_done(sup.cid), command.id, recorded)
    sup.start()
    result = await sup.result(command, timeout=20)
    assert result.ok and result.result == {"files": 1, "bytes": 1}
    await settled(sup)
    assert not (sup.workspace / "ran.txt").exists()
    pending = await sup.redis.xpending(keys.commands(sup.cid), keys.COMMAND_GROUP)
    assert pending["pending"] == 0


def tar(members: list[tuple[str, bytes | str]], compress: bool = False) -> bytes:
    """Files (bytes) and symlinks (str target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    return zstandard.ZstdCompressor().compress(data) if compress else data


async def test_write_files_refuses_escapes_and_writes_nothing(
    sup_factory: Any, sup_app_user: str
) -> None:
    sup: SupervisorProcess = sup_factory()
    outside = make_dir("pv-sup-outside-")
    try:
        (sup.workspace / "link").symlink_to(outside)  # as user code could have
        refusals = {
            "../escape.txt": "escapes the workspace",
            "/etc/evil.txt": "absolute path",
            "link/pwned.txt": "symlink",
        }
        for path, message in refusals.items():
            result = await sup.send("write_files", {"files": {"ok.txt": b64("1"), path: b64("x")}})
            assert not result.ok and message in (result.error or ""), result
            assert "nothing was written" in (result.error or "")
        out_link = tar([("fine.txt", b"1"), ("evil", "../../../etc")], compress=True)
        result = await sup.send("write_files", {"blob": True}, blob=out_link)
        assert not result.ok and "outside the workspace" in (result.error or "")
        assert sorted(p.name for p in sup.workspace.iterdir()) == ["link"]
        assert list(outside.iterdir()) == []
        assert not (sup.workspace.parent / "escape.txt").exists()

        good = tar([("src/app.js", b"console.log(1)"), ("src/alias.js", "app.js")], compress=True)
        result = await sup.send("write_files", {"blob": True, "mode": "merge"}, blob=good)
        assert result.ok and result.result == {"files": 2, "bytes": 14}
        written = sup.workspace / "src" / "app.js"
        assert written.read_text() == "console.log(1)"
        if sup_app_user:
            assert written.stat().st_uid == pwd.getpwnam(sup_app_user).pw_uid
        result = await sup.send("write_files", {"files": {"src/app.js": b64("console.log(2)")}})
        assert result.ok and written.read_text() == "console.log(2)"
        replaced = await sup.send(
            "write_files", {"blob": True, "mode": "replace"}, blob=tar([("new.txt", b"n")])
        )
        assert replaced.ok
        assert sorted(p.name for p in sup.workspace.iterdir()) == ["new.txt"]
        missing = await sup.send("write_files", {"blob": True})
        assert not missing.ok and "missing" in (missing.error or "")
    finally:
        shutil.rmtree(outside, ignore_errors=True)


LOCAL_DEP_PROJECT = {
    "package.json": json.dumps(
        {
            "name": "with-dep",
            "scripts": {"dev": "node server.js"},
            "dependencies": {"local-dep": "file:./vendor/local-dep"},
        }
    ),
    "vendor/local-dep/package.json": json.dumps({"name": "local-dep", "version": "1.0.0"}),
    "vendor/local-dep/index.js": "module.exports = 'from local-dep';",
    "server.js": "require('http').createServer((q, s) => s.end(require('local-dep')))"
    ".listen(Number(process.env.PORT));",
}


async def test_reset_keeps_node_modules_for_the_same_project(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    files = {path: b64(text) for path, text in LOCAL_DEP_PROJECT.items()}
    assert (await sup.send("write_files", {"files": files})).ok
    first = await sup.send("prepare", prepare_args(), timeout=120)
    assert first.ok, first
    assert first.result["dependencies"] == "installed"
    assert get(sup) == "from local-dep"
    key = first.result["node_modules_key"]
    assert key and key.startswith("p1:")
    pid = (await sup.wait_heartbeat(state="ready")).pid

    reset = await sup.send(
        "reset", {"keep_node_modules": True, "node_modules_budget_bytes": 1 << 30}
    )
    assert reset.ok, reset
    assert reset.result["kept_node_modules"] is True and reset.result["node_modules_key"] == key
    assert [p.name for p in sup.workspace.iterdir()] == ["node_modules"]
    hb = await sup.wait_heartbeat(state="idle", session_id=None)
    assert hb.node_modules_key == key and hb.project_id is None and hb.pid is None
    assert pid is not None and not proc_alive(pid)
    assert (await sup.send("logs")).result["lines"] == []  # the next user sees nothing

    assert (await sup.send("write_files", {"files": files})).ok
    second = await sup.send("prepare", prepare_args(session_id="s2"), timeout=120)
    assert second.ok and second.result["dependencies"] == "skipped"
    assert get(sup) == "from local-dep"

    # Someone else's project by the same name: the kept tree (which the first user's
    # install and code could have changed) is not theirs to run.
    planted = sup.workspace / "node_modules" / "planted.js"
    planted.write_text("tampered")
    keep = {"keep_node_modules": True, "node_modules_budget_bytes": 1 << 30}
    assert (await sup.send("reset", keep)).result["kept_node_modules"] is True
    assert (await sup.send("write_files", {"files": files})).ok
    other = await sup.send("prepare", prepare_args(session_id="s3", owner="u2"), timeout=120)
    assert other.ok and other.result["dependencies"] in ("restored", "installed"), other
    assert not planted.exists() and get(sup) == "from local-dep"

    over = await sup.send("reset", {"keep_node_modules": True, "node_modules_budget_bytes": 1})
    assert over.ok and over.result["kept_node_modules"] is False
    assert list(sup.workspace.iterdir()) == []
    await sup.wait_heartbeat(state="idle", node_modules_key=None)


async def test_write_files_is_not_held_up_by_an_install(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    project = json.loads(LOCAL_DEP_PROJECT["package.json"])
    # The project's own install script: runs as part of `npm install`, slowly.
    project["scripts"]["preinstall"] = 'node -e "setTimeout(() => {}, 4000)"'
    files = {path: b64(text) for path, text in LOCAL_DEP_PROJECT.items()}
    files["package.json"] = b64(json.dumps(project))
    assert (await sup.send("write_files", {"files": files})).ok
    preparing = await sup.submit("prepare", prepare_args())
    await sup.wait_heartbeat(state="installing")

    async def installing() -> bool:
        lines = (await sup.send("logs", {"lines": 20}, timeout=5)).result["lines"]
        return any("preinstall" in line for line in lines)

    await async_wait_until(installing, 20, "npm to run the preinstall script")
    started = time.monotonic()
    saved = await sup.send("write_files", {"files": {"src/edit.js": b64("1")}}, timeout=10)
    assert saved.ok and time.monotonic() - started < 2
    assert await sup.redis.llen(keys.command_result(sup.cid, preparing.id)) == 0  # still busy
    result = await sup.result(preparing, timeout=120)
    assert result.ok and result.result["dependencies"] == "installed", result
    assert (sup.workspace / "src" / "edit.js").read_text() == "1"
