"""previewctl: list sessions, pool and hosts, stop a session, drain a host, mint tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from gateway.auth import Authenticator
from gateway.cli import main
from shared import keys
from shared.settings import Settings
from tests.gateway.api_helpers import fake_session
from tests.utils import ROOT, RedisServer


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
