"""The client's whole surface against a real gateway, Redis and Docker, once through
PreviewClient and once through AsyncPreviewClient (the same scenario), and a start's event
stream cut mid-start and resumed with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis

from preview_client import (
    STEPS,
    ApiError,
    AsyncPreviewClient,
    AuthError,
    Event,
    NotFoundError,
    Preview,
    PreviewClient,
)
from shared import keys
from tests.client.relay import Relay
from tests.gateway.api_helpers import SECRET, add_event, fake_session, token
from tests.utils import ROOT, GatewayProcess

SERVER_JS = """
const fs = require("node:fs");
require("node:http").createServer((q, s) => s.end(fs.readFileSync("message.txt")))
  .listen(process.env.PORT || 3000, "0.0.0.0");
"""


def node_app(root: Path) -> Path:
    root.mkdir()
    (root / "package.json").write_text(json.dumps({"name": "m", "scripts": {"dev": "node s.js"}}))
    (root / "s.js").write_text(SERVER_JS)
    (root / "message.txt").write_text("from the folder")
    (root / ".gitignore").write_text("message.txt.bak\n")
    (root / "message.txt.bak").write_text("never sent")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "junk.js").write_text("never sent")
    return root


def page(gateway: GatewayProcess, client: Any, sid: str) -> str:
    """The preview's page through the gateway's proxy, opened with a fresh open_url
    (its token is single-use)."""
    preview: Preview = client.get(sid)
    host = preview.url.split("://", 1)[1].rstrip("/")
    query = preview.open_url.split("?", 1)[1]
    with httpx.Client(base_url=gateway.url, headers={"Host": host}, timeout=30) as browser:
        opened = browser.get(f"/?{query}")
        assert opened.status_code in (302, 303), opened.text
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
        return browser.get("/", headers={"Cookie": cookie}).text


class Blocking:
    """AsyncPreviewClient's coroutines run to completion on one loop, so that one
    scenario drives both clients."""

    def __init__(self, client: AsyncPreviewClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def events(self, *args: Any, **kwargs: Any) -> list[Event]:
        async def collect() -> list[Event]:
            return [event async for event in self.client.events(*args, **kwargs)]

        return self.loop.run_until_complete(collect())


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest, gateway: GatewayProcess) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    made: list[Any] = []

    def factory(sub: str = "alice", **claims: Any) -> Any:
        raw = token(sub, **claims)
        if request.param == "sync":
            client: Any = PreviewClient(gateway.url, raw)
        else:
            client = Blocking(AsyncPreviewClient(gateway.url, raw), loop)
        made.append(client)
        return client

    try:
        yield factory
    finally:
        for client in made:
            client.close()
        loop.close()


def test_whole_surface(make_client: Any, gateway: GatewayProcess, tmp_path: Path) -> None:
    alice = make_client("alice")
    assert alice.list() == []

    # A template, followed to ready through its events.
    started = alice.start("tpl", template="node-basic")
    seen: list[Event] = []
    ready = alice.wait_ready(started.id, on_event=seen.append, timeout=240)
    assert ready.state == "ready" and ready.id == started.id and ready.error is None
    assert [e.step for e in seen if e.type == "progress"][-1] == "devserver"
    assert seen[-1].type == "ready"
    replay = list(alice.events(started.id))  # a finished start: its events, then the end
    assert [e.id for e in replay] == [e.id for e in seen]
    tail = list(alice.events(started.id, seen[-2].id))  # resumed after a given event
    assert [e.type for e in tail] == ["ready"]
    assert alice.start("tpl", template="node-basic").id == started.id  # hot start
    assert alice.write_file(started.id, "notes/a.txt", "héllo") == len("héllo".encode())
    logs = alice.logs(started.id, lines=20)
    assert isinstance(logs.lines, list) and logs.stale is False
    assert alice.restart(started.id).id == started.id
    alice.wait_ready(started.id, timeout=240)

    # Sleep and wake; share links: made, listed, opened by another user, revoked.
    assert alice.sleep(started.id).state == "sleeping"
    assert alice.get(started.id).state == "sleeping"
    assert alice.wake(started.id).state == "ready"
    shared = alice.create_share(started.id, expires_in=600, access="signed_in")
    assert shared.preview_id == started.id and shared.access == "signed_in"
    assert shared.expires_at > shared.created_at and shared.url
    assert [x.id for x in alice.list_shares(started.id)] == [shared.id]
    assert "share_token=" in make_client("viewer").open_share(shared.id)
    alice.revoke_share(started.id, shared.id)
    assert alice.list_shares(started.id) == []
    with pytest.raises(NotFoundError):
        make_client("viewer").open_share(shared.id)
    with pytest.raises(ApiError) as bad_access:
        alice.request("POST", f"/v1/previews/{started.id}/shares", json={"access": "all"})
    assert bad_access.value.status == 422

    # A local folder: packed (.gitignore, node_modules left out), uploaded, served.
    folder = node_app(tmp_path / "app")
    mine = alice.start_folder("folder-app", folder)
    mine = alice.wait_ready(mine.id, timeout=240)
    assert page(gateway, alice, mine.id) == "from the folder"
    assert {p.id for p in alice.list()} == {started.id, mine.id}
    (folder / "message.txt").write_text("edited")
    assert alice.upload_files(mine.id, folder, ["message.txt"]).files == 1
    assert page(gateway, alice, mine.id) == "edited"
    (folder / "message.txt").write_text("whole folder again")
    # package.json, s.js, message.txt, .gitignore: not the .bak nor node_modules
    assert alice.upload_folder(mine.id, folder).files == 4
    assert page(gateway, alice, mine.id) == "whole folder again"

    # Errors carry the API's error and detail.
    with pytest.raises(NotFoundError) as missing:
        make_client("bob").get(mine.id)  # another user's preview is nobody's
    assert missing.value.error == "not_found" and missing.value.status == 404
    with pytest.raises(ApiError) as invalid:
        alice.start("bad id!", template="node-basic")
    assert invalid.value.status == 422 and invalid.value.body["field"] == "project_id"
    with pytest.raises(AuthError) as expired:
        make_client("alice", ttl=-60).list()
    assert expired.value.detail == "token expired"
    with pytest.raises(AuthError) as forbidden:
        alice.pool()
    assert forbidden.value.status == 403
    operator = make_client("ops", scope="admin")
    assert "pooled" in operator.pool()
    assert {p["id"] for p in operator.all_previews()} == {started.id, mine.id}
    assert alice.request("GET", "/v1/previews").json()["previews"]  # the escape hatch

    alice.stop(started.id)
    alice.stop(mine.id)
    assert alice.list() == []
    with pytest.raises(NotFoundError):
        alice.stop(mine.id)


def test_events_followed_past_ready(make_client: Any, sync_redis: SyncRedis) -> None:
    """`events(follow=True)`: the preview's later state changes, until it stops; from a
    state change's id on (as after a cut connection), not the start again."""
    session = fake_session(sync_redis)
    add_event(sync_redis, session.container, "ready", session.id, port=3000)
    states = ("sleeping", "ready", "hibernated", "resuming", "ready", "stopped")
    ids = [sync_redis.xadd(keys.lifecycle(session.id), {"state": s, "at": "2.5"}) for s in states]
    seen = list(make_client().events(session.id, f"L{ids[0].decode()}", follow=True))
    assert [e.type for e in seen] == list(states[1:])
    assert seen[0].data == {"state": "ready", "at": 2.5} and seen[0].id == f"L{ids[1].decode()}"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_event_stream_cut_mid_start_is_resumed(gateway: GatewayProcess, kind: str) -> None:
    loop = asyncio.new_event_loop()
    with Relay(gateway.port) as relay:
        raw = token("carol")
        client: Any = (
            PreviewClient(relay.url, raw)
            if kind == "sync"
            else Blocking(AsyncPreviewClient(relay.url, raw), loop)
        )
        try:
            follow_a_cut_start(client, relay)
        finally:
            client.close()
            loop.close()


def follow_a_cut_start(client: Any, relay: Relay) -> None:
    preview = client.start("cut", template="vite-vanilla")
    seen: list[Event] = []

    def on_event(event: Event) -> None:
        seen.append(event)
        if len([e for e in seen if e.type == "progress"]) == 2:
            relay.cut()  # mid-start: after the second progress event

    ready = client.wait_ready(preview.id, on_event=on_event, timeout=300)
    assert ready.state == "ready"
    assert relay.cuts == 1
    ids = [tuple(int(x) for x in e.id.split("-")) for e in seen]
    assert ids == sorted(set(ids)), "an event was lost or repeated across the cut"
    steps = [e.step for e in seen if e.type == "progress"]
    assert [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s] == list(STEPS)
    assert seen[-1].type == "ready"
    resumed = [r for r in relay.requests if b"/events" in r and b"last-event-id" in r.lower()]
    assert len(resumed) == 1, "one reconnection, with the id of the last event seen"
    head = resumed[0].decode().lower().split("\r\n")
    last_id = next(h for h in head if h.startswith("last-event-id:")).split(":", 1)[1].strip()
    # The cut came mid-start: the id sent back is one seen before ready, not the last.
    assert last_id in [e.id for e in seen[1:-1]]
    client.stop(preview.id)


def test_the_readme_example_runs(gateway: GatewayProcess, tmp_path: Path) -> None:
    """client/example.py (the README's), beside a run record like scripts/run writes."""
    (tmp_path / ".state").mkdir()
    run_env = f"PREVIEW_PUBLIC_URL={gateway.url}\nPREVIEW_JWT_SECRET={SECRET}\n"
    (tmp_path / ".state" / "run.env").write_text(run_env)
    done = subprocess.run(
        [sys.executable, str(ROOT / "client" / "example.py")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "ready" in done.stdout and "preview_token=" in done.stdout
    assert done.stdout.rstrip().endswith("live previews: []")  # it stopped its preview
