"""Session and dev-server states as types: parsing, what the gateway writes, and mypy."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from mypy import api as mypy_api

from gateway.sessions.store import Session, fold
from shared.messages import Event, Heartbeat, MessageError
from shared.states import (
    SESSION_STATES,
    STARTING_STATES,
    parse_session_state,
    session_state_of_record,
)

ROOT = Path(__file__).resolve().parents[2]
# Session states a Lua script or a field list sets or compares: `state == 'x'`,
# `'state') ~= 'x'`, `HSET ... 'state', 'x'` and `[..., "state", "x"` (script arguments).
STATE_LITERALS = re.compile(
    r"""state'?\)?\s*[~=]=\s*'(\w+)'|'HSET'[^\n]*'state',\s*'(\w+)'|\[[^\]\n]*"state",\s*"(\w+)\""""
)


def test_parse_accepts_every_state_and_rejects_others() -> None:
    for state in SESSION_STATES:
        assert parse_session_state(state) == state
    assert STARTING_STATES < set(SESSION_STATES)
    for bogus in ("", "stoping", "READY", "stopped", "asleep"):
        with pytest.raises(ValueError, match="unknown session state"):
            parse_session_state(bogus)


def test_a_record_with_an_unknown_state_reads_as_failed() -> None:
    assert session_state_of_record("ready") == "ready"
    record = Session("s1", "alice", "p").to_record() | {"state": "stoping"}
    assert Session.from_record(record).state == "failed"


def test_every_state_the_gateway_writes_to_a_session_record_parses() -> None:
    found = set()
    for path in sorted((ROOT / "gateway" / "sessions").glob("*.py")):
        for match in STATE_LITERALS.finditer(path.read_text()):
            found.add(next(g for g in match.groups() if g))
    assert {"assigned", "stopping", "failed"} <= found  # the scan sees the scripts
    for state in found:
        parse_session_state(state)
    # And what folding a supervisor's events writes.
    session = Session("s1", "alice", "p", created_at=time.time())
    for kind, data in [("progress", {"step": "devserver"}), ("ready", {}), ("error", {})]:
        changed = fold(session, [Event(kind, "s1", data)])
        parse_session_state(changed["state"])


def test_a_heartbeat_with_an_unknown_dev_state_is_refused() -> None:
    good = Heartbeat("c1", time.time(), state="ready").to_json()
    assert Heartbeat.from_json(good).state == "ready"
    with pytest.raises(MessageError, match="unknown dev-server state"):
        Heartbeat.from_json(good.replace('"ready"', '"redy"'))


def test_mypy_rejects_a_typod_state(tmp_path: Path) -> None:
    source = tmp_path / "typo.py"
    source.write_text(
        "from gateway.sessions.store import Session\n"
        "from shared.messages import Heartbeat\n\n\n"
        "def stopping(s: Session, hb: Heartbeat) -> bool:\n"
        '    return s.state == "stoping" or hb.state == "crashd"\n'
    )
    out, _, status = mypy_api.run(["--strict", "--cache-dir", str(tmp_path / "cache"), str(source)])
    assert status == 1
    assert out.count("[comparison-overlap]") == 2, out
