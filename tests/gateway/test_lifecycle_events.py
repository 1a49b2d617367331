"""A preview's later life as its owner's IDE hears it: ``GET .../events?follow=1`` through a
real gateway, Redis and container stays open after ``ready`` and sends each sleep, wake,
hibernation and resume (``resuming`` then ``ready``), and ``stopped`` last; a reconnect
with ``Last-Event-ID`` resumes after the last change it saw; another user's id is a 404.
The admin overview counts the sleeping and hibernated previews and lists the wakes (with
their latency) and the resumes; the records keep each period (start or resume to
hibernation or stop) with its sleeps and wakes."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from redis import Redis as SyncRedis

from gateway.observability.records import Record
from shared import keys
from tests.gateway.api_helpers import add_event, bearer, fake_session
from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_events import parse
from tests.gateway.test_sleep import SIGNING, api, start_ready
from tests.utils import GatewayProcess, wait_until


class Follower:
    """One ``follow`` stream read on a thread; ``events`` grows as frames arrive."""

    def __init__(self, gw: GatewayProcess, sid: str, last_id: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.status = 0
        self.ended = threading.Event()
        headers = bearer()
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        url = f"{gw.url}/v1/previews/{sid}/events?follow=1"
        self.thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self.thread.start()

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url, headers=headers, timeout=300) as response:
                self.status = response.status_code
                buffer = ""
                for chunk in response.iter_text():
                    buffer += chunk
                    done, _, buffer = buffer.rpartition("\n\n")
                    if done:
                        self.events.extend(parse(done + "\n\n"))
        finally:
            self.ended.set()

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def saw(self, *names: str) -> list[str]:
        """Wait until the stream's last events are ``names``; all it sent so far."""
        n = len(names)
        wait_until(lambda: tuple(self.names()[-n:]) == names, 120, f"events {names}")
        return self.names()


def note(redis: SyncRedis, sid: str, state: str) -> str:
    """A state change as the scripts making it write it."""
    raw = redis.xadd(keys.lifecycle(sid), {"state": state, "at": "1.5"})
    return f"L{raw.decode()}"


def test_follow_relays_state_changes_once_and_resumes_after_them(
    gateway: GatewayProcess, sync_redis: SyncRedis
) -> None:
    session = fake_session(sync_redis)
    sid, cid = session.id, session.container
    add_event(sync_redis, cid, "progress", sid, step="files", percent=100)
    add_event(sync_redis, cid, "ready", sid, port=3000)
    follower = Follower(gateway, sid)
    follower.saw("progress", "ready")
    note(sync_redis, sid, "ready")  # the fold's copy of the start's ready: not sent again
    asleep = note(sync_redis, sid, "sleeping")
    note(sync_redis, sid, "sleeping")
    note(sync_redis, sid, "no-such-state")  # nothing a client should act on
    note(sync_redis, sid, "ready")
    follower.saw("progress", "ready", "sleeping", "ready")
    assert follower.events[2]["id"] == asleep
    assert follower.events[2]["data"] == '{"state":"sleeping","at":1.5}'
    # A reconnect after `sleeping` hears what followed it, not the start again.
    again = Follower(gateway, sid, last_id=asleep)
    again.saw("ready")
    note(sync_redis, sid, "stopped")
    for each in (follower, again):
        each.saw("stopped")
        assert each.ended.wait(10), "the stream ended with the preview"
    assert again.names() == ["ready", "stopped"]
    bad = httpx.get(
        f"{gateway.url}/v1/previews/{sid}/events?follow=1",
        headers={**bearer(), "Last-Event-ID": "Lnope"},
    )
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"


def test_follow_streams_are_capped_per_user(gateway: GatewayProcess, sync_redis: SyncRedis) -> None:
    """Each holds a blocking Redis read for the preview's life: a user opening them by the
    hundred gets a 429 past the cap, and another user is not affected."""
    mine, theirs = fake_session(sync_redis), fake_session(sync_redis, user="bob")
    add_event(sync_redis, mine.container, "ready", mine.id, port=3000)
    open_ = [Follower(gateway, mine.id) for _ in range(10)]
    for each in open_:
        each.saw("ready")
    refused = httpx.get(f"{gateway.url}/v1/previews/{mine.id}/events?follow=1", headers=bearer())
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_streams"
    # Without `follow` (a start's progress, which ends) nothing changes.
    plain = httpx.get(f"{gateway.url}/v1/previews/{mine.id}/events", headers=bearer())
    assert plain.status_code == 200
    add_event(sync_redis, theirs.container, "ready", theirs.id, port=3000)
    bobs = httpx.stream(
        "GET", f"{gateway.url}/v1/previews/{theirs.id}/events?follow=1", headers=bearer("bob")
    )
    with bobs as response:
        assert response.status_code == 200
    note(sync_redis, mine.id, "stopped")
    for each in open_:
        assert each.ended.wait(10)
    wait_until(
        lambda: (
            httpx.get(
                f"{gateway.url}/v1/previews/{mine.id}/events?follow=1",
                headers={**bearer(), "Last-Event-ID": "L0-0"},
            ).status_code
            == 200
        ),
        10,
        "a follow stream free again",
    )


def overview(gw: GatewayProcess) -> dict[str, Any]:
    found = httpx.get(f"{gw.url}/v1/admin/overview", headers=bearer("ops", scope="admin"))
    assert found.status_code == 200, found.text
    lifecycle: dict[str, Any] = found.json()["lifecycle"]
    return lifecycle


def test_follow_hears_sleep_wake_hibernate_resume_and_stop(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw = start_gateway(signing_secret=SIGNING)
    sid, _ = start_ready(gw, "followed")

    # Another user's id is no id, following or not.
    for query in ("?follow=1", ""):
        assert api(gw, "GET", f"/v1/previews/{sid}/events{query}", "bob").status_code == 404
    assert api(gw, "GET", f"/v1/previews/{sid}/events?follow=yes").status_code == 422

    follower = Follower(gw, sid)
    # The start's events first, as without `follow`, ending in ready; the stream stays open.
    assert follower.saw("ready")[0] in ("progress", "warning", "ready")
    assert not follower.ended.is_set() and follower.status == 200

    assert api(gw, "POST", f"/v1/previews/{sid}/sleep").status_code == 202
    follower.saw("ready", "sleeping")
    assert overview(gw)["sleeping"] == 1
    assert api(gw, "POST", f"/v1/previews/{sid}/wake").status_code == 202
    follower.saw("sleeping", "ready")
    wakes = wait_until(lambda: overview(gw)["recent_wakes"], 10, "the wake listed")
    assert wakes[0]["session"] == sid and wakes[0]["ms"] >= 0 and wakes[0]["trigger"]

    assert api(gw, "POST", f"/v1/previews/{sid}/hibernate").status_code == 202
    follower.saw("sleeping", "ready", "sleeping", "hibernated")
    hibernated_id = follower.events[-1]["id"]
    assert hibernated_id.startswith("L")
    now = overview(gw)
    assert (now["sleeping"], now["hibernated"]) == (0, 1)
    assert sync_redis.zscore(keys.HIBERNATED, sid) is not None
    scraped = httpx.get(f"{gw.url}/metrics", timeout=10).text
    assert 'preview_sessions{state="hibernated"} 1' in scraped
    # A follower that comes now is told the state at once (there is no container to relay).
    late = Follower(gw, sid)
    assert late.saw("hibernated") == ["hibernated"]

    assert api(gw, "POST", f"/v1/previews/{sid}/wake").status_code == 202
    follower.saw("hibernated", "resuming", "ready")
    now = overview(gw)
    assert now["hibernated"] == 0 and now["recent_resumes"][0]["session"] == sid
    assert sync_redis.zscore(keys.HIBERNATED, sid) is None

    # A follower that lost its connection after `hibernated` hears the rest again.
    again = Follower(gw, sid, last_id=hibernated_id)
    again.saw("resuming", "ready")
    late.saw("hibernated", "resuming", "ready")
    assert api(gw, "DELETE", f"/v1/previews/{sid}").status_code == 204
    for each in (follower, again, late):
        each.saw("stopped")
        assert each.ended.wait(30), "the stream ended with the preview"

    # The records keep each period: the start (one sleep, one wake) up to its hibernation,
    # the resume up to the stop; the hibernation is the first period's end.
    def stored() -> dict[str, Record]:
        raw = sync_redis.hgetall(keys.RECORDS_DATA)
        return {k.decode(): Record.from_json(v) for k, v in raw.items()}

    found = wait_until(lambda: len(stored()) == 4 and stored(), 10, "four records")
    first_stop = found[f"{sid}:stop"]
    assert found[f"{sid}:start"].outcome == "ready"
    assert (first_stop.outcome, first_stop.sleeps, first_stop.wakes) == ("hibernated", 2, 1)
    resume = next(r for r in found.values() if r.kind == "resume")
    last_stop = found[resume.id.replace(":resume:", ":stop:")]
    assert resume.outcome == "ready" and resume.created_at > first_stop.created_at
    assert (last_stop.outcome, last_stop.sleeps, last_stop.wakes) == ("user", 0, 0)
    # What the first follower heard, in order, each once.
    lifecycle = [n for n in follower.names() if n not in ("progress", "warning")]
    assert lifecycle == [
        "ready",
        "sleeping",
        "ready",
        "sleeping",
        "hibernated",
        "resuming",
        "ready",
        "stopped",
    ]
