"""Helpers for the preview API tests: tokens, gateway settings, sessions written directly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
from redis import Redis as SyncRedis

from gateway.sessions.store import Session, new_id
from shared import keys
from shared.messages import Event
from tests.utils import RedisServer, settings_env

SECRET = "test-jwt-secret-of-at-least-thirty-two-bytes"
AUDIENCE = "preview-gateway"


def token(
    sub: str | None = "alice",
    *,
    secret: Any = SECRET,
    algorithm: str = "HS256",
    ttl: int = 600,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"aud": AUDIENCE, "iat": now, "exp": now + ttl, **claims}
    if sub is not None:
        payload["sub"] = sub
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def bearer(sub: str = "alice", **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **kwargs)}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: `alg: none` (key None) or an HMAC with any bytes as key
    (pyjwt refuses to sign HS256 with a PEM key, an attacker does not)."""
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    if key is None:
        return f"{head}.{body}."
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def valid_claims(sub: str = "alice") -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": AUDIENCE, "iat": now, "exp": now + 600}


def gateway_env(server: RedisServer, image: str, **overrides: Any) -> dict[str, str]:
    values: dict[str, Any] = {
        "redis_url": server.url,
        "image": image,
        "jwt_secret": SECRET,
        "heartbeat_interval": 1.0,
        "heartbeat_ttl": 4.0,
        "container_memory_mb": 768,
        "container_pids": 256,
        "rate_limit_starts": "10000/minute",
        "rate_limit_reads": "100000/minute",
        "rate_limit_auth_failures": "10000/minute",
        "log_format": "json",
        **overrides,
    }
    return settings_env(**values)


def failover_env(
    server: RedisServer, image: str, labels: str, state_dir: Path, **overrides: Any
) -> dict[str, str]:
    """gateway_env for a controller and gateway that are killed or cut off on purpose: short
    controller interval and leader lease so a takeover happens within seconds, a short drain,
    small containers and text logs (read back by the fault tests and bench/bench_failover.py)."""
    values: dict[str, Any] = {
        "controller_interval": 0.3,
        "leader_ttl": 1.5,
        "container_cpus": 0.5,
        "log_format": "text",
        "drain_timeout": 1.0,
        **overrides,
    }
    return gateway_env(server, image, container_labels=labels, state_dir=str(state_dir), **values)


def start_body(project: str = "p1", template: str = "node-basic") -> dict[str, Any]:
    return {"project_id": project, "source": {"type": "template", "name": template}}


def remove_containers(server: RedisServer) -> int:
    """Remove every preview container made against this Redis: each got an ACL user named
    after it (Containers.launch), which survives FLUSHALL and gateways killed mid-start."""
    client = SyncRedis.from_url(server.url)
    try:
        users = [u.decode() if isinstance(u, bytes) else str(u) for u in client.acl_users()]
        cids = [u for u in users if u.startswith("pvc-")]
        if cids:
            subprocess.run(["docker", "rm", "-f", "-v", *cids], capture_output=True, check=False)
            for cid in cids:
                client.acl_deluser(cid)
        return len(cids)
    finally:
        client.close()


def fake_session(
    client: SyncRedis,
    user: str = "alice",
    project: str = "p1",
    container: str = "pvc-fake",
    events_from: str = "0-0",
    lease: float = 600,
) -> Session:
    """A session record and slot as a start leaves them, without a container (for tests
    of reading paths: events, ownership)."""
    now = time.time()
    session = Session(
        id=new_id(),
        user=user,
        project_id=project,
        state="preparing",
        container=container,
        host="local",
        address="127.0.0.1:9",
        created_at=now,
        updated_at=now,
        from_pool=True,
        events_from=events_from,
    )
    client.hset(keys.session(session.id), mapping=dict(session.to_record()))  # type: ignore[arg-type]
    client.sadd(keys.SESSIONS, session.id)
    client.zadd(keys.user_slots(user), {session.id: now + lease})
    client.set(keys.user_project(user, project), session.id)
    return session


def add_event(client: SyncRedis, cid: str, kind: str, sid: str, **data: Any) -> str:
    event = Event(kind, sid, data)
    raw = client.xadd(keys.events(cid), event.to_fields())  # type: ignore[arg-type]
    return raw.decode() if isinstance(raw, bytes) else str(raw)
