"""The preview API on the real gateway, real Redis and real containers (node-basic)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis

from gateway.api import endpoints, shares
from gateway.proxy.preview_tokens import token_user
from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from tests.gateway.api_helpers import bearer, gateway_env, start_body, token
from tests.gateway.conftest import GatewayFactory
from tests.utils import GatewayProcess, run_gateway, settings_env, start_redis, wait_until

PREVIEW_KEYS = {
    "id", "project_id", "state", "url", "open_url", "events_url", "created_at", "updated_at",
    "timings", "from_pool", "dependencies", "error", "heartbeat", "ports",
}  # fmt: skip


def start(gw: GatewayProcess, user: str = "alice", **body: Any) -> httpx.Response:
    payload = {**start_body(), **body}
    return httpx.post(f"{gw.url}/v1/previews", json=payload, headers=bearer(user), timeout=60)


def get(gw: GatewayProcess, sid: str, user: str = "alice") -> httpx.Response:
    return httpx.get(f"{gw.url}/v1/previews/{sid}", headers=bearer(user))


def wait_ready(
    gw: GatewayProcess, sid: str, timeout: float = 60, user: str = "alice"
) -> dict[str, Any]:
    last: list[dict[str, Any]] = []

    def ready() -> dict[str, Any] | None:
        preview: dict[str, Any] = get(gw, sid, user).json()
        last[:] = [preview]
        assert preview["state"] != "failed", preview
        return preview if preview["state"] == "ready" else None

    try:
        found: dict[str, Any] = wait_until(ready, timeout, f"{sid} ready")  # type: ignore[arg-type]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None
    return found


def tar_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content.encode())
            archive.addfile(info, io.BytesIO(content.encode()))
    return buffer.getvalue()


def container_file(cid: str, path: str) -> str:
    done = subprocess.run(
        ["docker", "exec", cid, "cat", f"/workspace/{path}"], capture_output=True, text=True
    )
    return done.stdout if done.returncode == 0 else f"<missing: {done.stderr.strip()}>"


def test_start_hot_start_read_and_stop(gateway: GatewayProcess, sync_redis: SyncRedis) -> None:
    first = start(gateway)
    assert first.status_code == 202, first.text
    preview = first.json()
    assert set(preview) == PREVIEW_KEYS
    sid = preview["id"]
    assert len(sid) == 16 and sid.isalnum() and sid.islower()
    assert preview["url"] == f"http://{sid}.preview.localhost:8080/"
    assert preview["open_url"].startswith(preview["url"] + "?preview_token=")
    open_token = preview["open_url"].split("preview_token=", 1)[1]
    found = token_user(Settings(), sid, open_token)
    assert found is not None and found[0] == "alice"
    assert preview["state"] == "assigned" and "acquire" in preview["timings"]

    hot = start(gateway)
    assert hot.status_code == 200 and hot.json()["id"] == sid
    assert sync_redis.scard(keys.CONTAINERS) == 1  # no second container for a hot start

    ready = wait_ready(gateway, sid)
    assert ready["dependencies"] == "skipped" and ready["error"] is None
    assert {"acquire", "files", "dependencies", "devserver", "total"} <= set(ready["timings"])

    def ready_beat() -> dict[str, Any] | None:
        beat: dict[str, Any] | None = get(gateway, sid).json()["heartbeat"]
        return beat if beat and beat["dev_server"] == "ready" else None

    # The heartbeat is a sample: the one after `ready` may still be on its way.
    beat = wait_until(ready_beat, 15, "a heartbeat saying the dev server is ready")
    assert beat["memory_limit"] > 0
    record = {text(k): text(v) for k, v in sync_redis.hgetall(keys.session(sid)).items()}
    assert record["state"] == "ready" and record["user"] == "alice" and record["address"]
    listed = httpx.get(f"{gateway.url}/v1/previews", headers=bearer()).json()["previews"]
    assert [p["id"] for p in listed] == [sid]

    assert httpx.delete(f"{gateway.url}/v1/previews/{sid}", headers=bearer()).status_code == 204
    assert sync_redis.zcard(keys.user_slots("alice")) == 0  # free at once
    assert get(gateway, sid).status_code == 404
    assert httpx.delete(f"{gateway.url}/v1/previews/{sid}", headers=bearer()).status_code == 404
    cid = record["container"]
    wait_until(lambda: not sync_redis.exists(keys.session(sid)), 60, "the release to finish")
    # Reset and kept for alice only, never in the general pool.
    assert sync_redis.hget(keys.container(cid), "state") == b"reserved"
    assert sync_redis.zscore(keys.user_reserved("alice"), cid) is not None
    pool = httpx.get(f"{gateway.url}/v1/pool", headers=bearer("ops", scope="admin")).json()
    assert (pool["pooled"], pool["reserved"], pool["containers"]) == (0, 1, 1)


def test_a_user_never_sees_another_users_preview(gateway: GatewayProcess) -> None:
    sid = start(gateway, "alice").json()["id"]
    base = f"{gateway.url}/v1/previews/{sid}"
    bob = bearer("bob")
    attempts = [
        httpx.get(base, headers=bob),
        httpx.get(f"{base}/events", headers=bob),
        httpx.get(f"{base}/logs", headers=bob),
        httpx.post(f"{base}/restart", headers=bob),
        httpx.put(f"{base}/files", content=tar_of({"a": "b"}), headers=bob),
        httpx.put(f"{base}/files/src/x.js", content=b"x", headers=bob),
        httpx.delete(base, headers=bob),
    ]
    for response in attempts:
        assert response.status_code == 404, (response.request.url, response.text)
        assert response.json() == {"error": "not_found", "detail": "no such preview"}
    assert httpx.get(f"{gateway.url}/v1/previews", headers=bob).json() == {"previews": []}
    assert get(gateway, sid, "alice").status_code == 200  # untouched by bob's DELETE
    nobody = get(gateway, "aaaaaaaaaaaaaaaa", "alice")
    assert nobody.status_code == 404 and nobody.json() == attempts[0].json()


@pytest.mark.parametrize(
    ("content", "headers", "status", "field"),
    [
        (b"{not json", {}, 400, None),
        (b"[1, 2]", {}, 422, ""),
        (json.dumps({"source": {"type": "template", "name": "x"}}), {}, 422, "project_id"),
        (json.dumps({"project_id": "p", "source": {"type": "svn"}}), {}, 422, "source.type"),
        (json.dumps({"project_id": "p", "source": "git"}), {}, 422, "source"),
        (json.dumps({"project_id": "p", "source": {"type": "git"}}), {}, 422, "source.url"),
        (
            json.dumps({"project_id": "p", "source": {"type": "git", "url": "file:///etc"}}),
            {},
            422,
            "source.url",
        ),
        (
            json.dumps(
                {"project_id": "p", "source": {"type": "git", "url": "https://x/y", "ref": "-x"}}
            ),
            {},
            422,
            "source.ref",
        ),
        (json.dumps({**start_body(), "extra": 1}), {}, 422, "extra"),
        (json.dumps({**start_body(), "env": {"PREVIEW_X": "1"}}), {}, 422, "env"),
        (json.dumps({**start_body(), "env": {"A": 1}}), {}, 422, "env"),
        (json.dumps({**start_body(), "project_id": "../x"}), {}, 422, "project_id"),
        (json.dumps(start_body()), {"content-type": "text/plain"}, 415, None),
        (b"{" + b" " * 70_000 + b"}", {}, 413, None),
    ],
)
def test_start_bodies_are_validated(
    gateway: GatewayProcess,
    sync_redis: SyncRedis,
    content: bytes | str,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/previews",
        content=content,
        headers={"content-type": "application/json", **headers, **bearer()},
    )
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"]
    if field is not None:
        assert body["error"] == "invalid_request" and body["field"] == field
    assert sync_redis.zcard(keys.user_slots("alice")) == 0


def test_files_logs_and_restart(start_gateway: GatewayFactory, sync_redis: SyncRedis) -> None:
    gw = start_gateway(max_upload_bytes=100_000)
    sid = start(gw).json()["id"]
    wait_ready(gw, sid)
    cid = text(sync_redis.hget(keys.session(sid), "container"))
    base = f"{gw.url}/v1/previews/{sid}"
    headers = bearer()

    saved = httpx.put(f"{base}/files/src/new.js", content=b"export const x = 1\n", headers=headers)
    assert saved.status_code == 200 and saved.json() == {"path": "src/new.js", "bytes": 19}
    assert container_file(cid, "src/new.js") == "export const x = 1\n"
    archive = tar_of({"lib/a.txt": "A", "lib/b.txt": "B"})
    merged = httpx.put(f"{base}/files?mode=merge", content=archive, headers=headers, timeout=60)
    assert merged.status_code == 200, merged.text
    assert merged.json() == {"format": "tar", "mode": "merge", "files": 2, "unpacked_bytes": 2}
    assert container_file(cid, "lib/b.txt") == "B"

    commands_before = sync_redis.xlen(keys.commands(cid))
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    refusals = [
        httpx.put(f"{base}/files", content=tar_of({"../../etc/x": "x"}), headers=headers),
        httpx.put(f"{base}/files", content=evil.getvalue(), headers=headers),
        httpx.put(f"{base}/files", content=b"garbage", headers=headers),
        httpx.put(f"{base}/files/%2e%2e/%2e%2e/etc/passwd", content=b"x", headers=headers),
        httpx.put(f"{base}/files/%2Fetc%2Fpasswd", content=b"x", headers=headers),
    ]
    for refused in refusals:
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] in ("invalid_archive", "invalid_path")
    too_big = httpx.put(f"{base}/files/big.bin", content=b"x" * 100_001, headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"
    bad_mode = httpx.put(f"{base}/files?mode=wipe", content=archive, headers=headers)
    assert bad_mode.status_code == 422
    assert sync_redis.xlen(keys.commands(cid)) == commands_before  # nothing reached it

    logs = httpx.get(f"{base}/logs?lines=50", headers=headers, timeout=30)
    assert logs.status_code == 200 and logs.json()["stale"] is False
    assert any("listening" in line for line in logs.json()["lines"])
    assert httpx.get(f"{base}/logs?lines=0", headers=headers).status_code == 422
    restarted = httpx.post(f"{base}/restart", headers=headers, timeout=60)
    assert restarted.status_code == 202 and restarted.json()["id"] == sid
    wait_ready(gw, sid)


def test_archive_source_is_prepared_when_its_files_arrive(gateway: GatewayProcess) -> None:
    started = start(gateway, source={"type": "archive"}, project_id="from-archive")
    assert started.status_code == 202 and started.json()["state"] == "assigned"
    sid = started.json()["id"]
    project = tar_of(
        {
            "package.json": json.dumps({"name": "a", "scripts": {"dev": "node server.js"}}),
            "server.js": "require('http').createServer((q, s) => s.end('hi'))"
            ".listen(process.env.PORT || 3000, '0.0.0.0')",
        }
    )
    uploaded = httpx.put(
        f"{gateway.url}/v1/previews/{sid}/files", content=project, headers=bearer(), timeout=60
    )
    assert uploaded.status_code == 202, uploaded.text
    assert uploaded.json()["files"] == 2
    wait_ready(gateway, sid)


def test_reads_are_rate_limited_per_user(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(rate_limit_reads="5/minute")
    codes = [
        httpx.get(f"{gw.url}/v1/previews", headers=bearer("alice")).status_code for _ in range(7)
    ]
    assert codes == [200] * 5 + [429] * 2
    limited = httpx.get(f"{gw.url}/v1/previews", headers=bearer("alice"))
    assert limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert httpx.get(f"{gw.url}/v1/previews", headers=bearer("bob")).status_code == 200


def test_start_limit_is_shared_by_replicas(start_gateway: GatewayFactory) -> None:
    """Two gateways on one Redis count one user's starts together (a body that fails
    validation is counted too: the limit is checked first, and no container is needed)."""
    replicas = [start_gateway(rate_limit_starts="4/minute") for _ in range(2)]

    def post(i: int, user: str = "alice") -> httpx.Response:
        url = f"{replicas[i % 2].url}/v1/previews"
        return httpx.post(url, json={"project_id": ""}, headers=bearer(user))

    codes = [post(i).status_code for i in range(6)]
    assert codes == [422] * 4 + [429] * 2, codes
    limited = post(0)
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert post(1, "bob").status_code == 422  # per user


def test_a_stalled_redis_does_not_stall_the_event_loop(test_image: str) -> None:
    """Rate limits are checked with slowapi's (synchronous) Redis storage, off the event
    loop: while Redis hangs, a limited request waits but the gateway keeps answering."""
    server = start_redis(bind_bridge=False)
    try:
        with run_gateway(gateway_env(server, test_image)) as gw:
            url = f"{gw.url}/v1/previews"
            assert httpx.get(url, headers=bearer("alice")).status_code == 200
            server.process.send_signal(signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(1) as pool:
                    pending = pool.submit(httpx.get, url, headers=bearer("alice"), timeout=30)
                    # Probe for 2 s: a check on the loop would hold every probe after the
                    # first milliseconds for the 5 s Redis socket timeout.
                    slowest = 0.0
                    until = time.monotonic() + 2.0
                    while time.monotonic() < until:
                        started = time.monotonic()
                        assert httpx.get(f"{gw.url}/healthz", timeout=10).status_code == 200
                        slowest = max(slowest, time.monotonic() - started)
                    assert slowest < 0.5, f"a probe took {slowest:.2f} s"
                    assert not pending.done()  # it is waiting on Redis
                    server.process.send_signal(signal.SIGCONT)
                    answer = pending.result(30)
            finally:
                server.process.send_signal(signal.SIGCONT)
            # Answered within the Redis socket timeout either way: counted, or 503 JSON.
            assert answer.status_code in (200, 503), answer.text
            assert httpx.get(url, headers=bearer("alice")).status_code == 200
    finally:
        server.stop()


def test_openapi_describes_every_route(gateway: GatewayProcess) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for route in [*endpoints.routes, *shares.routes]:
        path = route.path.replace("{path:path}", "{path}")
        for method in route.methods or ():
            if method == "HEAD":
                continue
            operation = document["paths"][path][method.lower()]
            assert operation["security"] == [{"bearer": []}]
            assert {"401", "429", "503"} <= set(operation["responses"])
    preview = document["components"]["schemas"]["Preview"]
    assert set(preview["required"]) == PREVIEW_KEYS


def test_unknown_routes_methods_and_redis_down_are_json() -> None:
    server = start_redis(bind_bridge=False)
    try:
        env = settings_env(redis_url=server.url, jwt_secret="x" * 40)
        with run_gateway(env) as gw:
            assert httpx.get(f"{gw.url}/v1/nope").json()["error"] == "not_found"
            wrong = httpx.patch(f"{gw.url}/v1/previews")
            assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
            server.stop()
            headers = {"Authorization": "Bearer " + token("alice", secret="x" * 40)}
            down = httpx.get(f"{gw.url}/v1/previews", headers=headers, timeout=20)
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "unavailable" and server.password not in down.text
    finally:
        server.stop()
