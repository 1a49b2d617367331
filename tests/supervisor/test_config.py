"""The supervisor's configuration, and that no child ever sees a PREVIEW_ variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import ConfigError, SupervisorConfig, scrub_environment
from supervisor.procs import USER_CONFIG_DIR, AppUser, child_environment

ENV = {
    "PREVIEW_CONTAINER_ID": "pvc-1a2b3c4d5e6f",
    "PREVIEW_SUPERVISOR_REDIS_URL": "redis://pvc-1a2b3c4d5e6f:s3cret@host.docker.internal:6390/0",
}


def test_defaults() -> None:
    config = SupervisorConfig.from_env(ENV)
    assert config.heartbeat_interval == 5 and config.heartbeat_ttl == 15
    assert config.dev_port == 3000
    assert config.workspace == Path("/workspace") and config.cache_dir == Path("/cache")
    assert config.app_user == "app"
    assert (config.templates_dir / "node-basic" / "package.json").is_file()
    assert config.redacted_redis() == "host.docker.internal:6390/0"
    assert "s3cret" not in config.redacted_redis()


def test_values_and_errors() -> None:
    config = SupervisorConfig.from_env(
        {
            **ENV,
            "PREVIEW_HEARTBEAT_INTERVAL": "2",
            "PREVIEW_DEV_PORT": "5173",
            "PREVIEW_APP_USER": "",
        }
    )
    assert config.heartbeat_interval == 2 and config.dev_port == 5173 and config.app_user == ""
    with pytest.raises(ConfigError, match="required"):
        SupervisorConfig.from_env({})
    with pytest.raises(ConfigError, match="HEARTBEAT_INTERVAL"):
        SupervisorConfig.from_env({**ENV, "PREVIEW_HEARTBEAT_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match="TTL"):
        SupervisorConfig.from_env({**ENV, "PREVIEW_HEARTBEAT_TTL": "5"})


def test_scrub_and_child_environment() -> None:
    environ = {**ENV, "PATH": "/usr/bin", "NODE_EXTRA_CA_CERTS": "/ca.pem", "SUDO_USER": "x"}
    base = scrub_environment(environ)
    assert not any(k.startswith("PREVIEW_") for k in environ)  # scrubbed in place
    user = AppUser("app", 10001, 10001, (), "/home/app")
    env = child_environment(base, user, {"PORT": "3000", "PREVIEW_SUPERVISOR_REDIS_URL": "x"})
    assert env["HOME"] == "/home/app" and env["USER"] == "app"
    assert env["NODE_EXTRA_CA_CERTS"] == "/ca.pem" and env["PORT"] == "3000"
    assert not any(k.startswith(("PREVIEW_", "SUDO_")) for k in env)
    assert user.spawn_kwargs() == {"user": 10001, "group": 10001, "extra_groups": []}


def test_npm_git_and_corepack_config_is_the_supervisors() -> None:
    """Where npm, git and corepack read per-user settings: root's files or the home that
    reset restores, whatever case a leftover variable used (npm reads any)."""
    base = {"NPM_CONFIG_USERCONFIG": "/home/app/.npmrc", "GIT_CONFIG_GLOBAL": "/tmp/g"}
    user = AppUser("app", 10001, 10001, (), "/home/app")
    env = child_environment(base, user, {"NODE_OPTIONS": "--max-old-space-size=512"})
    assert env["npm_config_userconfig"] == f"{USER_CONFIG_DIR}/npmrc"
    assert env["GIT_CONFIG_GLOBAL"] == f"{USER_CONFIG_DIR}/gitconfig"
    assert "NPM_CONFIG_USERCONFIG" not in env
    assert env["COREPACK_HOME"] == "/home/app/.cache/node/corepack"
    assert env["npm_config_cache"] == "/home/app/.npm"
    assert env["XDG_CONFIG_HOME"] == "/home/app/.config"
    assert env["NODE_OPTIONS"] == "--max-old-space-size=512"  # the session's own choice


def test_sentinels_from_the_gateway() -> None:
    config = SupervisorConfig.from_env(
        {
            **ENV,
            "PREVIEW_SUPERVISOR_REDIS_SENTINELS": "host.docker.internal:26379,10.0.0.5:26380",
            "PREVIEW_SUPERVISOR_REDIS_MASTER": "preview",
            "PREVIEW_SUPERVISOR_SENTINEL_USER": "preview-sup:reader-secret",
        }
    )
    assert config.redis_sentinels == ("host.docker.internal:26379", "10.0.0.5:26380")
    assert config.redis_master == "preview" and config.sentinel_user.startswith("preview-sup:")
    logged = config.redacted_redis()
    assert "preview" in logged and "secret" not in logged and "s3cret" not in logged
    with pytest.raises(ConfigError, match="SUPERVISOR_REDIS_MASTER"):
        SupervisorConfig.from_env({**ENV, "PREVIEW_SUPERVISOR_REDIS_SENTINELS": "h:1"})
