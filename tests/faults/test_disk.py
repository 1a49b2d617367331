"""A preview's code fills the disk, everywhere it can write, in a real container.

The attack (issue 14, finding 4): code running as ``app`` writes to /tmp, /var/tmp, its home
directory, /dev/shm and /workspace until something stops it. Before, nothing did (only
/workspace was measured: 3 GB went to /tmp while the heartbeat said 24 KB). Now the kernel
refuses the writes at the container's bound (PREVIEW_CONTAINER_DISK_MB, a btrfs qgroup set
through Docker's ``size`` storage option; /dev/shm is a 64 MiB tmpfs counted as memory;
/cache is root's), the heartbeat reports what was written, and the disk rule cleans the
caches, then fails the preview with a reason and removes the container.
"""

from __future__ import annotations

import errno
import json
import subprocess

from shared import keys
from tests.faults.conftest import SystemFactory, docker_has
from tests.utils import wait_until

BUDGET_MB = 96
MIB = 1 << 20
SHM_BYTES = 64 * MIB  # /dev/shm (gateway.containers.confinement.SHM_BYTES; Docker's default too)
CACHE = "/workspace/node_modules/.cache/babel-loader"
DISK_PLACES = ("/tmp", "/var/tmp", "/home/app", "/workspace")
# Each place is written until the kernel refuses, or up to this much: on an engine that
# bounds nothing the test ends (and fails) without filling the host's disk.
CAP = 4 * BUDGET_MB * MIB

# Runs as app in the container: write 1 MiB chunks to a new file in each place until a
# write fails; report how far each got and the error.
FILL = """
import json, os, sys
cap = int(sys.argv[1])
chunk = os.urandom(1 << 20)
out = {}
for place in sys.argv[2:]:
    written, error = 0, None
    try:
        with open(os.path.join(place, "fill.bin"), "wb", buffering=0) as f:
            while written < cap:
                written += f.write(chunk)
    except OSError as exc:
        error = exc.errno
    out[place] = [written, error]
print(json.dumps(out))
"""


def in_container(cid: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", "-u", "app", cid, *argv], capture_output=True, text=True, check=False
    )


def test_code_cannot_write_past_the_bound_anywhere_and_the_rule_recycles(
    make_system: SystemFactory,
) -> None:
    system = make_system(container_disk_mb=BUDGET_MB, resource_grace=6.0)
    sid = system.start("full-disk")
    system.wait_state(sid, "ready")
    cid = system.container_of(sid)

    # A build cache first (the rule's clean-up deletes it), then every writable place.
    cached = in_container(cid, "sh", "-c", f"mkdir -p {CACHE} && head -c 1M /dev/zero > {CACHE}/x")
    assert cached.returncode == 0, cached.stderr
    places = (*DISK_PLACES, "/dev/shm", "/cache")
    filled = in_container(cid, "python3", "-c", FILL, str(CAP), *places)
    assert filled.returncode == 0, filled.stderr
    result = {place: (int(n), e) for place, (n, e) in json.loads(filled.stdout).items()}

    # The kernel refused every place before the cap, each with "disk full" or "quota".
    for place, (written, error) in result.items():
        assert written < CAP, f"{place}: {written >> 20} MiB written, never refused: {result}"
        expected = (errno.EACCES,) if place == "/cache" else (errno.ENOSPC, errno.EDQUOT)
        assert error in expected, f"{place}: {result}"
    on_disk = sum(result[p][0] for p in DISK_PLACES)
    # Nothing written anywhere on disk went past the bound, alone or in sum; the first
    # place took nearly all of it (the bound is the container's, not per directory).
    assert on_disk <= BUDGET_MB * MIB, result
    assert result["/tmp"][0] >= (BUDGET_MB // 2) * MIB, result
    assert result["/dev/shm"][0] <= SHM_BYTES, result
    assert result["/cache"][0] == 0, result

    # An editor's save that no longer fits is refused saying why (a 4xx, not a 500).
    saved = system.api("PUT", f"/v1/previews/{sid}/files/big.bin", content=b"x" * (4 * MIB))
    assert saved.status_code == 409, saved.text
    assert "quota" in saved.json()["detail"].lower(), saved.text

    # The heartbeat reports what was written (not the workspace's few KiB), against the
    # container's bound.
    def reported() -> bool:
        beat = system.heartbeat(cid)
        return beat is not None and beat.disk_used >= 0.95 * on_disk

    wait_until(reported, 20, f"the heartbeat to report the {on_disk >> 20} MiB written")
    beat = system.heartbeat(cid)
    assert beat is not None
    assert 0 < beat.disk_total <= BUDGET_MB * MIB, beat
    assert beat.disk_used <= beat.disk_total + MIB, beat

    # The rule acts on it: caches cleaned first (the user's own files stay) ...
    wait_until(lambda: in_container(cid, "test", "-e", CACHE).returncode != 0, 20, "caches gone")
    assert in_container(cid, "test", "-f", "/tmp/fill.bin").returncode == 0
    # ... and, still over after the grace, the preview fails saying why, its container goes.
    failed = system.wait_state(sid, "failed", timeout=60)
    reason = failed["error"]["reason"]
    assert "disk" in reason and "caches were cleaned" in reason and "/tmp" in reason, reason
    wait_until(lambda: not docker_has(cid), 30, "the container removed")
    assert system.redis.zcard(keys.user_slots("alice")) == 0
    # Nothing crashed: both processes still serve.
    assert system.gateway.process.poll() is None and system.controller.process.poll() is None
    assert system.api("GET", "/v1/previews").status_code == 200
