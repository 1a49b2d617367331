"""The supervisor's configuration: its environment, read once at start-up.

The gateway starts each container with these ``PREVIEW_*`` variables. The supervisor keeps
the values in one frozen object and never hands the variables themselves to a child process
(see ``procs.child_environment``): the Redis URL carries this container's password.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared.messages import sleeping_heartbeat_ttl

ENV_PREFIX = "PREVIEW_"
_PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """An environment variable is missing or holds a value that cannot be used."""


@dataclass(frozen=True)
class SupervisorConfig:
    container_id: str
    redis_url: str
    # With sentinels (host:port as seen from here), redis_url gives only our user,
    # password and database; the master is whichever they name. sentinel_user is
    # name:password of their restricted user (empty: none).
    redis_sentinels: tuple[str, ...] = ()
    redis_master: str = ""
    sentinel_user: str = ""
    heartbeat_interval: float = 5.0
    heartbeat_ttl: float = 15.0
    # While the dev server sleeps (PREVIEW_SLEEP_HEARTBEAT_INTERVAL): beats and idle
    # command reads this far apart, the key living SLEEPING_TTL_BEATS of them.
    sleep_heartbeat_interval: float = 30.0
    dev_port: int = 3000
    max_ports: int = 8  # the user's extra listening ports reported at most
    workspace: Path = Path("/workspace")
    cache_dir: Path = Path("/cache")
    # Empty: run children as ourselves (a developer machine without root).
    app_user: str = "app"
    templates_dir: Path = _PACKAGE_DIR / "templates"
    # Root-only: what must survive a supervisor restart (session, node_modules key).
    state_dir: Path = Path("/var/lib/preview-supervisor")
    # The address Docker forwards the published port to (eth0); empty: detect at start.
    external_address: str = ""
    ready_timeout: float = 180.0
    # Seconds spent loading the entry route's module graph before `ready` (0: none).
    warmup_seconds: float = 60.0
    # PREVIEW_NEXT_TURBOPACK as the gateway passed it on (detect.with_turbopack).
    next_turbopack: bool = False
    install_timeout: float = 900.0
    restart_limit: int = 3
    restart_window: float = 60.0
    log_level: str = "INFO"
    # Interpreter for helpers run as the app user (fsworker): it must be executable by
    # that user, which a virtualenv under /root is not.
    worker_python: str = sys.executable
    # The host dependency cache (/cache, shared by every preview on the host): its bound in
    # bytes (0 turns it off), and how archives are compressed (zstd level; worker threads,
    # 0 for none). The gateway passes the PREVIEW_CACHE_* settings on.
    cache_max_bytes: int = 10 << 30
    cache_zstd_level: int = 1
    cache_zstd_threads: int = 2
    # PREVIEW_CONTAINER_DISK_MB as the gateway set it: 0 when no bound is kept on this
    # container's disk (the heartbeat then measures the workspace only).
    container_disk_mb: int = 0
    # Reset restores app's home and the shared temporary directories (supervisor/scrub.py).
    # Only the preview image turns it on (its ENV): on a developer's or CI's host those
    # directories hold other people's files.
    restore_user_files: bool = False
    # The port relay's secret (shared/relay.py); empty: no relay (a developer's machine).
    relay_secret: str = field(default="", repr=False)

    @property
    def sleep_heartbeat_ttl(self) -> float:
        return sleeping_heartbeat_ttl(self.sleep_heartbeat_interval, self.heartbeat_ttl)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SupervisorConfig:
        env = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            return env.get(ENV_PREFIX + name, default)

        def number(name: str, default: float) -> float:
            raw = get(name, str(default))
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{name}: expected a number, got {raw!r}") from None

        cid = get("CONTAINER_ID", "")
        redis_url = get("SUPERVISOR_REDIS_URL", "")
        if not cid or not redis_url:
            raise ConfigError(
                f"{ENV_PREFIX}CONTAINER_ID and {ENV_PREFIX}SUPERVISOR_REDIS_URL are required"
            )
        config = cls(
            container_id=cid,
            redis_url=redis_url,
            redis_sentinels=tuple(a for a in get("SUPERVISOR_REDIS_SENTINELS", "").split(",") if a),
            redis_master=get("SUPERVISOR_REDIS_MASTER", ""),
            sentinel_user=get("SUPERVISOR_SENTINEL_USER", ""),
            heartbeat_interval=number("HEARTBEAT_INTERVAL", 5.0),
            heartbeat_ttl=number("HEARTBEAT_TTL", 15.0),
            sleep_heartbeat_interval=number("SLEEP_HEARTBEAT_INTERVAL", 30.0),
            dev_port=int(number("DEV_PORT", 3000)),
            max_ports=int(number("MAX_PORTS", 8)),
            workspace=Path(get("WORKSPACE", "/workspace")),
            cache_dir=Path(get("CACHE_DIR", "/cache")),
            app_user=get("APP_USER", "app"),
            templates_dir=Path(get("TEMPLATES_DIR", str(_PACKAGE_DIR / "templates"))),
            state_dir=Path(get("SUPERVISOR_STATE_DIR", "/var/lib/preview-supervisor")),
            external_address=get("EXTERNAL_ADDRESS", ""),
            ready_timeout=number("READY_TIMEOUT", 180.0),
            warmup_seconds=number("WARMUP_SECONDS", 60.0),
            next_turbopack=get("NEXT_TURBOPACK", "") == "1",
            install_timeout=number("INSTALL_TIMEOUT", 900.0),
            restart_limit=int(number("RESTART_LIMIT", 3)),
            restart_window=number("RESTART_WINDOW", 60.0),
            log_level=get("LOG_LEVEL", "INFO"),
            worker_python=get("WORKER_PYTHON", sys.executable),
            cache_max_bytes=int(number("CACHE_MAX_BYTES", 10 << 30)),
            cache_zstd_level=int(number("CACHE_ZSTD_LEVEL", 1)),
            cache_zstd_threads=int(number("CACHE_ZSTD_THREADS", 2)),
            container_disk_mb=int(number("CONTAINER_DISK_MB", 0)),
            restore_user_files=get("RESTORE_USER_FILES", "") == "1",
            relay_secret=get("RELAY_SECRET", ""),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.redis_sentinels and not self.redis_master:
            raise ConfigError(f"{ENV_PREFIX}SUPERVISOR_REDIS_MASTER is required with sentinels")
        if self.heartbeat_interval <= 0:
            raise ConfigError(f"{ENV_PREFIX}HEARTBEAT_INTERVAL must be positive")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ConfigError(f"{ENV_PREFIX}HEARTBEAT_TTL must exceed the interval")
        if self.sleep_heartbeat_interval < self.heartbeat_interval:
            raise ConfigError(
                f"{ENV_PREFIX}SLEEP_HEARTBEAT_INTERVAL must be at least HEARTBEAT_INTERVAL"
            )
        if not 0 < self.dev_port < 65536:
            raise ConfigError(f"{ENV_PREFIX}DEV_PORT must be a TCP port")
        if self.restart_limit < 0:
            raise ConfigError(f"{ENV_PREFIX}RESTART_LIMIT must not be negative")
        if self.cache_max_bytes < 0:
            raise ConfigError(f"{ENV_PREFIX}CACHE_MAX_BYTES must not be negative")
        if not -7 <= self.cache_zstd_level <= 22 or self.cache_zstd_level == 0:
            raise ConfigError(f"{ENV_PREFIX}CACHE_ZSTD_LEVEL must be 1..22 (or -7..-1, faster)")
        if not 0 <= self.cache_zstd_threads <= 64:
            raise ConfigError(f"{ENV_PREFIX}CACHE_ZSTD_THREADS must be 0..64")

    def redacted_redis(self) -> str:
        """host:port of the Redis URL, for logs (never the credentials)."""
        parts = urlsplit(self.redis_url)
        if self.redis_sentinels:
            return f"sentinels {','.join(self.redis_sentinels)} master {self.redis_master}"
        return f"{parts.hostname}:{parts.port or 6379}{parts.path}"


def scrub_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Remove every ``PREVIEW_*`` variable from ``environ`` (default: ``os.environ``),
    returning what remains. Called once the config is read, so nothing spawned later —
    even by a library — inherits the credentials."""
    env = os.environ if environ is None else environ
    for name in [n for n in env if n.startswith(ENV_PREFIX)]:
        del env[name]
    return dict(env)
