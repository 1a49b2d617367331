"""Sleep and wake (supervisor/freeze.py): every process of a real Node dev server, workers
included, is stopped, uses no CPU while asleep, and answers again once woken; heartbeats go
on; restart and stop work on a sleeping dev server; another session cannot put it to sleep."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from shared.messages import WRONG_SESSION
from supervisor import freeze
from tests.supervisor.conftest import SupervisorProcess
from tests.supervisor.test_daemon import get, node_project, prepare_args
from tests.utils import async_wait_until

# A server with a busy worker, as Next.js and Vite start workers beside the main process.
BUSY_SERVER = """
const http = require("http"), { fork } = require("child_process");
if (process.argv[2] === "worker") {
  setInterval(() => { const end = Date.now() + 40; while (Date.now() < end); }, 50);
} else {
  const worker = fork(__filename, ["worker"]);
  require("fs").writeFileSync("worker.pid", String(worker.pid));
  http.createServer((q, s) => s.end("awake")).listen(Number(process.env.PORT));
}
"""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def ready_busy(sup: SupervisorProcess) -> tuple[int, int]:
    node_project(sup, BUSY_SERVER)
    assert (await sup.send("prepare", prepare_args())).ok
    hb = await sup.wait_heartbeat(state="ready")
    assert hb.pid is not None
    pid_file = sup.workspace / "worker.pid"

    async def written() -> bool:
        return pid_file.exists() and pid_file.read_text() != ""

    await async_wait_until(written, 10, "the worker's pid")
    return hb.pid, int(pid_file.read_text())


async def test_sleep_freezes_every_process_and_wake_thaws(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    main, worker = await ready_busy(sup)
    assert get(sup) == "awake"

    result = await sup.send("sleep")
    assert result.ok, result
    assert result.result["state"] == "sleeping" and result.result["frozen"] >= 2
    tree = freeze.tree(main, None)
    assert {main, worker} <= tree
    assert {freeze.state(pid) for pid in tree} == {"T"}
    hb = await sup.wait_heartbeat(state="sleeping")
    assert hb.pid == main
    # A frozen worker uses no CPU (awake, it burns ~80% of a core).
    before = cpu_seconds(worker)
    await asyncio.sleep(1.0)  # a measurement window, not synchronisation
    assert cpu_seconds(worker) - before == 0
    # The heartbeat goes on while asleep.
    seen = hb.ts
    later = await sup.wait_heartbeat(state="sleeping", where=lambda h: h.ts > seen)
    assert later.session_id == "s1"
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        await asyncio.to_thread(get_quick, sup)

    again = await sup.send("sleep")  # idempotent
    assert again.ok and again.result["frozen"] == 0

    began = time.monotonic()
    woke = await sup.send("wake")
    assert woke.ok and woke.result == {"state": "ready", "woke": True}
    print(f"wake command round trip: {(time.monotonic() - began) * 1000:.1f} ms")
    assert {freeze.state(pid) for pid in freeze.tree(main, None)} <= {"R", "S"}
    assert get(sup) == "awake"
    before = cpu_seconds(worker)
    await asyncio.sleep(1.0)
    assert cpu_seconds(worker) - before > 0.1
    assert (await sup.send("wake")).result["woke"] is False


def get_quick(sup: SupervisorProcess) -> str:
    import urllib.request

    from tests.supervisor.conftest import EXTERNAL

    with urllib.request.urlopen(f"http://{EXTERNAL}:{sup.port}/", timeout=1) as response:
        return str(response.read().decode())


async def test_restart_and_stop_work_on_a_sleeping_dev_server(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    main, _ = await ready_busy(sup)
    assert (await sup.send("sleep")).ok
    restarted = await sup.send("restart", timeout=30)
    assert restarted.ok and restarted.result["state"] == "ready"
    hb = await sup.wait_heartbeat(state="ready", where=lambda h: h.pid != main)
    assert hb.pid is not None and freeze.state(main) == ""

    assert (await sup.send("sleep")).ok
    began = time.monotonic()
    stopped = await sup.send("stop", timeout=30)
    assert stopped.ok
    assert time.monotonic() - began < 4  # not SIGTERM held pending until SIGKILL
    assert freeze.state(hb.pid) == ""


async def test_only_the_current_session_may_sleep_or_wake(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    await ready_busy(sup)
    for kind in ("sleep", "wake"):
        refused = await sup.send(kind, session_id="someone-else")
        assert not refused.ok and refused.result["code"] == WRONG_SESSION
    assert (await sup.heartbeat()) is not None
    assert (await sup.wait_heartbeat(state="ready")).state == "ready"


async def test_sleep_is_refused_unless_ready(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    node_project(sup, BUSY_SERVER)
    assert (await sup.send("prepare", prepare_args())).ok
    assert (await sup.send("stop")).ok
    refused = await sup.send("sleep")
    assert not refused.ok and "not ready" in (refused.error or "")
