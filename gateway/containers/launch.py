"""What a new container is launched with: its name, its supervisor's environment and Redis
login, its first record; and why no host could take it.

The supervisor logs in to Redis as an ACL user of its own (``shared/acl.py``) whose
password is only in this environment; ``containers.Containers.launch`` creates the user,
the container and its record.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit, urlunsplit

from gateway.containers.placement import HostState
from shared.redis_client import supervisor_sentinel_env
from shared.relay import container_secret
from shared.settings import Settings


def new_cid(deployment: str) -> str:
    """Container name and Redis ACL user name. The deployment is in it because ACL users
    are per Redis server, not per database: a sweep deletes only its own (orphans.py)."""
    return f"pvc-{deployment}-{secrets.token_hex(6)}"


def supervisor_redis_url(settings: Settings, user: str, password: str) -> str:
    """The Redis URL a container's supervisor uses: its own ACL user, the host as seen
    from inside the container."""
    base = urlsplit(settings.container_redis_url or settings.redis_url)
    host = base.hostname or "127.0.0.1"
    if not settings.container_redis_url and host in {"127.0.0.1", "localhost", "::1"}:
        host = "host.docker.internal"
    netloc = f"{user}:{password}@{host}" + (f":{base.port}" if base.port else "")
    return urlunsplit((base.scheme, netloc, base.path or "/0", "", ""))


def supervisor_env(settings: Settings, cid: str, password: str) -> dict[str, str]:
    """The supervisor's settings, passed as its container's environment."""
    s = settings
    env = {
        "PREVIEW_CONTAINER_ID": cid,
        "PREVIEW_SUPERVISOR_REDIS_URL": supervisor_redis_url(s, cid, password),
        "PREVIEW_HEARTBEAT_INTERVAL": str(s.heartbeat_interval),
        "PREVIEW_HEARTBEAT_TTL": str(s.heartbeat_ttl),
        "PREVIEW_SLEEP_HEARTBEAT_INTERVAL": str(s.sleep_heartbeat_interval),
        "PREVIEW_DEV_PORT": str(s.dev_port),
        "PREVIEW_MAX_PORTS": str(s.max_ports),
        "PREVIEW_CACHE_MAX_BYTES": str(s.cache_max_bytes),
        "PREVIEW_CACHE_ZSTD_LEVEL": str(s.cache_zstd_level),
        "PREVIEW_CACHE_ZSTD_THREADS": str(s.cache_zstd_threads),
        "PREVIEW_CONTAINER_DISK_MB": str(s.container_disk_mb),
        "PREVIEW_WARMUP_SECONDS": str(s.warmup_seconds),
        "PREVIEW_NEXT_TURBOPACK": "1" if s.next_turbopack else "",
        # The port relay's (shared/relay.py): PREVIEW_* never reaches the user's processes.
        "PREVIEW_RELAY_SECRET": container_secret(s.signing_secret, cid),
        **supervisor_sentinel_env(s),
    }
    if s.sentry_dsn:
        env["PREVIEW_SENTRY_DSN"] = s.sentry_dsn
        env["PREVIEW_SENTRY_ENVIRONMENT"] = s.sentry_environment
    return env


def initial_record(cid: str, host: str, image_id: str, role: str) -> dict[str, str]:
    """A container's record as registered, before Docker knows it (state ``creating``)."""
    return {
        "cid": cid,
        "host": host,
        "image": image_id,
        "state": "creating",
        "role": role,
        "created_at": repr(time.time()),
        "project": "",
        "served": "0",
    }


def no_room(states: list[HostState]) -> str:
    """Why a launch found no host, for the error a person reads."""
    if not states or not any(s.up and not s.drained for s in states):
        down = ", ".join(f"{s.name} ({s.reason or 'down'})" for s in states)
        return f"no Docker host is up (or all are drained): {down}"
    return "every Docker host is full: " + ", ".join(
        f"{s.name} {s.used}/{s.capacity}" for s in states if s.up and not s.drained
    )
