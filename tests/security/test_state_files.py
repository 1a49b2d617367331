"""Local state is its owner's alone (issue 14, point 7): another account on the machine
must not read the dev Redis password, Redis's append-only file (every key: sessions,
tokens' subjects, container passwords' digests) or the gateway's spooled records.

Runs the function scripts/run uses (``ensure_local_redis`` in scripts/lib.sh) against a
fresh state directory that an older version left world-readable, and the gateway's spool.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

from gateway.observability.spool import Spool
from tests.utils import ROOT, free_port, wait_until


def exposed(root: Path) -> list[str]:
    """Paths under `root` that anyone but their owner may use, with their modes."""
    found = []
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files, ""]:
            path = Path(top, name)
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.is_symlink():
                continue
            if mode & 0o077 or (path.is_dir() and mode != 0o700):
                found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return sorted(set(found))


async def test_local_state_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # What an older scripts/run left behind (umask 022).
    (state / "redis").mkdir(parents=True)
    for directory in (state, state / "redis"):
        directory.chmod(0o755)
    (state / "redis" / "password").write_text("previouspassword")
    (state / "redis" / "password").chmod(0o644)

    port = free_port()
    env = {**os.environ, "PREVIEW_STATE_DIR": str(state), "PREVIEW_LOCAL_REDIS_PORT": str(port)}
    script = (
        # Loopback only: the Docker bridge's address is not what this test is about.
        f'. "{ROOT}/scripts/lib.sh" && bridge_ip() {{ :; }} && ensure_local_redis && '
        'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$REDIS_PORT" set some-key some-value'
    )
    pidfile = state / "redis" / "redis.pid"
    try:
        done = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10))
        # Its argv is world-readable (/proc/PID/cmdline): the password is not in it.
        assert b"previouspassword" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        aof = [p for p in (state / "redis").rglob("*") if "appendonly" in p.name]
        assert aof, list((state / "redis").rglob("*"))

        # The gateway's spool (records of starts and stops) under the same state.
        spool = Spool(state / "spool")
        await spool.append(['{"user": "alice"}'])
        spool.close()

        assert exposed(state) == []
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 20, "redis-server to exit")
