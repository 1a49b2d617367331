"""Sleep and wake (supervisor/freeze.py): every process of a real Node dev server, workers
included, is stopped, uses no CPU while asleep, and answers again once woken; heartbeats go
on; restart and stop work on a sleeping dev server; another session cannot put it to sleep.
Hibernation (supervisor/hibernation.py): packed on one container, restored on another of
the same host for the same owner only, refused when damaged or gone."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from shared import keys
from shared.messages import WRONG_SESSION, Heartbeat
from supervisor import freeze
from tests.supervisor.conftest import SupervisorProcess, make_dir
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
    # A cheap beat (only the CPU time read again), still a whole one for its readers.
    assert (later.memory_used, later.memory_limit, later.port) == (
        hb.memory_used,
        hb.memory_limit,
        hb.port,
    )
    assert later.memory_limit > 0
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


async def all_beats(sup: SupervisorProcess) -> list[Heartbeat]:
    """Every heartbeat written so far, oldest first."""
    entries = await sup.redis.xrange(keys.heartbeat_history(sup.cid))
    read = [Heartbeat.read(fields[keys.HEARTBEAT_HISTORY_FIELD.encode()]) for _, fields in entries]
    return [hb for hb in read if hb is not None]


async def sleeping_beats(sup: SupervisorProcess) -> list[Heartbeat]:
    """The heartbeats written so far that report the dev server asleep, oldest first."""
    return [hb for hb in await all_beats(sup) if hb.state == "sleeping"]


async def test_asleep_it_beats_rarely_with_a_long_ttl_and_wakes_at_once(
    sup_factory: Any,
) -> None:
    # Awake: a beat every 0.5 s living 3 s. Asleep: every 4 s, living 12 s.
    sup: SupervisorProcess = sup_factory(PREVIEW_SLEEP_HEARTBEAT_INTERVAL="4")
    await ready_busy(sup)
    assert 0 < await sup.redis.pttl(keys.heartbeat(sup.cid)) <= 3000

    asked = time.time()
    assert (await sup.send("sleep")).ok
    # Falling asleep beats at once (not a whole sleeping interval later) with the long TTL.
    first = await sup.wait_heartbeat(timeout=3, state="sleeping")
    assert first.ts - asked < 2, first.ts - asked
    assert 3000 < await sup.redis.pttl(keys.heartbeat(sup.cid)) <= 12000

    # Over a span longer than the awake TTL: few beats, 4 s apart, the key never gone.
    async def beats(n: int) -> list[Heartbeat] | None:
        found = await sleeping_beats(sup)
        assert await sup.redis.exists(keys.heartbeat(sup.cid))
        return found if len(found) >= n else None

    found = await async_wait_until(lambda: beats(3), 15, "three sleeping beats")
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(found)]
    assert all(3.5 < gap < 6 for gap in gaps), gaps
    assert found[-1].ts - found[0].ts > 3  # longer than the awake TTL, still alive

    # A command reaches it at once though its idle read blocks 4 s; its first awake beat
    # follows at once too, with the awake TTL again.
    began = time.monotonic()
    woke = await sup.send("wake")
    assert woke.ok and woke.result["woke"] is True
    took = time.monotonic() - began
    print(f"wake command round trip while asleep: {took * 1000:.1f} ms")
    assert took < 3, took
    awake = await sup.wait_heartbeat(timeout=2, state="ready")
    assert awake.ts - found[-1].ts < 6
    assert 0 < await sup.redis.pttl(keys.heartbeat(sup.cid)) <= 3000


async def test_a_killed_sleeping_supervisor_goes_silent_within_its_sleeping_ttl(
    sup_factory: Any,
) -> None:
    sup: SupervisorProcess = sup_factory(PREVIEW_SLEEP_HEARTBEAT_INTERVAL="2")
    await ready_busy(sup)
    assert (await sup.send("sleep")).ok
    await sup.wait_heartbeat(state="sleeping")
    sup.kill9()
    killed = time.monotonic()

    async def gone() -> bool:
        return not await sup.redis.exists(keys.heartbeat(sup.cid))

    await async_wait_until(gone, 10, "the heartbeat key to expire")
    assert time.monotonic() - killed <= 6.5  # 3 sleeping intervals


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


# Exits 1.5 s after SIGTERM, as a dev server flushing its caches does.
SLOW_EXIT_SERVER = """
const http = require("http");
process.on("SIGTERM", () => setTimeout(() => process.exit(0), 1500));
http.createServer((q, s) => s.end("up")).listen(Number(process.env.PORT));
"""


async def test_a_sleeping_dev_server_on_its_way_down_is_never_reported_ready(
    sup_factory: Any,
) -> None:
    # Thawed to take its SIGTERM, the old server used to be "ready" again while it exited:
    # beats said ready with its pid, then with none, until the new one started.
    sup: SupervisorProcess = sup_factory()
    node_project(sup, SLOW_EXIT_SERVER)
    assert (await sup.send("prepare", prepare_args())).ok
    old = (await sup.wait_heartbeat(state="ready")).pid
    assert (await sup.send("sleep")).ok
    asleep = await sup.wait_heartbeat(state="sleeping")
    restarted = await sup.send("restart", timeout=30)
    assert restarted.ok and restarted.result["state"] == "ready"
    new = (await sup.wait_heartbeat(state="ready", where=lambda h: h.pid not in (None, old))).pid

    since = [hb for hb in await all_beats(sup) if hb.ts > asleep.ts]
    assert len(since) >= 3, since  # the 1.5 s exit spans several 0.5 s beats
    early = [(hb.state, hb.pid) for hb in since if hb.state == "ready" and hb.pid != new]
    assert early == [], early


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


ENV_SERVER = """
const http = require("http"), fs = require("fs");
http.createServer((q, s) => s.end(process.env.GREETING + " " + fs.readFileSync("note.txt")))
  .listen(Number(process.env.PORT));
"""
OWNER = "0123456789abcdef0123456789abcdef"


async def test_hibernate_then_restore_on_another_container(sup_factory: Any) -> None:
    cache = make_dir("pv-sup-shared-cache-")
    try:
        first: SupervisorProcess = sup_factory(PREVIEW_CACHE_DIR=str(cache))
        node_project(first, ENV_SERVER)
        first.write("note.txt", "kept")
        first.write("node_modules/big/index.js", "x" * 100_000)
        first.write(".next/cache/blob", "y" * 100_000)
        args = prepare_args(env={"GREETING": "hello"}, owner=OWNER)
        assert (await first.send("prepare", args)).ok
        assert get(first) == "hello kept"
        assert (await first.send("sleep")).ok
        name = f"{OWNER}-s1"
        packed = await first.send("hibernate", {"archive": name, "owner": OWNER, "max_age": 60})
        assert packed.ok, packed
        archive = cache / "hibernated" / f"{name}.tar.zst"
        assert archive.is_file() and packed.result["bytes"] == archive.stat().st_size
        assert packed.result["bytes"] < 20_000  # node_modules and .next left out
        if os.geteuid() == 0:  # root's, out of user code's reach
            assert (archive.parent.stat().st_mode & 0o777) == 0o700
        sha = packed.result["sha256"]

        second: SupervisorProcess = sup_factory(PREVIEW_CACHE_DIR=str(cache))
        source = {"type": "hibernated", "archive": name, "sha256": sha}
        # Another owner (another user's preview) never gets it.
        stolen = await second.send(
            "prepare", prepare_args(session_id="s2", source=source, owner="f" * 32)
        )
        assert not stolen.ok and "another preview" in (stolen.error or "")
        third: SupervisorProcess = sup_factory(PREVIEW_CACHE_DIR=str(cache))
        restored = await third.send(
            "prepare", prepare_args(session_id="s3", source=source, owner=OWNER)
        )
        assert restored.ok, restored
        assert get(third) == "hello kept"  # the files and the environment it started with
        assert not (third.workspace / ".next").exists()

        # Damaged: refused before anything is written.
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
        fourth: SupervisorProcess = sup_factory(PREVIEW_CACHE_DIR=str(cache))
        damaged = await fourth.send(
            "prepare", prepare_args(session_id="s4", source=source, owner=OWNER)
        )
        assert not damaged.ok and "damaged" in (damaged.error or "")
        assert not (fourth.workspace / "note.txt").exists()
        archive.unlink()
        fifth: SupervisorProcess = sup_factory(PREVIEW_CACHE_DIR=str(cache))
        gone = await fifth.send(
            "prepare", prepare_args(session_id="s5", source=source, owner=OWNER)
        )
        assert not gone.ok and "no longer on its host" in (gone.error or "")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
