"""Hibernate and resume through a real gateway, Redis and containers: the workspace packed
to the host's cache volume and the container released; a visit shows the starting page and
then the app, at the same id, URL and cookie, with the files as they were; another user's
id is a 404; a start at the limit hibernates the user's sleeping preview instead of a 429,
and a resume over the limit is a 429 naming the live ones; a damaged archive fails the
resume with a clear reason, and nothing hangs."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
from redis import Redis as SyncRedis

from shared import keys
from tests.gateway.api_helpers import start_body
from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_api import container_file, wait_ready
from tests.gateway.test_sleep import SIGNING, api, open_preview, start_ready
from tests.utils import wait_until

HTML = {"accept": "text/html"}


def state(gw: Any, sid: str, user: str = "alice") -> str:
    found = api(gw, "GET", f"/v1/previews/{sid}", user)
    if found.status_code != 200:
        print(gw.log()[-6000:])
    assert found.status_code == 200, found.text
    return str(found.json()["state"])


def cache_exec(sync_redis: SyncRedis, script: str) -> str:
    """Run `script` as root in one of our containers (they all mount the host's cache)."""
    cid = next(c.decode() for c in sync_redis.smembers(keys.CONTAINERS))
    done = subprocess.run(
        ["docker", "exec", "-u", "0", cid, "sh", "-c", script], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_hibernate_then_a_visit_resumes_at_the_same_url(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw = start_gateway(signing_secret=SIGNING)
    sid, preview = start_ready(gw, "hib")
    assert api(gw, "PUT", f"/v1/previews/{sid}/files/note.txt", content=b"kept").status_code == 200
    (browser,) = open_preview(preview, gw)
    with browser:
        assert browser.get("/").status_code == 200
        cid = sync_redis.hget(keys.session(sid), "container").decode()  # type: ignore[union-attr]

        for action in ("hibernate", "wake"):  # another user's id is no id
            assert api(gw, "POST", f"/v1/previews/{sid}/{action}", "bob").status_code == 404
        hibernated = api(gw, "POST", f"/v1/previews/{sid}/hibernate")
        assert hibernated.status_code == 202, hibernated.text
        assert hibernated.json()["state"] == "hibernated"
        listed = api(gw, "GET", "/v1/previews").json()["previews"]
        assert [(p["id"], p["state"]) for p in listed] == [(sid, "hibernated")]
        assert sync_redis.zscore(keys.user_slots("alice"), sid) is None  # the slot is free
        assert not sync_redis.sismember(keys.SESSIONS, sid)
        assert 0 < sync_redis.ttl(keys.session(sid)) <= 86400
        archive = sync_redis.hget(keys.session(sid), "archive").decode()  # type: ignore[union-attr]
        assert sid in archive and "sha256" in archive
        wait_until(
            lambda: sync_redis.hget(keys.container(cid), "session") in (None, b""),
            30,
            "the container released",
        )

        # A stranger (no cookie, or another preview's) cannot make it resume.
        with httpx.Client(base_url=gw.url, headers={"host": browser.headers["host"]}) as stranger:
            assert stranger.get("/", headers=HTML).status_code == 401
            forged = {"cookie": f"pv_{sid}=forged"}
            assert stranger.get("/", headers=forged).status_code == 401
        assert state(gw, sid) == "hibernated"

        # A browser's visit: the starting page, then the app, same URL and cookie.
        page = browser.get("/", headers=HTML)
        assert page.status_code == 200 and "Starting your preview" in page.text
        assert state(gw, sid) in ("resuming", "preparing", "starting", "ready")
        wait_until(lambda: state(gw, sid) == "ready", 120, "the resumed preview ready")
        assert browser.get("/").status_code == 200
        resumed_cid = sync_redis.hget(keys.session(sid), "container").decode()  # type: ignore[union-attr]
        assert container_file(resumed_cid, "note.txt") == "kept"

        # Damaged on the host: the resume fails with a clear reason; nothing hangs.
        assert api(gw, "POST", f"/v1/previews/{sid}/hibernate").status_code == 202
        name = f"/cache/hibernated/*-{sid}.tar.zst"
        cache_exec(
            sync_redis,
            f"for f in {name}; do printf garbage | dd of=$f bs=1 seek=100 conv=notrunc; done",
        )
        woke = api(gw, "POST", f"/v1/previews/{sid}/wake")
        assert woke.status_code == 202, woke.text
        wait_until(lambda: state(gw, sid) == "failed", 60, "the damaged resume to fail")
        failed = api(gw, "GET", f"/v1/previews/{sid}").json()
        assert "damaged" in failed["error"]["reason"], failed
        answer = browser.get("/")
        assert answer.status_code == 503 and "damaged" in answer.json()["detail"]
        page = browser.get("/", headers=HTML)
        assert page.status_code == 503 and "damaged" in page.text
    assert api(gw, "DELETE", f"/v1/previews/{sid}").status_code == 204


def test_limits_with_sleeping_and_hibernated_previews(
    start_gateway: GatewayFactory, sync_redis: SyncRedis
) -> None:
    gw = start_gateway(signing_secret=SIGNING, max_concurrent_per_user=1)
    first = api(gw, "POST", "/v1/previews", json=start_body("one")).json()["id"]
    wait_ready(gw, first, timeout=120)
    # Awake, it holds the only slot.
    refused = api(gw, "POST", "/v1/previews", json=start_body("two"))
    assert refused.status_code == 429 and refused.json()["active"] == [first]
    # Asleep, a start hibernates it instead of refusing.
    assert api(gw, "POST", f"/v1/previews/{first}/sleep").status_code == 202
    second = api(gw, "POST", "/v1/previews", json=start_body("two"))
    assert second.status_code == 202, second.text
    assert state(gw, first) == "hibernated"
    second_id = second.json()["id"]
    wait_ready(gw, second_id, timeout=120)
    # Resuming the first is over the limit now: a 429 that names the live one.
    over = api(gw, "POST", f"/v1/previews/{first}/wake")
    assert over.status_code == 429 and over.json()["active"] == [second_id]
    preview = api(gw, "GET", f"/v1/previews/{first}").json()
    (browser,) = open_preview(preview, gw)
    with browser:
        page = browser.get("/", headers=HTML)
        assert page.status_code == 429 and second_id in page.text
        assert state(gw, first) == "hibernated"
        assert api(gw, "DELETE", f"/v1/previews/{second_id}").status_code == 204
        assert browser.get("/", headers=HTML).status_code == 200  # the starting page
        wait_until(lambda: state(gw, first) == "ready", 120, "the resumed preview ready")
        assert browser.get("/").status_code == 200
        # Hibernated again, its archive's host then gone (a host taken out of the
        # configuration): the resume says so, as JSON and as a page, takes no container
        # anywhere else, and the preview stays hibernated.
        assert api(gw, "POST", f"/v1/previews/{first}/hibernate").status_code == 202
        record = json.loads(sync_redis.hget(keys.session(first), "archive") or b"{}")
        gone_host = json.dumps({**record, "host": "tcp://192.0.2.1:2375"})
        sync_redis.hset(keys.session(first), "archive", gone_host)
        gone = api(gw, "POST", f"/v1/previews/{first}/wake")
        assert gone.status_code == 503 and gone.json()["error"] == "archive_host_unavailable"
        assert "start the preview again" in gone.json()["detail"]
        page = browser.get("/", headers=HTML)
        assert page.status_code == 503 and "start the preview again" in page.text
    assert state(gw, first) == "hibernated"
    assert sync_redis.zcard(keys.user_slots("alice")) == 0  # the slot given back
    # Deleted: gone from the list and the index.
    assert api(gw, "DELETE", f"/v1/previews/{first}").status_code == 204
    assert api(gw, "GET", "/v1/previews").json()["previews"] == []
    assert sync_redis.zcard(keys.user_hibernated("alice")) == 0
    assert httpx.get(f"{gw.url}/healthz").status_code == 200
