"""Server-Sent Events relayed from a session's event stream: order, filtering, resume.

Sessions here are written straight into Redis (no container): the events are what a
supervisor would write, so every case is exact and fast.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.api import events
from gateway.sessions.store import Session
from shared import keys
from tests.gateway.api_helpers import add_event, bearer, fake_session
from tests.utils import GatewayProcess, async_wait_until, wait_until


def parse(raw: str) -> list[dict[str, Any]]:
    """SSE text → [{id, event, data}] (comments and the retry hint dropped)."""
    found = []
    for block in raw.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            found.append(fields)
    return found


def stream(gw: GatewayProcess, sid: str, last_id: str | None = None) -> list[dict[str, Any]]:
    headers = bearer()
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    response = httpx.get(f"{gw.url}/v1/previews/{sid}/events", headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse(response.text)


def test_events_in_order_only_this_sessions_and_resumable(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    cid = "pvc-fake1"
    add_event(sync_redis, cid, "progress", "older-session", step="files", percent=100)
    begin = add_event(sync_redis, cid, "ready", "older-session", port=3000)
    session = fake_session(sync_redis, container=cid, events_from=begin)
    sid = session.id
    ids = [
        add_event(sync_redis, cid, "progress", sid, step="files", percent=0, message="m"),
        add_event(sync_redis, cid, "progress", sid, step="files", percent=100, message="m"),
    ]
    add_event(sync_redis, cid, "progress", "someone-else", step="files", percent=50)
    ids += [
        add_event(sync_redis, cid, "warning", sid, type="next16", message="upgrade"),
        add_event(sync_redis, cid, "progress", sid, step="devserver", percent=100, message="m"),
        add_event(sync_redis, cid, "ready", sid, port=3000),
    ]
    add_event(sync_redis, cid, "warning", sid, type="late", message="after the end")

    got = stream(gateway, sid)
    assert [e["id"] for e in got] == ids
    assert [e["event"] for e in got] == ["progress", "progress", "warning", "progress", "ready"]
    assert '"percent":100' in got[1]["data"] and '"type":"next16"' in got[2]["data"]

    resumed = stream(gateway, sid, last_id=ids[1])
    assert [e["id"] for e in resumed] == ids[2:]
    # An id from before the session's start does not leak earlier sessions' events.
    assert [e["id"] for e in stream(gateway, sid, last_id="0-0")] == ids
    bad = httpx.get(
        f"{gateway.url}/v1/previews/{sid}/events",
        headers={**bearer(), "Last-Event-ID": "nonsense"},
    )
    assert bad.status_code == 400
    # The state was folded from the same events.
    assert httpx.get(f"{gateway.url}/v1/previews/{sid}", headers=bearer()).json()["state"] == (
        "ready"
    )


def test_live_events_are_relayed_and_an_error_ends_the_stream(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    cid = "pvc-fake2"
    session = fake_session(sync_redis, container=cid)
    received: list[dict[str, Any]] = []

    def listen() -> None:
        received.extend(stream(gateway, session.id))

    thread = threading.Thread(target=listen)
    thread.start()
    # The relay is blocked on XREAD once Redis counts a blocked client.
    wait_until(lambda: sync_redis.info("clients")["blocked_clients"] >= 1, 10, "the relay")
    add_event(sync_redis, cid, "progress", session.id, step="dependencies", percent=40)
    add_event(
        sync_redis, cid, "error", session.id, reason="Module not found: 'react-dom'", detail=["l1"]
    )
    thread.join(15)
    assert not thread.is_alive()
    assert [e["event"] for e in received] == ["progress", "error"]
    preview = httpx.get(f"{gateway.url}/v1/previews/{session.id}", headers=bearer()).json()
    assert preview["state"] == "failed"
    assert preview["error"] == {"reason": "Module not found: 'react-dom'", "detail": ["l1"]}


@pytest.mark.slow  # the relay looks at the session once per PING_INTERVAL (15 s)
def test_the_stream_ends_when_the_controller_fails_the_session(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    # Found by bench/bench_load.py: a container that stopped heartbeating writes no
    # `error` event, and its clients waited on the stream forever.
    session = fake_session(sync_redis, container="pvc-fake4")
    received: list[dict[str, Any]] = []

    def listen() -> None:
        received.extend(stream(gateway, session.id))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    wait_until(lambda: sync_redis.info("clients")["blocked_clients"] >= 1, 10, "the relay")
    # What Endings.fail writes: the state, no event.
    sync_redis.hset(keys.session(session.id), mapping={"state": "failed", "error": "{}"})
    thread.join(events.PING_INTERVAL + 4)
    assert not thread.is_alive(), "the stream of a failed session did not end"
    assert received == []


def test_a_client_that_goes_away_stops_the_relay(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    session = fake_session(sync_redis, container="pvc-fake3")
    with httpx.stream(
        "GET", f"{gateway.url}/v1/previews/{session.id}/events", headers=bearer(), timeout=20
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # (kept: dropping it would close the stream)
        assert next(lines) == "retry: 2000"
        wait_until(lambda: sync_redis.info("clients")["blocked_clients"] >= 1, 10, "the relay")
    wait_until(lambda: sync_redis.info("clients")["blocked_clients"] == 0, 20, "the relay to stop")


async def test_pings_while_quiet_and_end_when_the_session_is_gone(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "PING_INTERVAL", 0.2)
    session = Session(id="s1", user="alice", project_id="p", container="pvc-x", events_from="0-0")
    alive = True

    async def is_alive() -> bool:
        return alive

    chunks: list[bytes] = []

    async def consume() -> None:
        async for chunk in events.relay(redis, session, "0-0", is_alive, finished=False):
            chunks.append(chunk)

    task = asyncio.create_task(consume())

    async def pinged() -> bool:
        return chunks.count(b": ping\n\n") >= 2

    await async_wait_until(pinged, 5, "two pings")
    alive = False
    await asyncio.wait_for(task, 5)
    assert chunks[0] == b"retry: 2000\n\n"
