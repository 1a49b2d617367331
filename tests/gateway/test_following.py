"""A request held on a starting (or resuming) preview is answered at its ``ready`` event,
not a tracker pass and a polling backoff later: the proxy's waiter follows the preview's
events through the control plane's hook (gateway/sessions/following.py). No tracker runs
in these tests, so without the hook nothing would ever fold the ``ready``."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any, cast

from redis.asyncio import Redis

from gateway.background import Background
from gateway.proxy.routes import RouteCache
from gateway.proxy.starting import ReadyWaits, status_json
from gateway.sessions.following import Follower
from gateway.sessions.previews import Previews
from gateway.sessions.store import Session
from shared import keys
from shared.messages import Event
from shared.settings import Settings

HOLD = 20.0


async def starting(redis: Redis, sid: str, state: str = "resuming") -> Session:
    session = Session(sid, "alice", "p", state=state, container="pvc-follow", events_from="0-0")
    await redis.hset(keys.session(sid), mapping=session.to_record())  # type: ignore[arg-type]
    return session


def event(kind: str, sid: str, **data: Any) -> Any:
    return Event(kind, sid, data).to_fields()


async def test_a_held_request_is_answered_at_the_ready_event(redis: Redis) -> None:
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)
    state = SimpleNamespace(follower=Follower(previews, redis))
    waits = ReadyWaits(RouteCache(redis), background, HOLD, state)
    await starting(redis, "s1")
    # Another preview's events on the same stream do not end the wait.
    await redis.xadd(keys.events("pvc-follow"), event("progress", "s1", step="devserver"))
    held = [asyncio.create_task(waits.wait("s1")) for _ in range(3)]  # one waiter for all
    try:
        done, _ = await asyncio.wait(held, timeout=0.5)
        assert not done, "answered before the dev server was ready"
        await redis.xadd(keys.events("pvc-follow"), event("ready", "other", port=3000))
        done, _ = await asyncio.wait(held, timeout=0.5)
        assert not done, "another session's ready ended the wait"
        began = time.monotonic()
        await redis.xadd(keys.events("pvc-follow"), event("ready", "s1", port=3000))
        routes = await asyncio.wait_for(asyncio.gather(*held), HOLD / 2)
        assert time.monotonic() - began < 2.0  # not a hold timeout
        assert {r.state for r in routes if r is not None} == {"ready"} and None not in routes
        assert await redis.hget(keys.session("s1"), "state") == b"ready"  # folded, published
    finally:
        for task in held:
            task.cancel()
        await background.close(1.0)


async def test_the_starting_pages_status_feed_reads_the_events_folded(redis: Redis) -> None:
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)
    routes = RouteCache(redis)
    waits = ReadyWaits(
        routes, background, HOLD, SimpleNamespace(follower=Follower(previews, redis))
    )
    try:
        await starting(redis, "s2", "starting")
        route = await routes.get("s2")
        assert route is not None and (await waits.current(route)).state == "starting"
        await redis.xadd(keys.events("pvc-follow"), event("ready", "s2", port=3000))
        assert (await waits.current(route)).state == "ready"
        # Without the hook (a gateway built without the control plane): as it was.
        bare = ReadyWaits(routes, background, HOLD)
        assert await bare.current(route) is route
    finally:
        await background.close(1.0)


async def test_a_failed_start_ends_the_wait_too(redis: Redis) -> None:
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)
    follower = Follower(previews, redis)
    await starting(redis, "s3")
    waiting = asyncio.create_task(follower.until_started("s3", HOLD))
    try:
        await redis.xadd(keys.events("pvc-follow"), event("error", "s3", reason="boom"))
        await asyncio.wait_for(waiting, HOLD / 2)
        assert await redis.hget(keys.session("s3"), "state") == b"failed"
        # A preview that is gone, or already past its start: at once.
        await asyncio.wait_for(follower.until_started("nope", HOLD), 1.0)
        await asyncio.wait_for(follower.until_started("s3", HOLD), 1.0)
    finally:
        waiting.cancel()
        await background.close(1.0)


async def status(
    redis: Redis, waits: ReadyWaits, sid: str, seen: str | None = None
) -> tuple[dict[str, Any], float]:
    """One call of the starting page's status feed: its JSON and how long it took."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    route = await waits._routes.get(sid)
    assert route is not None
    query = f"seen={seen}".encode() if seen is not None else b""
    began = time.monotonic()
    await status_json(redis, waits, route, {"query_string": query}, send)
    return json.loads(sent[-1]["body"]), time.monotonic() - began


async def test_the_status_feed_is_held_until_the_preview_moves(redis: Redis) -> None:
    """The starting page reloads at ``ready``, not at its next poll; pages left open
    share one follower per preview, and what is not one of our versions is not held."""
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)
    waits = ReadyWaits(
        RouteCache(redis), background, HOLD, SimpleNamespace(follower=Follower(previews, redis))
    )
    try:
        await starting(redis, "s4", "starting")
        first, took = await status(redis, waits, "s4")
        assert first["state"] == "starting" and took < 1.0 and first["version"]
        for seen in ("", "x" * 33, "stale"):  # not what the page shows: at once
            assert (await status(redis, waits, "s4", seen))[1] < 1.0
        pages = [
            asyncio.create_task(status(redis, waits, "s4", first["version"])) for _ in range(20)
        ]
        done, _ = await asyncio.wait(pages, timeout=0.5)
        assert not done, "answered while nothing changed"
        assert len(background.tasks) == 1  # one follower for the twenty pages
        await redis.xadd(keys.events("pvc-follow"), event("progress", "s4", percent=40))
        moved = await asyncio.wait_for(asyncio.gather(*pages), 2.0)
        assert {s["progress"]["percent"] for s, _ in moved} == {40}
        held = asyncio.create_task(status(redis, waits, "s4", moved[0][0]["version"]))
        began = time.monotonic()
        await redis.xadd(keys.events("pvc-follow"), event("ready", "s4", port=3000))
        ready, _ = await asyncio.wait_for(held, 2.0)
        assert ready["state"] == "ready" and time.monotonic() - began < 1.0
        assert ready["version"] != moved[0][0]["version"]
        # Without the hook (a gateway built without the control plane): never held.
        bare = ReadyWaits(RouteCache(redis), background, HOLD)
        await starting(redis, "s5", "starting")
        plain, _ = await status(redis, bare, "s5")
        assert (await status(redis, bare, "s5", plain["version"]))[1] < 1.0
    finally:
        await background.close(1.0)
