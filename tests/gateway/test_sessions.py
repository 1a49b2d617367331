"""Session records follow the supervisor's events, also when two gateways fold at once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from gateway.background import Background
from gateway.controller.reaper import Reaper
from gateway.sessions.endings import Endings
from gateway.sessions.previews import Previews
from gateway.sessions.start import Starter
from gateway.sessions.store import (
    LIVE_BATCH,
    Session,
    fold,
    live_sessions,
    merge_result,
    new_id,
)
from shared import keys
from shared.messages import Event
from shared.settings import Settings


def test_ids_are_dns_safe_and_unguessable() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 16 and i.isalnum() and i == i.lower() for i in ids)


def test_fold_follows_the_latest_event() -> None:
    session = Session("s", "alice", "p", created_at=100.0)
    changed = fold(session, [Event("progress", "s", {"step": "files", "percent": 0})])
    assert session.state == "preparing" and changed["state"] == "preparing"
    fold(session, [Event("progress", "s", {"step": "devserver", "percent": 0})])
    assert session.state == "starting"
    fold(session, [Event("ready", "s", {"port": 3000}, ts=101.5)])
    assert session.state == "ready" and session.timings["total"] == 1500
    fold(session, [Event("error", "s", {"reason": "crashed", "detail": ["a", "b"]})])
    assert session.state == "failed"
    assert session.error == {"reason": "crashed", "detail": ["a", "b"]}
    merge_result(session, {"timings_ms": {"files": 5, "bad": "x"}, "dependencies": "restored"})
    assert session.timings["files"] == 5 and "bad" not in session.timings
    assert session.dependencies == "restored"
    assert fold(session, [Event("warning", "s", {"type": "x", "message": "m"})]) == {}


async def test_a_stale_snapshot_still_writes_what_the_events_decide(redis: Redis) -> None:
    settings = Settings.from_env({}, redis_url="redis://unused")
    previews = Previews(settings, redis, cast(Any, None), Background())
    cid = "pvc-test"
    session = Session("s1", "alice", "p", state="ready", container=cid, events_from="0-0")
    await redis.hset(keys.session("s1"), mapping=session.to_record())  # type: ignore[arg-type]
    stale = await previews.load("s1")
    assert stale is not None
    await redis.xadd(keys.events(cid), Event("progress", "s1", {"step": "devserver"}).to_fields())  # type: ignore[arg-type]
    other = await previews.load("s1")
    assert other is not None
    await previews.refresh(other)  # another gateway folds the restart's first event
    assert await redis.hget(keys.session("s1"), "state") == b"starting"
    await redis.xadd(keys.events(cid), Event("ready", "s1", {"port": 3000}).to_fields())  # type: ignore[arg-type]
    await previews.refresh(stale)  # its snapshot says "ready": the write must still happen
    assert await redis.hget(keys.session("s1"), "state") == b"ready"
    again = await previews.load("s1")
    assert again is not None and again.state == "ready"


async def test_folding_never_moves_a_session_into_or_out_of_sleep(redis: Redis) -> None:
    """Only the sleep and wake scripts do: a fold from a snapshot read before either ran
    must not undo it (a frozen dev server taken for ready would hang requests)."""
    from gateway.sessions.store import ADVANCE

    advance = redis.register_script(ADVANCE)
    sid = new_id()
    key = keys.session(sid)
    where = [key, keys.ROUTE_CHANGES, keys.lifecycle(sid)]
    await redis.hset(key, mapping={"id": sid, "state": "sleeping", "events_from": "1-0"})
    try:
        args = ["2-0", "state", "ready", "error", ""]
        assert await advance(keys=where, args=args)
        assert await redis.hget(key, "state") == b"sleeping"
        assert await redis.hget(key, "events_seen") == b"2-0"  # the rest is written
        await redis.hset(key, "state", "ready")
        assert await advance(keys=where, args=["3-0", "state", "sleeping"])
        assert await redis.hget(key, "state") == b"ready"
        assert await redis.xlen(keys.lifecycle(sid)) == 0  # no change: nothing to follow
        # Failing a sleeping session is allowed (the reaper's and endings' path).
        await redis.hset(key, "state", "sleeping")
        assert await advance(keys=where, args=["4-0", "state", "failed"])
        assert await redis.hget(key, "state") == b"failed"
        notes: Any = await redis.xrange(keys.lifecycle(sid))
        assert [n[b"state"] for _, n in notes] == [b"failed"]  # its followers hear it
        assert float(notes[0][1][b"at"]) > 0
        assert 0 < await redis.ttl(keys.lifecycle(sid)) <= keys.LIFECYCLE_TTL
    finally:
        await redis.delete(key, keys.lifecycle(sid))


async def test_all_live_sessions_are_read_in_batches_oldest_first(redis: Redis) -> None:
    """The one read of every live session (API list, tracker, reaper, operator views):
    more than a batch, a member whose record is gone is left out, stopping ones are in."""
    count = LIVE_BATCH * 2 + 7
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            sid = f"s{i:05d}"
            state = "stopping" if i == 3 else "ready"
            record = Session(sid, "alice", "p", state=state, created_at=float(count - i))
            pipe.hset(keys.session(sid), mapping=record.to_record())  # type: ignore[arg-type]
            pipe.sadd(keys.SESSIONS, sid)
        pipe.sadd(keys.SESSIONS, "tgone")  # its record expired meanwhile
        await pipe.execute()
    found = await live_sessions(redis)
    assert len(found) == count
    assert [s.created_at for s in found] == sorted(s.created_at for s in found)
    assert {s.state for s in found} == {"ready", "stopping"}
    first = await live_sessions(redis, limit=10)
    assert {s.id for s in first} == {f"s{i:05d}" for i in range(10)}


ENDINGS = ("stop", "fail", "abandon", "drop_abandoned")


@pytest.mark.parametrize("ending", ENDINGS)
async def test_every_way_a_session_ends_cleans_the_same_keys(redis: Redis, ending: str) -> None:
    """Stopped, failed, a start undone or a start abandoned by a dead gateway: one
    cleanup. No slot, live-set member, activity key or hot-start pointer is left behind,
    the record is gone (a failed one's expires soon) and every gateway hears the route
    changed (or it would keep proxying to a container that serves someone else)."""
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)  # no container
    session = Session("s1", "alice", "p", state="ready", created_at=1.0)
    taken = await previews.slots.reserve("alice", "p", "s1", session.to_record())
    assert taken.outcome == "ok"
    await redis.set(keys.activity("s1"), "1")
    async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(keys.ROUTE_CHANGES)
        endings = Endings(redis, cast(Any, None), previews)
        if ending == "stop":
            assert await previews.stop(session)
            await background.close(10)  # the release runs in the background
        elif ending == "fail":
            assert await endings.fail(session, "crashed", "it crashed", container="keep")
        elif ending == "abandon":
            await Starter(previews)._abandon(session)
        else:
            reaper = Reaper(settings, redis, cast(Any, None), previews, endings)
            await reaper._drop_abandoned(session)
        heard = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while "s1" not in heard and loop.time() < deadline:
            message = await pubsub.get_message(timeout=deadline - loop.time())
            if message is not None:
                heard.add(message["data"].decode())
        assert "s1" in heard
    assert not await redis.sismember(keys.SESSIONS, "s1")
    assert await redis.zscore(keys.user_slots("alice"), "s1") is None
    assert not await redis.exists(keys.activity("s1"), keys.user_project("alice", "p"))
    if ending == "fail":  # kept a while, for its owner and the proxy's error page
        assert 0 < await redis.ttl(keys.session("s1")) <= keys.STOPPED_SESSION_TTL
    else:
        assert not await redis.exists(keys.session("s1"))
