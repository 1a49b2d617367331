"""A git source's credentials (user info, a token in the query) go to the supervisor that
clones, and nowhere else: not the API's answers, the events, the logs, the records, any
Redis key once the clone is over, the gateway's or the supervisor's own log (issue 14,
point 7). Real gateway, Redis, container;
the clone fails (nothing listens there), so git quotes the URL in its error."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
from redis import Redis as SyncRedis

from shared import keys
from shared.redis_types import text
from tests.gateway.api_helpers import bearer
from tests.gateway.test_api import start
from tests.utils import GatewayProcess, wait_until

USER, PASSWORD, TOKEN = "leaky-user-7f3a", "s3cr3t-pass-91c2", "tok-5be1e0-private"
URL = f"https://{USER}:{PASSWORD}@127.0.0.1:9/team/app.git?private_token={TOKEN}"
SECRETS = (USER, PASSWORD, TOKEN)


def redis_values(client: SyncRedis) -> dict[str, str]:
    """Every key's value as text (all types)."""
    found = {}
    for raw in client.scan_iter(count=1000):
        key = text(raw)
        kind = text(client.type(key))
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        found[key] = repr(value)
    return found


def leaks(where: str, blob: str) -> list[str]:
    return [f"{secret} in {where}" for secret in SECRETS if secret in blob]


def test_git_credentials_are_never_stored_or_shown(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    headers = bearer("alice")
    body = {"project_id": "private-repo", "source": {"type": "git", "url": URL}}
    started = start(gateway, "alice", **body)
    assert started.status_code == 202, started.text
    sid = started.json()["id"]
    base = f"{gateway.url}/v1/previews/{sid}"

    def failed() -> dict[str, Any] | None:
        preview: dict[str, Any] = httpx.get(base, headers=headers).json()
        return preview if preview["state"] == "failed" else None

    preview = wait_until(failed, 90, "the clone to fail")
    assert "git fetch failed" in preview["error"]["reason"], preview
    cid = text(sync_redis.hget(keys.session(sid), "container"))
    answers = {
        "start": started.text,
        "preview": httpx.get(base, headers=headers).text,
        "list": httpx.get(f"{gateway.url}/v1/previews", headers=headers).text,
        "logs": httpx.get(f"{base}/logs?lines=500", headers=headers, timeout=30).text,
        "events": httpx.get(f"{base}/events", headers=headers, timeout=30).text,
    }
    assert "127.0.0.1:9" in answers["logs"] or "127.0.0.1" in answers["preview"], answers
    stopped = httpx.delete(base, headers=headers)
    assert stopped.status_code == 204
    # The stop record is written once the stop is done: wait for it, then look everywhere.
    wait_until(lambda: not sync_redis.exists(keys.session(sid)), 90, "the release to finish")

    found: list[str] = []
    for name, answer in answers.items():
        found += leaks(f"the {name} answer", answer)
    # The clone's command carried the URL without them, its blob (deleted once the command
    # ran) the URL with them: nothing is left anywhere in Redis.
    for key, value in redis_values(sync_redis).items():
        found += leaks(f"Redis key {key}", value)
    found += leaks("the gateway's log", gateway.log())
    supervisor = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
    assert supervisor.returncode == 0 and "command" in supervisor.stdout + supervisor.stderr
    found += leaks("the supervisor's log", supervisor.stdout + supervisor.stderr)
    assert found == []
