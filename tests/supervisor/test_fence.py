"""Commands fenced by session (supervisor/fence.py), played as the gateway would send them
late: a slow upload of a session that was stopped, arriving after the container's reset
and the next session's prepare, must change nothing (issue 14, finding 2)."""

from __future__ import annotations

import json
from typing import Any

from shared.messages import WRONG_SESSION, CommandResult
from tests.supervisor.conftest import SupervisorProcess, b64
from tests.supervisor.test_daemon import get, prepare_args

RESET = {"keep_node_modules": False}


def server(says: str) -> dict[str, str]:
    code = f'require("http").createServer((q, s) => s.end("{says}")).listen(+process.env.PORT);'
    package = json.dumps({"name": "t", "scripts": {"dev": "node server.js"}})
    return {"package.json": b64(package), "server.js": b64(code)}


def refused(result: CommandResult) -> bool:
    return not result.ok and result.result.get("code") == WRONG_SESSION


async def test_stale_session_commands_change_nothing(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    assert (await sup.send("write_files", {"files": server("A")})).ok
    assert (await sup.send("prepare", prepare_args(session_id="a"))).ok
    assert (await sup.send("reset", RESET)).ok  # A's preview was deleted

    # B gets the container: files (written while no session is current), then prepare.
    assert (await sup.send("write_files", {"files": server("B")})).ok
    assert (await sup.send("prepare", prepare_args(session_id="b"))).ok
    pid = (await sup.wait_heartbeat(state="ready", session_id="b")).pid
    assert get(sup) == "B"

    # A's upload, restart, logs and a new start for A, all arriving late.
    planted = {**server("A"), "planted.txt": b64("from A")}
    upload = await sup.send("write_files", {"files": planted}, session_id="a")
    assert refused(upload), upload
    late = [
        await sup.send("write_files", {"files": planted}, session_id="a"),
        await sup.send("restart", session_id="a"),
        await sup.send("logs", {"lines": 50}, session_id="a"),
        await sup.send("stop", session_id="a"),
        await sup.send("claim", session_id="a"),
        await sup.send("prepare", prepare_args(session_id="a"), session_id="a"),
        await sup.send("reset", RESET, session_id="a"),  # a second release of A's
        await sup.send("write_files", {"files": planted}, session_id=None),
    ]
    assert all(refused(r) for r in late), [(r.ok, r.error) for r in late]
    # An archive-source start claims the container before its files: B's claim was not
    # needed above (no session was current), A's would now be refused (in `late`).
    assert (await sup.send("claim", session_id="b")).ok
    assert all("nothing was done" in (r.error or "") for r in late)
    assert not (sup.workspace / "planted.txt").exists()
    assert 'end("B")' in (sup.workspace / "server.js").read_text()
    hb = await sup.wait_heartbeat(state="ready", session_id="b")
    assert hb.pid == pid and get(sup) == "B"
    # B's own commands still work.
    assert (await sup.send("write_files", {"files": {"ok.txt": b64("b")}}, session_id="b")).ok
    assert (await sup.send("restart", session_id="b")).ok and get(sup) == "B"


async def test_a_write_queued_after_the_reset_is_refused(sup_factory: Any) -> None:
    """The reset ends the session when it is read from the stream, not when it finishes:
    a write queued behind it (waiting for the workspace lock the reset holds) is refused
    instead of landing in the emptied workspace the next session gets."""
    sup: SupervisorProcess = sup_factory()
    assert (await sup.send("write_files", {"files": server("A")})).ok
    assert (await sup.send("prepare", prepare_args(session_id="a"))).ok
    reset = await sup.submit("reset", RESET, session_id="a")
    write = await sup.submit("write_files", {"files": {"late.txt": b64("x")}}, session_id="a")
    assert (await sup.result(reset)).ok
    assert refused(await sup.result(write))
    assert list(sup.workspace.iterdir()) == []
