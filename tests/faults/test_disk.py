"""A preview's workspace filled past its disk budget, in a real container.

The supervisor measures the workspace every 60 s, and within 10 s after files were written
through it (an editor's save): the test saves a file after each change, as an editor
would, to stay fast. The budget is small (PREVIEW_CONTAINER_DISK_MB=40); the grace is
longer than that 10 s, so the rule judges a measurement taken after its clean-up. Slow
(about 40 s: two measurements and the grace).
"""

from __future__ import annotations

import subprocess

import pytest

from shared import keys
from tests.faults.conftest import System, SystemFactory, docker_has
from tests.utils import wait_until

BUDGET_MB = 40
CACHE = "/workspace/node_modules/.cache/babel-loader"


pytestmark = pytest.mark.slow


def in_container(cid: str, script: str) -> int:
    done = subprocess.run(
        ["docker", "exec", "-u", "app", cid, "sh", "-c", script], capture_output=True, check=False
    )
    return done.returncode


def save(system: System, sid: str, name: str) -> None:
    """An editor's save through the API (the supervisor measures the disk soon after)."""
    saved = system.api("PUT", f"/v1/previews/{sid}/files/{name}", content=b"edited\n")
    assert saved.status_code == 200, saved.text


def test_disk_filled_cleans_caches_then_recycles(make_system: SystemFactory) -> None:
    system = make_system(container_disk_mb=BUDGET_MB, resource_grace=12.0)
    sid = system.start("full-disk")
    system.wait_state(sid, "ready")
    cid = system.container_of(sid)

    # User code fills the workspace: a build cache and its own data, together over 85%.
    filled = in_container(
        cid,
        f"mkdir -p {CACHE} && head -c 4M /dev/zero > {CACHE}/chunk"
        " && head -c 36M /dev/zero > /workspace/data.bin",
    )
    assert filled == 0
    save(system, sid, "a.txt")

    # The supervisor reports it ...
    def over() -> bool:
        beat = system.heartbeat(cid)
        return beat is not None and beat.disk_used > 0.85 * BUDGET_MB * (1 << 20)

    wait_until(over, 30, "the heartbeat to show the disk over 85% of the budget")
    # ... the reaper cleans the caches first (the user's own files stay) ...
    wait_until(lambda: in_container(cid, f"test -e {CACHE}") != 0, 30, "the caches cleaned")
    assert in_container(cid, "test -f /workspace/data.bin") == 0
    assert system.redis.hget(keys.session(sid), "state") == b"ready"
    # ... and, still over after the grace, recycles the container with a reason.
    save(system, sid, "b.txt")
    failed = system.wait_state(sid, "failed", timeout=60)
    reason = failed["error"]["reason"]
    assert "disk" in reason and "caches were cleaned" in reason, failed["error"]
    wait_until(lambda: not docker_has(cid), 30, "the container removed")
    assert system.redis.zcard(keys.user_slots("alice")) == 0
    # Nothing crashed: both processes still serve.
    assert system.gateway.process.poll() is None and system.controller.process.poll() is None
    assert system.api("GET", "/v1/previews").status_code == 200
