"""A full-stack project in Chromium: a real Vite app on the main port that fetches, with
credentials, from its API server on port 3001 of the same container, through both of the
gateway's hosts (`{id}` and `{id}-3001`). No port is published for 3001, and the owner opens
only the main preview's open_url: the port host's cookie comes by the gateway's redirect hop."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.utils import wait_until

pytestmark = pytest.mark.slow

API = """
import http from "node:http";
http.createServer((req, res) => {
  // CORS between the preview's own hosts is the app's business: allow the frontend.
  res.writeHead(200, {
    "content-type": "application/json",
    "access-control-allow-origin": req.headers.origin || "*",
    "access-control-allow-credentials": "true",
    "vary": "Origin",
  });
  res.end(JSON.stringify({message: "hello from the API", method: req.method,
                          cookies: req.headers.cookie || ""}));
}).listen(3001);
"""
MAIN = """
const out = document.createElement("p");
out.id = "api";
document.body.appendChild(out);
const api = location.origin.replace(/^(https?:\\/\\/[^.]+)/, "$1-3001");
fetch(api + "/hello", {method: "POST", credentials: "include",
                       headers: {"content-type": "application/json"}, body: "{}"})
  .then((r) => r.json())
  .then((d) => { out.textContent = d.message + " via " + d.method + " " + JSON.stringify(d); })
  .catch((e) => { out.textContent = "failed: " + e; });
"""


def full_stack(client: httpx.Client, sid: str) -> dict[str, Any]:
    """Turn a ready vite-vanilla preview into the full-stack project (Vite + the API on
    3001); the API port's entry in the preview object once it is listed."""
    package = {
        "name": "full-stack",
        "private": True,
        "type": "module",
        # The API in the background, then Vite (the gateway's flags go to the last).
        "scripts": {"dev": "node api.js & true; vite"},
        "devDependencies": {"vite": "^7.0.0"},
    }
    for path, body in (
        ("api.js", API),
        ("main.js", MAIN),
        ("package.json", json.dumps(package)),
    ):
        assert client.put(f"/v1/previews/{sid}/files/{path}", content=body).status_code == 200
    assert client.post(f"/v1/previews/{sid}/restart").status_code == 202

    def api_port() -> list[dict[str, Any]]:
        preview = client.get(f"/v1/previews/{sid}").json()
        ports: list[dict[str, Any]] = preview["ports"]
        return [p for p in ports if p["port"] == 3001] if preview["state"] == "ready" else []

    began = time.monotonic()
    [port] = wait_until(api_port, 120, "port 3001 in the preview object")
    print(f"restart to port 3001 listed: {time.monotonic() - began:.1f}s")
    return port


def test_vite_frontend_calls_its_api_on_another_port(stack: Stack, browser: Any) -> None:
    with stack.api("alice") as alice:
        sid = stack.start_ready(alice, "ports-e2e", "vite-vanilla")
        port = full_stack(alice, sid)
        assert port["url"].startswith(f"http://{sid}-3001.preview.localhost:")
        open_url = alice.get(f"/v1/previews/{sid}").json()["open_url"]
        assert open_url.startswith(f"http://{sid}.preview.localhost:")

        context = browser.new_context()
        page = context.new_page()
        hops: list[str] = []
        page.on("request", lambda r: hops.append(r.url) if "/__preview/hop" in r.url else None)
        # The owner's app opens the main preview only: its navigation passes through the
        # port host (gateway/proxy/port_grants.py), which gets its own cookie on the way.
        page.goto(open_url)
        page.wait_for_selector("#api:has-text('hello from the API')", timeout=60_000)
        text = page.inner_text("#api")
        assert "via POST" in text, text  # a preflighted, credentialed call went through
        assert "pv_" not in text  # the API server never sees our cookies
        assert page.url.startswith(f"http://{sid}.preview.localhost:")
        assert "preview_token" not in page.url and "__preview" not in page.url
        assert [h.split("?")[0].split("//")[1].split(".")[0] for h in hops] == [f"{sid}-3001"]
        names = {c["name"]: c for c in context.cookies()}
        port_cookie = names[f"pv_{sid}-3001"]
        assert port_cookie["domain"] == f"{sid}-3001.preview.localhost"  # host-only
        assert port_cookie["httpOnly"] and port_cookie["sameSite"] == "None"
        assert names[f"pv_{sid}"]["domain"] == f"{sid}.preview.localhost"
        # A reload needs no detour: the main host's mark lists the port.
        hops.clear()
        page.reload()
        page.wait_for_selector("#api:has-text('hello from the API')", timeout=60_000)
        assert hops == []
        # The port host opened directly in a fresh tab of the same browser: its cookie.
        direct = context.new_page().goto(port["url"])
        assert direct is not None and direct.status == 200
        assert "hello from the API" in direct.text()

        # Another browser without the port's cookie gets nothing from the port host.
        stranger = browser.new_context()
        refused = stranger.new_page().goto(port["url"])
        assert refused is not None and refused.status == 401
        stranger.close()
        context.close()
        assert alice.delete(f"/v1/previews/{sid}").status_code == 204
