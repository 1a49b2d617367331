"""A share viewer's Server-Sent Events from a real preview container, through one gateway
replica, end within a second of the share's revocation made on another replica, and of the
preview's stop (tests/gateway/test_shares.py has the expiry, against a Node upstream)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.utils import GatewayProcess, run_gateway, wait_until

pytestmark = pytest.mark.slow

# The preview app: a page, and an endless event stream (a tick every 100 ms).
SSE = """
import http from "node:http";
http.createServer((req, res) => {
  if (req.url !== "/stream") {
    res.writeHead(200, {"content-type": "text/html"});
    return res.end("<!doctype html><title>sse</title><p>events at /stream</p>");
  }
  res.writeHead(200, {"content-type": "text/event-stream", "cache-control": "no-cache"});
  res.write("data: first\\n\\n");
  const timer = setInterval(() => res.write("data: tick\\n\\n"), 100);
  res.on("close", () => clearInterval(timer));
}).listen(3000, "0.0.0.0");
"""


@pytest.fixture
def replica(stack: Stack) -> Iterator[GatewayProcess]:
    """A second gateway on the same Redis and Docker engine."""
    with run_gateway(stack.env) as gateway:
        yield gateway


def viewer_cookie(gateway: GatewayProcess, host: str, share_id: str) -> str:
    with httpx.Client(base_url=gateway.url, headers={"host": host}, timeout=30) as client:
        opened = client.get("/", params={"preview_share": share_id})
    assert opened.status_code == 302, opened.text
    return str(opened.headers["set-cookie"].split(";", 1)[0])


def seconds_to_cut(gateway: GatewayProcess, host: str, cookie: str, end: object) -> float:
    """Open the stream on `gateway`, call `end()`, and time the stream's end from the
    call (which includes the API request that ends access)."""
    headers = {"host": host, "cookie": cookie}
    with (
        httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client,
        client.stream("GET", "/stream") as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_raw()
        seen = next(chunks)
        while seen.count(b"tick") < 3:  # it streams on its own (~300 ms)
            seen += next(chunks)
        assert seen.startswith(b"data: first")
        assert callable(end)
        began = time.monotonic()  # the request that ends access is counted in
        end()
        try:
            for _ in chunks:
                assert time.monotonic() - began < 10, "the stream was not cut"
        except httpx.RemoteProtocolError:
            pass  # closed before the body's end: a cut
    return time.monotonic() - began


def test_a_viewers_stream_ends_on_every_replica(stack: Stack, replica: GatewayProcess) -> None:
    with stack.api("dora") as dora:
        sid = stack.start_ready(dora, "sse-share", "vite-vanilla")
        scripts = {"dev": "node sse.js"}
        package = {"name": "sse", "private": True, "type": "module", "scripts": scripts}
        for path, body in (("sse.js", SSE), ("package.json", json.dumps(package))):
            assert dora.put(f"/v1/previews/{sid}/files/{path}", content=body).status_code == 200
        assert dora.post(f"/v1/previews/{sid}/restart").status_code == 202
        host = f"{sid}.preview.localhost:{replica.port}"
        links = [dora.post(f"/v1/previews/{sid}/shares", json={"access": "public"}) for _ in "ab"]
        assert [link.status_code for link in links] == [201, 201]
        cookies = [viewer_cookie(replica, host, link.json()["id"]) for link in links]

        def streams() -> bool:
            with httpx.Client(base_url=replica.url, timeout=10) as client:
                page = client.get("/", headers={"host": host, "cookie": cookies[0]})
            return "events at /stream" in page.text

        wait_until(streams, 120, "the restarted SSE app answering through the replica")

        def revoke() -> None:
            gone = dora.delete(f"/v1/previews/{sid}/shares/{links[0].json()['id']}")
            assert gone.status_code == 204

        revoked = seconds_to_cut(replica, host, cookies[0], revoke)
        stopped = seconds_to_cut(
            replica, host, cookies[1], lambda: dora.delete(f"/v1/previews/{sid}")
        )
        print(f"stream cut after revoke {revoked:.2f}s, after stop {stopped:.2f}s")
        assert revoked < 1.0 and stopped < 1.0
