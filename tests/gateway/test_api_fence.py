"""Commands fenced by session, through the real gateway, Redis and containers (issue 14,
finding 2): an upload whose body is still arriving when its preview is deleted, and the
container goes to the next user, lands nowhere. And what the fence must still allow: an
archive-source preview takes single files before its prepare."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis

from shared import keys
from shared.redis_types import text
from tests.gateway.api_helpers import bearer
from tests.gateway.test_api import container_file, start, tar_of, wait_ready
from tests.utils import GatewayProcess, wait_until

MARKER = "planted-by-alice"
PLANTED = (
    "require('http').createServer((q, s) => s.end('" + MARKER + "'))"
    ".listen(Number(process.env.PORT));\n"
)


def wait_for_ownership_check(monitor: Any, sid: str, timeout: float = 30) -> None:
    """Until the gateway has checked who owns `sid` (the slot lookup is the last Redis
    call of `Previews.owned`; nothing else reads it as a plain command meanwhile): from
    then on the request handler only reads the body."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = monitor.next_command()
        if seen.get("client_type") == "lua":
            continue
        parts = str(seen.get("command", "")).split()
        if parts[:1] == ["ZSCORE"] and parts[-1:] == [sid]:
            return
    raise AssertionError(f"the gateway never checked the owner of {sid}")


def released(sync_redis: SyncRedis, cid: str) -> bool:
    """The container's release is over: back in a pool (of any kind) or destroyed."""
    state = text(sync_redis.hget(keys.container(cid), "state"))
    return state not in ("assigned", "releasing")


def page(gw: GatewayProcess, preview: dict[str, Any]) -> str:
    host = preview["url"].split("://", 1)[1].rstrip("/")
    query = preview["open_url"].split("?", 1)[1]
    with httpx.Client(base_url=gw.url, headers={"Host": host}, timeout=30) as browser:
        opened = browser.get(f"/?{query}")
        assert opened.status_code in (302, 303), opened.text
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
        return browser.get("/", headers={"Cookie": cookie}).text


UPLOADS = {
    # The editor's save of one file, and a whole archive merged into the workspace.
    "file": ("files/server.js", PLANTED.encode()),
    "archive": ("files?mode=merge", tar_of({"server.js": PLANTED})),
}


@pytest.mark.parametrize("kind", sorted(UPLOADS))
def test_upload_in_flight_across_delete_lands_nowhere(
    gateway: GatewayProcess, sync_redis: SyncRedis, kind: str
) -> None:
    first = start(gateway, "alice")
    assert first.status_code == 202, first.text
    a = first.json()["id"]
    wait_ready(gateway, a)
    cid_a = text(sync_redis.hget(keys.session(a), "container"))

    finish = threading.Event()

    path, content = UPLOADS[kind]

    def trickle() -> Iterator[bytes]:
        yield content[:10]
        finish.wait(180)  # the rest arrives once the container has moved on
        yield content[10:]

    url = f"{gateway.url}/v1/previews/{a}/{path}"
    with ThreadPoolExecutor(1) as pool, sync_redis.monitor() as monitor:
        upload = pool.submit(
            httpx.put, url, content=trickle(), headers=bearer("alice"), timeout=240
        )
        try:
            wait_for_ownership_check(monitor, a)
            deleted = httpx.delete(f"{gateway.url}/v1/previews/{a}", headers=bearer("alice"))
            assert deleted.status_code == 204
            wait_until(lambda: released(sync_redis, cid_a), 90, "alice's container released")

            # Bob starts; and, should the pool keep alice's container for alice alone,
            # alice's next session of the project (on that same container) too.
            b = start(gateway, "bob").json()["id"]
            wait_ready(gateway, b, user="bob")
            cids = {b: text(sync_redis.hget(keys.session(b), "container"))}
            if cids[b] != cid_a:
                a2 = start(gateway, "alice").json()["id"]
                wait_ready(gateway, a2)
                cids[a2] = text(sync_redis.hget(keys.session(a2), "container"))
            assert cid_a in cids.values() or not sync_redis.exists(keys.container(cid_a))
        finally:
            finish.set()
        answer = upload.result(timeout=120)

    assert answer.status_code in (404, 409), answer.text
    assert answer.json()["error"] in ("not_found", "session_ended", "container_changed")
    for sid, cid in cids.items():
        assert MARKER not in container_file(cid, "server.js"), sid
        owner = "bob" if sid == b else "alice"
        restarted = httpx.post(
            f"{gateway.url}/v1/previews/{sid}/restart", headers=bearer(owner), timeout=60
        )
        assert restarted.status_code == 202, restarted.text
        ready = wait_ready(gateway, sid, user=owner)
        assert "Hello from node-basic" in page(gateway, ready), sid


def test_archive_source_takes_single_files_before_its_prepare(gateway: GatewayProcess) -> None:
    """The start claims the container for the session (supervisor/fence.py), so the files
    written before the prepare are accepted, and the restart prepares from them."""
    started = start(gateway, source={"type": "archive"}, project_id="by-file")
    assert started.status_code == 202, started.text
    sid = started.json()["id"]
    base = f"{gateway.url}/v1/previews/{sid}"
    package = b'{"name": "f", "scripts": {"dev": "node server.js"}}'
    for path, content in (("package.json", package), ("server.js", PLANTED.encode())):
        saved = httpx.put(f"{base}/files/{path}", content=content, headers=bearer(), timeout=60)
        assert saved.status_code == 200, saved.text
    assert httpx.post(f"{base}/restart", headers=bearer(), timeout=60).status_code == 202
    ready = wait_ready(gateway, sid)
    assert MARKER in page(gateway, ready)
