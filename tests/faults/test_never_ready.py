"""A dev server that never becomes ready, end to end through the gateway (slow: the
supervisor's ready timeout is 180 s and the gateway does not shorten it; the supervisor
side, with a 2 s timeout, is tests/supervisor/test_daemon.py::
test_readiness_timeout_fails_quoting_the_log)."""

from __future__ import annotations

import json
import time

import pytest

from shared import keys
from tests.faults.conftest import SystemFactory

pytestmark = pytest.mark.slow

READY_TIMEOUT = 180.0  # supervisor/config.py
SILENT_SERVER = 'console.log("still compiling the universe...");\nsetInterval(() => {}, 1000);\n'


def test_never_ready_fails_quoting_the_log_within_the_ready_timeout(
    make_system: SystemFactory,
) -> None:
    system = make_system()
    package = {"name": "silent", "private": True, "scripts": {"dev": "node server.js"}}
    began = time.monotonic()
    sid = system.start_project(
        "silent", {"package.json": json.dumps(package), "server.js": SILENT_SERVER}
    )
    failed = system.wait_state(sid, "failed", timeout=READY_TIMEOUT + 60)
    took = time.monotonic() - began
    assert took < READY_TIMEOUT + 30, took
    error = failed["error"]
    assert "did not answer HTTP" in error["reason"], error
    assert "still compiling the universe..." in json.dumps(error["detail"]), error
    # The slot is the user's to free; the preview is not left `ready` or `starting`.
    assert system.redis.hget(keys.session(sid), "state") == b"failed"
    print(f"never ready: failed after {took:.0f}s: {error['reason']}")
