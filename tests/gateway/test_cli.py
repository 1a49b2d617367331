"""previewctl: list sessions, pool and hosts, stop a session, drain a host, mint tokens."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from gateway.api.auth import Authenticator
from gateway.cli import main
from shared import keys
from shared.settings import Settings
from tests.gateway.api_helpers import fake_session
from tests.utils import ROOT, RedisServer, free_port


@pytest.fixture
def cli_env(
    redis_server: RedisServer,
    sync_redis: SyncRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> SyncRedis:
    monkeypatch.setenv("PREVIEW_REDIS_URL", redis_server.url)
    monkeypatch.setenv("PREVIEW_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PREVIEW_JWT_SECRET", "cli-test-secret-of-at-least-32-bytes!")
    return sync_redis


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_and_dashboard_link(cli_env: SyncRedis, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "token", "--sub", "ops", "--admin", "--ttl", "60")
    user = Authenticator(Settings.from_env()).verify(out.strip())
    assert code == 0 and user.id == "ops" and user.admin
    code, out, _ = run(capsys, "dashboard", "--sub", "ops")
    assert out.startswith("http://localhost:8080/admin#token=ey")
    assert Authenticator(Settings.from_env()).verify(out.strip().split("#token=")[1]).admin


def test_lists_sessions_pool_and_hosts(
    cli_env: SyncRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    session = fake_session(cli_env, user="carol", project="shop")
    cli_env.set(keys.pool_image("preview-gateway/preview:latest"), "sha256:abc")
    cli_env.rpush(keys.pool("sha256:abc"), "pvc-1")
    cli_env.hset(keys.container("pvc-1"), "host", "local")
    cli_env.zadd(keys.RESERVED, {"pvc-2": time.time() + 60})
    cli_env.hset(keys.container("pvc-2"), "host", "local")
    cli_env.hset(
        keys.POOL_STATS, mapping={"target": "2", "hits": "3", "misses": "1", "reserved_hits": "2"}
    )

    code, out, _ = run(capsys, "sessions")
    assert code == 0 and session.id in out and "carol" in out and "1 live sessions" in out
    code, out, _ = run(capsys, "--json", "sessions")
    assert json.loads(out)["sessions"][0]["project_id"] == "shop"
    code, out, _ = run(capsys, "--json", "pool")
    pool = json.loads(out)
    assert (pool["pooled"], pool["target"], pool["per_host"]) == (1, 2, {"local": 1})
    assert (pool["reserved"], pool["reserved_per_host"]) == (1, {"local": 1})
    assert pool["hit_rate"] == 5 / 6  # 3 general + 2 reserved of 6 acquisitions
    code, out, _ = run(capsys, "pool")
    assert "local: 1 pooled, 1 reserved" in out
    code, out, _ = run(capsys, "hosts")
    assert code == 0 and "local" in out and "up" in out


def test_drain_and_undrain_a_host(cli_env: SyncRedis, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "drain", "local")
    assert code == 0 and "drained" in out
    assert cli_env.sismember(keys.DRAINED_HOSTS, "local")
    code, out, _ = run(capsys, "--json", "hosts")
    assert json.loads(out)["hosts"][0]["drained"] is True
    code, out, _ = run(capsys, "undrain", "local")
    assert code == 0 and not cli_env.sismember(keys.DRAINED_HOSTS, "local")
    code, _, err = run(capsys, "drain", "nosuchhost")
    assert code == 2 and "unknown host" in err


def test_stop_a_session(cli_env: SyncRedis, capsys: pytest.CaptureFixture[str]) -> None:
    session = fake_session(cli_env, container="")
    code, out, _ = run(capsys, "stop", session.id, "--reason", "abuse report")
    assert code == 0 and f"stopped {session.id}" in out
    assert not cli_env.sismember(keys.SESSIONS, session.id)
    assert cli_env.zscore(keys.user_slots("alice"), session.id) is None
    stop = json.loads(cli_env.hget(keys.RECORDS_DATA, f"{session.id}:stop") or b"{}")
    assert (stop["outcome"], stop["reason"]) == ("operator", "abuse report")
    code, _, err = run(capsys, "stop", session.id)
    assert code == 1 and "no live session" in err


def test_stats_and_console_script(cli_env: SyncRedis, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats", "--days", "1")
    assert code == 0 and "0 starts" in out
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for command in ("sessions", "pool", "hosts", "stop", "drain", "token", "dashboard"):
        assert command in done.stdout


# --- beside scripts/run: its settings from .state, and a Redis that refuses the login ---


@dataclass
class Beside:
    """A shell next to a `scripts/run`: its state directory as the script writes it."""

    home: Path  # the working directory; the run's state is home/.state
    server: RedisServer

    @property
    def state(self) -> Path:
        return self.home / ".state"

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """previewctl in a shell with no PREVIEW_* variable but `env`."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
        return subprocess.run(
            [str(Path(sys.executable).parent / "previewctl"), *args],
            env={**clean, "PYTHONPATH": str(ROOT), **env},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def run_env(self) -> dict[str, str]:
        lines = (self.state / "run.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)


def run_script_part(state: Path, redis_url: str) -> None:
    """The part of scripts/run after Redis is up: its secrets and its record (lib.sh)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    subprocess.run(
        ["bash", "-c", f'. "{ROOT}/scripts/lib.sh" && ensure_local_secrets && write_run_env'],
        env={**clean, "PREVIEW_STATE_DIR": str(state), "PREVIEW_REDIS_URL": redis_url},
        check=True,
        timeout=30,
    )


@pytest.fixture
def beside(tmp_path: Path, redis_server: RedisServer, sync_redis: SyncRedis) -> Beside:
    here = Beside(tmp_path, redis_server)
    run_script_part(here.state, redis_server.url)
    return here


def test_the_run_keeps_its_secrets_private_and_reuses_them(beside: Beside) -> None:
    secrets_dir = beside.state / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    first = {}
    for name in ("jwt_secret", "signing_secret"):
        assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
        first[name] = (secrets_dir / name).read_text()
        assert len(first[name]) >= 32  # what the gateway asks of an HS256 secret
    assert stat.S_IMODE((beside.state / "run.env").stat().st_mode) == 0o600
    recorded = beside.run_env()
    assert recorded["PREVIEW_JWT_SECRET"] == first["jwt_secret"]
    assert recorded["PREVIEW_SIGNING_SECRET"] == first["signing_secret"]
    assert recorded["PREVIEW_REDIS_URL"] == beside.server.url
    assert Settings().jwt_secret not in recorded.values()
    run_script_part(beside.state, beside.server.url)  # a second run: the same secrets
    assert beside.run_env()["PREVIEW_JWT_SECRET"] == first["jwt_secret"]


def test_previewctl_beside_a_run_needs_no_settings(beside: Beside, sync_redis: SyncRedis) -> None:
    session = fake_session(sync_redis, user="dora", project="shop")
    done = beside.cli("sessions")
    assert done.returncode == 0, done.stderr
    assert session.id in done.stdout and "dora" in done.stdout
    done = beside.cli("token", "--sub", "alice", "--admin")
    assert done.returncode == 0, done.stderr
    # Signed with the run's generated secret, which its gateway checks.
    secret = (beside.state / "secrets" / "jwt_secret").read_text()
    user = Authenticator(Settings(jwt_secret=secret)).verify(done.stdout.strip())
    assert user.id == "alice" and user.admin


def assert_one_clear_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 1 and done.stdout == ""
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, done.stderr
    assert "HELLO" not in line and "WRONGPASS" not in line  # no protocol error
    for word in words:
        assert word in line, line
    return line


def test_previewctl_says_which_setting_when_redis_refuses_the_login(beside: Beside) -> None:
    where = f"127.0.0.1:{beside.server.port}"
    wrong = f"redis://:not-{beside.server.password}@{where}/0"
    # A stale record (another run's password): the record is named.
    record = beside.state / "run.env"
    record.write_text(record.read_text().replace(beside.server.url, wrong))
    line = assert_one_clear_line(
        beside.cli("sessions"), f"Redis at {where} refused the login", "PREVIEW_REDIS_URL"
    )
    assert str(record) in line and beside.server.password not in line
    # The environment wins over the record: a right URL there works, a wrong one is named.
    assert beside.cli("sessions", PREVIEW_REDIS_URL=beside.server.url).returncode == 0
    no_password = f"redis://{where}/0"  # what the issue saw: "HELLO must be called ..."
    line = assert_one_clear_line(
        beside.cli("pool", PREVIEW_REDIS_URL=no_password), "refused the login", "PREVIEW_REDIS_URL"
    )
    assert str(record) not in line
    down = f"redis://:pw@127.0.0.1:{free_port()}/0"
    assert_one_clear_line(
        beside.cli("hosts", PREVIEW_REDIS_URL=down), "cannot reach Redis", "connection refused"
    )


def test_previewctl_ignores_a_record_others_can_read(beside: Beside) -> None:
    (beside.state / "run.env").chmod(0o644)
    done = beside.cli("token", "--sub", "alice")
    assert done.returncode == 0 and "run.env: not private to this user" in done.stderr
    # Not the run's secret: the built-in one (which only a loopback gateway accepts).
    assert Authenticator(Settings()).verify(done.stdout.strip()).id == "alice"
