"""The supervisor as the container runs it (``python -m supervisor``), against a real Redis
and real Node.js dev servers: heartbeats, prepare, readiness, crashes, isolation."""

from __future__ import annotations

import json
import pwd
import shutil
import signal
import subprocess
import time
import urllib.request
from typing import Any

from shared import keys
from tests.supervisor.conftest import (
    EXTERNAL,
    SupervisorProcess,
    make_dir,
    proc_alive,
    wait_for_event,
)
from tests.utils import async_wait_until

# Dev servers for the tests: small, dependency-free, and each leaves evidence behind.
SLOW_SERVER = """
const fs = require("fs"), http = require("http");
fs.appendFileSync("starts.log", Date.now() + "\\n");
console.log("booting, slowly");
setTimeout(() => {
  http.createServer((q, s) => s.end("slow ok")).listen(Number(process.env.PORT), () => {
    fs.writeFileSync("listening-at", String(Date.now() / 1000));
    console.log("listening");
  });
}, 1500);
"""
CRASHING_SERVER = """
require("fs").appendFileSync("starts.log", Date.now() + "\\n");
console.log("about to load a dependency");
require("left-pad");
"""
WHOAMI_SERVER = """
const fs = require("fs"), http = require("http");
let supervisorEnv;
try { supervisorEnv = fs.readFileSync("/proc/" + process.env.SUPERVISOR_PID + "/environ", "utf8"); }
catch (e) { supervisorEnv = e.code; }
fs.writeFileSync("whoami.json", JSON.stringify({
  uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(),
  env: process.env, supervisorEnv,
}));
http.createServer((q, s) => s.end("hi")).listen(Number(process.env.PORT));
"""
LOOPBACK_SERVER = """
require("http").createServer((q, s) => s.end("loopback only"))
  .listen(Number(process.env.PORT), "127.0.0.1", () => console.log("listening on 127.0.0.1"));
"""
SILENT_SERVER = """
console.log("still booting...");
setInterval(() => {}, 1000);
"""
FLAKY_SERVER = """
const fs = require("fs"), http = require("http");
fs.appendFileSync("starts.log", Date.now() + "\\n");
http.createServer((q, s) => {
  s.end("ok");
  if (q.url === "/crash") setTimeout(() => process.exit(3), 10);
}).listen(Number(process.env.PORT));
"""


def node_project(sup: SupervisorProcess, server: str, **package: Any) -> None:
    scripts = {"dev": "node server.js"}
    sup.write("package.json", json.dumps({"name": "t", "scripts": scripts, **package}))
    sup.write("server.js", server)


def get(sup: SupervisorProcess, path: str = "/") -> str:
    url = f"http://{EXTERNAL}:{sup.port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def prepare_args(**extra: Any) -> dict[str, Any]:
    return {
        "session_id": "s1",
        "project_id": "p1",
        "source": {"type": "archive"},
        "public_host": "s1.preview.localhost:8080",
        "public_port": 8080,
        "public_scheme": "http",
        **extra,
    }


async def test_heartbeat_has_a_ttl_and_goes_away_on_sigterm(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    hb = await sup.wait_heartbeat(state="idle")
    assert hb.container_id == sup.cid and hb.session_id is None
    assert hb.memory_limit > 0 and hb.disk_total > 0
    ttl = await sup.redis.pttl(keys.heartbeat(sup.cid))
    assert 0 < ttl <= 3000

    async def history() -> bool:
        return bool(await sup.redis.xlen(keys.heartbeat_history(sup.cid)) >= 3)

    await async_wait_until(history, 10, "three heartbeats in the history")
    assert sup.signal(signal.SIGTERM) == 0
    assert await sup.redis.exists(keys.heartbeat(sup.cid)) == 0


async def test_template_prepare_serves_and_reports(sup_factory: Any, sup_app_user: str) -> None:
    sup: SupervisorProcess = sup_factory()
    result = await sup.send(
        "prepare", prepare_args(source={"type": "template", "name": "node-basic"})
    )
    assert result.ok, result
    assert result.result["state"] == "ready"
    assert result.result["framework"] == "node"
    assert result.result["dependencies"] == "skipped"
    assert result.result["command"] == "npm run dev"
    assert "Hello from node-basic" in get(sup)
    hb = await sup.wait_heartbeat(state="ready")
    assert hb.session_id == "s1" and hb.project_id == "p1" and hb.port == sup.port
    assert hb.pid is not None and proc_alive(hb.pid)
    if sup_app_user:
        assert (sup.workspace / "server.js").stat().st_uid == pwd.getpwnam(sup_app_user).pw_uid
    logs = await sup.send("logs", {"lines": 50})
    assert any("listening on port" in line for line in logs.result["lines"])

    async def snapshot() -> bool:
        raw = await sup.redis.get(keys.logs(sup.cid))
        return raw is not None and b"listening on port" in raw

    await async_wait_until(snapshot, 5, "the logs snapshot")
    assert 0 < await sup.redis.ttl(keys.logs(sup.cid)) <= keys.LOGS_TTL


async def test_ready_only_once_http_answers_with_progress_in_order(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, SLOW_SERVER)
    result = await sup.send("prepare", prepare_args())
    assert result.ok, result
    listening_at = float((sup.workspace / "listening-at").read_text())
    events = [e for e in await sup.events() if e.session_id == "s1"]
    ready = [e for e in events if e.type == "ready"]
    assert len(ready) == 1 and ready[0].data["port"] == sup.port
    assert ready[0].ts >= listening_at  # not when the process started, 1.5 s earlier
    progress = [e.data for e in events if e.type == "progress"]
    steps = [p["step"] for p in progress]
    order = {"files": 0, "dependencies": 1, "devserver": 2}
    assert steps == sorted(steps, key=order.__getitem__)
    for step in order:
        percents = [p["percent"] for p in progress if p["step"] == step]
        assert percents[0] == 0 and percents[-1] == 100 and percents == sorted(percents)
    waiting = [p for p in progress if p["step"] == "devserver" and 0 < p["percent"] < 100]
    assert waiting, "no progress while waiting for the port"
    elapsed = [p["elapsed_ms"] for p in progress]
    assert elapsed == sorted(elapsed)
    assert events.index(ready[0]) > max(i for i, e in enumerate(events) if e.type == "progress")
    # The dependency outcome is known before `ready` (the gateway shows it from then on).
    finished = [p for p in progress if p["step"] == "dependencies" and p["percent"] == 100]
    assert [p.get("dependencies") for p in finished] == [result.result["dependencies"]]


async def test_user_code_runs_as_app_without_our_credentials(
    sup_factory: Any, sup_app_user: str
) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, WHOAMI_SERVER)
    assert sup.process is not None
    args = prepare_args(env={"SUPERVISOR_PID": str(sup.process.pid), "PREVIEW_SNEAKY": "x"})
    result = await sup.send("prepare", args)
    assert result.ok, result
    seen = json.loads((sup.workspace / "whoami.json").read_text())
    assert not [k for k in seen["env"] if k.startswith("PREVIEW_")]
    assert sup.env["PREVIEW_SUPERVISOR_REDIS_URL"] not in json.dumps(seen)
    assert seen["env"]["PORT"] == str(sup.port) and seen["env"]["HOST"] == "0.0.0.0"
    if sup_app_user:
        app = pwd.getpwnam(sup_app_user)
        assert (seen["uid"], seen["gid"]) == (app.pw_uid, app.pw_gid)
        assert 0 not in seen["groups"]
        assert seen["env"]["HOME"] == app.pw_dir
        assert seen["supervisorEnv"] == "EACCES"  # /proc/<supervisor>/environ is root's


async def test_loopback_only_dev_server_is_forwarded(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, LOOPBACK_SERVER)
    result = await sup.send("prepare", prepare_args())
    assert result.ok, result
    assert result.result["forwarded"] is True
    assert get(sup) == "loopback only"  # through 127.0.0.2, the stand-in for eth0


async def test_crash_restart_then_crashed_with_reason(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, CRASHING_SERVER)
    started = time.monotonic()
    result = await sup.send("prepare", prepare_args())
    assert not result.ok
    assert result.error == "Module not found: 'left-pad'"
    assert result.result["state"] == "crashed"
    assert any("left-pad" in line for line in result.result["detail"])
    # 1 start + 3 restarts after 0.5 s, 1 s and 2 s
    assert len((sup.workspace / "starts.log").read_text().split()) == 4
    assert time.monotonic() - started >= 3.5
    hb = await sup.wait_heartbeat(state="crashed")
    assert hb.restarts == 3 and hb.last_error == "Module not found: 'left-pad'"
    events = await sup.events()
    restarts = [e for e in events if e.type == "warning" and e.data["type"] == "devserver_restart"]
    assert [e.data["restarts"] for e in restarts] == [1, 2, 3]
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1 and errors[0].data["reason"] == "Module not found: 'left-pad'"


async def test_crash_after_ready_is_restarted(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, FLAKY_SERVER)
    assert (await sup.send("prepare", prepare_args())).ok
    first = (await sup.wait_heartbeat(state="ready")).pid
    get(sup, "/crash")
    hb = await sup.wait_heartbeat(state="ready", restarts=1, where=lambda hb: hb.pid != first)
    assert hb.last_error == "exited with code 3"
    assert get(sup) == "ok"
    assert len([e for e in await sup.events() if e.type == "ready"]) == 2


async def test_readiness_timeout_fails_quoting_the_log(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, SILENT_SERVER)
    result = await sup.send("prepare", prepare_args(ready_timeout=2))
    assert not result.ok
    assert f"did not answer HTTP on port {sup.port} within 2s" in (result.error or "")
    assert "still booting..." in result.result["detail"]
    hb = await sup.wait_heartbeat(state="failed")
    assert hb.pid is None  # stopped, not left running
    error = await wait_for_event(sup, "error")
    assert "still booting..." in error.data["detail"]


async def test_stop_and_logs_are_answered_during_a_prepare(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, SILENT_SERVER)
    preparing = await sup.submit("prepare", prepare_args(ready_timeout=120))
    hb = await sup.wait_heartbeat(state="starting")
    assert hb.pid is not None

    async def booting() -> bool:
        # Answered within seconds each time, while the prepare still waits for the port.
        logs = await sup.send("logs", {"lines": 5}, timeout=5)
        return "still booting..." in logs.result["lines"]

    await async_wait_until(booting, 10, "the dev server's output through `logs`")
    assert await sup.redis.llen(keys.command_result(sup.cid, preparing.id)) == 0
    stopped = await sup.send("stop", timeout=10)
    assert stopped.ok and stopped.result == {"state": "stopped"}
    result = await sup.result(preparing, timeout=10)
    assert not result.ok and "cancelled" in (result.error or "")
    await sup.wait_heartbeat(state="stopped")

    async def gone() -> bool:
        return hb.pid is not None and not proc_alive(hb.pid)

    await async_wait_until(gone, 5, "the dev server's process to end")


async def test_restart_command_starts_a_new_process(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, FLAKY_SERVER)
    assert (await sup.send("prepare", prepare_args())).ok
    first = (await sup.wait_heartbeat(state="ready")).pid
    result = await sup.send("restart")
    assert result.ok and result.result["state"] == "ready"
    hb = await sup.wait_heartbeat(state="ready", where=lambda hb: hb.pid != first)
    assert hb.restarts == 0  # asked for, not a crash
    assert len((sup.workspace / "starts.log").read_text().split()) == 2


async def test_git_source(sup_factory: Any, sup_app_user: str) -> None:
    # Owned by the app user: git refuses repositories of other users ("dubious ownership").
    repo = make_dir("pv-sup-repo-")
    try:
        (repo / "package.json").write_text(json.dumps({"scripts": {"dev": "node server.js"}}))
        (repo / "server.js").write_text(FLAKY_SERVER)
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-qm", "first"], check=True)
        if sup_app_user:
            subprocess.run(["chown", "-R", sup_app_user, str(repo)], check=True)
        sup: SupervisorProcess = sup_factory()
        source = {"type": "git", "url": f"file://{repo}", "ref": "main"}
        result = await sup.send("prepare", prepare_args(source=source))
        assert result.ok, result
        assert get(sup) == "ok"
        assert (sup.workspace / ".git").is_dir()
        assert not (sup.workspace / ".git" / "FETCH_HEAD").exists()  # it names the URL
        # A URL with credentials comes as the command's blob, gone once the command ran.
        hidden = {"type": "git", "url": "https://x.invalid/r.git", "url_in_blob": True}
        via_blob = await sup.send(
            "prepare", prepare_args(source=hidden), blob=f"file://{repo}".encode()
        )
        assert via_blob.ok, via_blob
        assert not await sup.redis.exists(keys.command_blob(sup.cid, via_blob.command_id))
        bad = await sup.send(
            "prepare", prepare_args(source={"type": "git", "url": "ext::sh -c id"})
        )
        assert not bad.ok and "git url" in (bad.error or "")
        missing = {"type": "git", "url": f"file://{repo}", "ref": "no-such-branch"}
        failed = await sup.send("prepare", prepare_args(source=missing))
        assert not failed.ok and "git fetch failed" in (failed.error or "")
        assert failed.result["phase"] == "files"
    finally:
        shutil.rmtree(repo, ignore_errors=True)
