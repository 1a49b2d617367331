"""End to end: a Vite project started through the API reaches `ready`, with its progress
events in order on the SSE stream, and its page is served through the gateway's proxy.

Real everything: gateway on hypercorn, Redis, Docker, the supervisor in the preview image,
and Vite installed from the npm registry (the first run downloads it; later runs on the same
host restore node_modules from the cache volume).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.gateway.api_helpers import bearer
from tests.gateway.test_events import parse
from tests.utils import GatewayProcess

STEPS = ("files", "dependencies", "devserver")


def test_vite_project_reaches_ready_with_progress_in_order(gateway: GatewayProcess) -> None:
    headers = bearer("alice")
    body = {"project_id": "vite-demo", "source": {"type": "template", "name": "vite-vanilla"}}
    started = httpx.post(f"{gateway.url}/v1/previews", json=body, headers=headers, timeout=60)
    assert started.status_code == 202, started.text
    preview = started.json()

    events_url = preview["events_url"].replace("http://localhost:8080", gateway.url)
    timeout = httpx.Timeout(30, read=600)
    with httpx.stream("GET", events_url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200
        events = parse(response.read().decode())

    kinds = [e["event"] for e in events]
    assert kinds[-1] == "ready", events[-3:]
    assert "error" not in kinds
    progress: list[dict[str, Any]] = [
        json.loads(e["data"]) for e in events if e["event"] == "progress"
    ]
    steps = [p["step"] for p in progress]
    # Phases in order, each reported, none revisited; percent never goes down in a phase.
    order = [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s]
    assert order == list(STEPS), order
    for step in STEPS:
        percents = [p["percent"] for p in progress if p["step"] == step]
        assert percents == sorted(percents) and percents[-1] == 100
    elapsed = [p["elapsed_ms"] for p in progress]
    assert elapsed == sorted(elapsed)
    ids = [tuple(int(x) for x in e["id"].split("-")) for e in events]
    assert ids == sorted(ids)

    ready = httpx.get(f"{gateway.url}/v1/previews/{preview['id']}", headers=headers).json()
    assert ready["state"] == "ready" and ready["error"] is None
    assert ready["dependencies"] in ("installed", "restored")
    assert {"acquire", "files", "dependencies", "devserver", "total"} <= set(ready["timings"])

    # The page itself, through the proxy, opened with the open_url token (Python clients
    # connect to the gateway and send the preview's Host header).
    host = ready["url"].split("://", 1)[1].rstrip("/")
    query = ready["open_url"].split("?", 1)[1]
    with httpx.Client(base_url=gateway.url, headers={"Host": host}, timeout=30) as browser:
        opened = browser.get(f"/?{query}")
        assert opened.status_code in (302, 303), opened.text
        # The cookie is for the preview's host; the client's jar only knows 127.0.0.1.
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
        page = browser.get("/", headers={"Accept": "text/html", "Cookie": cookie})
        assert page.status_code == 200, page.text
        assert "/@vite/client" in page.text

    t = ready["timings"]
    print(
        f"vite through the API: acquire {t['acquire']} ms, files {t['files']} ms, "
        f"dependencies {t['dependencies']} ms, devserver {t['devserver']} ms, total {t['total']} ms"
    )
