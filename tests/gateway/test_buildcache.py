"""Build caches through the whole system (real gateway, containers, cache volume): a
stopped preview's .next/cache comes back for the same user's same project, and never
for another user's start of a project with the same name on the same host."""

from __future__ import annotations

import json

import httpx
import pytest
from redis import Redis as SyncRedis

from shared import keys
from tests.gateway.api_helpers import bearer
from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_api import container_file, wait_ready
from tests.gateway.test_boost import container_of, upload
from tests.supervisor.test_buildcache import SERVER
from tests.utils import GatewayProcess, wait_until

FAKE_NEXT = json.dumps({"name": "next", "version": "15.5.0"})


def start_next(gw: GatewayProcess, user: str, mark: str) -> tuple[str, dict[str, object]]:
    body = {"project_id": "shop", "source": {"type": "archive"}}
    started = httpx.post(f"{gw.url}/v1/previews", json=body, headers=bearer(user), timeout=60)
    assert started.status_code == 202, started.text
    sid = str(started.json()["id"])
    package = {
        "name": "shop",
        "scripts": {"dev": f"MARK={mark} node server.js"},
        "dependencies": {"next": "file:./fake-next"},
    }
    files = {
        "package.json": json.dumps(package),
        "server.js": SERVER,
        "fake-next/package.json": FAKE_NEXT,
    }
    upload(gw, sid, "", files, user=user)
    return sid, wait_ready(gw, sid, timeout=120, user=user)


def found_at_boot(cid: str) -> object:
    return json.loads(container_file(cid, "build-cache.json"))["found"]


def key_at_boot(cid: str) -> object:
    """Next.js's Server Actions key, which salts its webpack cache (supervisor/buildenv.py)."""
    return json.loads(container_file(cid, "build-cache.json"))["key"]


def stop(gw: GatewayProcess, sid: str, user: str, client: SyncRedis, cid: str) -> None:
    assert httpx.delete(f"{gw.url}/v1/previews/{sid}", headers=bearer(user)).status_code == 204
    # Released: reset (which packs the build cache) and reserved for its user.
    wait_until(
        lambda: (
            client.zscore(keys.user_reserved(user), cid) is not None
            or not client.exists(keys.container(cid))
        ),
        90,
        "the container released",
    )


@pytest.mark.slow
def test_build_cache_back_for_the_same_user_and_project_only(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw = start_gateway()
    sid, ready = start_next(gw, "alice", "alice-1")
    assert "build_cache" not in ready["timings"]  # type: ignore[operator]
    cid, _ = container_of(sync_redis, sid)
    assert found_at_boot(cid) is None
    key = key_at_boot(cid)
    stop(gw, sid, "alice", sync_redis, cid)

    sid2, ready2 = start_next(gw, "alice", "alice-2")
    cid2, _ = container_of(sync_redis, sid2)
    assert "build_cache" in ready2["timings"]  # type: ignore[operator]
    assert found_at_boot(cid2) == "alice-1"
    assert key_at_boot(cid2) == key  # Next's webpack cache would match its version

    # Another user, same project name, same host and cache volume: never alice's cache.
    sid3, ready3 = start_next(gw, "mallory", "mallory-1")
    cid3, _ = container_of(sync_redis, sid3)
    assert cid3 != cid2
    assert "build_cache" not in ready3["timings"]  # type: ignore[operator]
    assert found_at_boot(cid3) is None
    assert key_at_boot(cid3) not in (key, None)
