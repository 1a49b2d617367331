"""Redis restarted mid-traffic, with a real gateway, controller and preview container.

"Restart" is what an operator does to a production Redis: ``SHUTDOWN`` (the append-only
file, fsync'd every second, is flushed), then ``redis-server`` again on the same port,
password and data directory. Data comes back; what lives only in the server's memory
does not: connections, pub/sub subscriptions, and the ACL users made at run time (one per
preview container), which the controller must recreate for supervisors to log in again.
Expiring keys keep their absolute deadline, so the heartbeats lapse during the outage.
"""

from __future__ import annotations

import time

import httpx

from gateway.observability.recorder import spool_dir
from shared import keys
from shared.settings import Settings
from tests.faults.conftest import System, SystemFactory
from tests.gateway.api_helpers import start_body
from tests.utils import wait_until

OUTAGE = 6.0  # longer than the route cache's TTL (5 s) and the heartbeat TTL (4 s)


def test_redis_restart_keeps_open_previews_and_recovers_by_itself(
    make_system: SystemFactory,
) -> None:
    system = make_system(persistent_redis=True)
    sid = system.start("outage")
    preview = system.wait_state(sid, "ready")
    cid = system.container_of(sid)
    browser = system.open(preview)
    assert browser.get("/").status_code == 200
    try:
        outage_and_back(system, sid, cid, browser)
    finally:
        browser.close()
    # And the system acts again: a stop frees the slot at once, and the container takes
    # its reset command (the supervisor reads its command stream again): kept for alice.
    assert system.api("DELETE", f"/v1/previews/{sid}").status_code == 204
    assert system.redis.zcard(keys.user_slots("alice")) == 0
    wait_until(
        lambda: system.redis.hget(keys.container(cid), "state") == b"reserved",
        60,
        "the container reset and reserved for its user",
    )


def outage_and_back(system: System, sid: str, cid: str, browser: httpx.Client) -> None:
    """Redis down for OUTAGE seconds, then restarted: what holds and what comes back."""
    warm = wait_until(system.pooled, 60, "a warm container in the pool")
    system.redis_server.shutdown()
    down = time.monotonic()
    # The open preview keeps being proxied from the route cache, past its TTL.
    while time.monotonic() - down < OUTAGE:
        page = browser.get("/")
        assert page.status_code == 200, page.text
        # The API answers 503 with a JSON error a client can act on, never a 500.
        for method, path, body in (
            ("GET", f"/v1/previews/{sid}", None),
            ("GET", "/v1/previews", None),
            ("POST", "/v1/previews", start_body("during")),
            ("DELETE", f"/v1/previews/{sid}", None),
        ):
            answer = system.api(method, path, json=body)
            assert answer.status_code == 503, (method, path, answer.status_code, answer.text)
            assert answer.json()["error"] == "unavailable", answer.text
            assert answer.headers["retry-after"]
        assert system.api("GET", "/readyz").status_code == 503
        time.sleep(0.5)

    system.redis_server.restart()
    back = time.monotonic()
    # The API recovers by itself; the preview is still ready, on the same container.
    again = system.wait_state(sid, "ready", timeout=30)
    assert again["error"] is None
    assert system.container_of(sid) == cid
    # The supervisor logged in again (its ACL user was recreated) and heartbeats.
    wait_until(
        lambda: system.redis.exists(keys.heartbeat(cid)), 30, "the supervisor's heartbeat back"
    )
    recovered = time.monotonic() - back
    # ... and the reaper (a pass every 0.3 s) did not fail the session for the heartbeats
    # the outage ate, and does not now.
    heartbeat_back = time.monotonic()
    while time.monotonic() - heartbeat_back < 2.0:
        assert system.redis.hget(keys.session(sid), "state") == b"ready"
        time.sleep(0.5)
    assert browser.get("/").status_code == 200
    # The warm pool was not thrown away for the heartbeats it could not write either.
    assert warm <= system.pooled()

    # No slot leaked or double-counted: one live preview, one slot.
    assert system.redis.zcard(keys.user_slots("alice")) == 1
    # No record lost: the start's record is stored once; nothing is left spooled.
    assert system.redis.hexists(keys.RECORDS_DATA, f"{sid}:start")
    spool = spool_dir(Settings.from_env({}, state_dir=str(system.state_dir)))
    leftover = [p for p in spool.glob("*.jsonl") if p.stat().st_size] if spool.exists() else []
    assert not leftover
    print(f"redis restart: outage {OUTAGE:.0f}s, supervisor heartbeating {recovered:.1f}s after")
