"""A real Vite 7 project installed from the npm registry: fresh install, then again with
node_modules kept; the preview host is accepted, other hosts are not, and HMR works
through the public host."""

from __future__ import annotations

import asyncio
import json
import pwd
import re
import shutil
import time
import urllib.request
from typing import Any

import websockets

from tests.supervisor.conftest import EXTERNAL, SupervisorProcess, b64

# Not under .localhost, which Vite allows anyway: this host is allowed only because the
# supervisor passed it on in __VITE_ADDITIONAL_SERVER_ALLOWED_HOSTS.
PUBLIC_HOST = "s1.preview.example.test:8443"


def fetch(sup: SupervisorProcess, path: str, host: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{EXTERNAL}:{sup.port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def prepare_args(session: str) -> dict[str, Any]:
    return {
        "session_id": session,
        "project_id": "vite-demo",
        "source": {"type": "template", "name": "vite-vanilla"},
        "public_host": PUBLIC_HOST,
        "public_port": 8443,
        "public_scheme": "https",
    }


async def hmr_update(sup: SupervisorProcess) -> dict[str, Any]:
    """Connect to Vite's HMR socket as the browser would (through the public host), change
    a module, and return the update message Vite pushes."""
    status, client = fetch(sup, "/@vite/client", PUBLIC_HOST)
    assert status == 200
    token = re.search(r'const wsToken = "([^"]+)"', client)
    assert token, "no HMR token in /@vite/client"
    async with websockets.connect(
        f"ws://{EXTERNAL}:{sup.port}/?token={token[1]}",
        subprotocols=[websockets.Subprotocol("vite-hmr")],
        additional_headers={"Host": PUBLIC_HOST},
        origin=websockets.Origin(f"https://{PUBLIC_HOST}"),
    ) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connected"
        # main.js must be in the module graph before an edit can be hot-updated
        assert fetch(sup, "/main.js", PUBLIC_HOST)[0] == 200
        edit = "console.log('edited');\nif (import.meta.hot) import.meta.hot.accept();\n"
        result = await sup.send("write_files", {"files": {"main.js": b64(edit)}})
        assert result.ok, result
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if message["type"] in {"update", "full-reload"}:
                return dict(message)


async def test_vite_fresh_install_then_kept_node_modules(
    sup_factory: Any, sup_app_user: str
) -> None:
    if sup_app_user:  # a fresh install means an empty npm cache too
        shutil.rmtree(f"{pwd.getpwnam(sup_app_user).pw_dir}/.npm", ignore_errors=True)
    sup: SupervisorProcess = sup_factory()
    started = time.monotonic()
    fresh = await sup.send("prepare", prepare_args("s1"), timeout=280)
    fresh_seconds = time.monotonic() - started
    assert fresh.ok, (fresh, sup.log()[-3000:])
    assert fresh.result["dependencies"] == "installed"
    assert fresh.result["framework"] == "vite"
    assert fresh.result["framework_version"].startswith("7.")
    assert fresh.result["command"].endswith(f"--host 0.0.0.0 --port {sup.port} --strictPort")

    status, page = fetch(sup, "/", PUBLIC_HOST)
    assert status == 200 and "/@vite/client" in page and "Hello from Vite" in page
    status, page = fetch(sup, "/", "attacker.example.com")
    assert status == 403 and "Blocked request" in page  # Vite's host check is still on
    update = await hmr_update(sup)
    assert update["type"] == "update" and update["updates"][0]["path"] == "/main.js"

    installing = [
        e.data
        for e in await sup.events()
        if e.type == "progress" and e.data["step"] == "dependencies"
    ]
    assert any(0 < p["percent"] < 100 for p in installing), "no progress during npm install"

    reset = await sup.send(
        "reset", {"keep_node_modules": True, "node_modules_budget_bytes": 1 << 30}
    )
    assert reset.ok and reset.result["kept_node_modules"], reset
    started = time.monotonic()
    kept = await sup.send("prepare", prepare_args("s2"), timeout=120)
    kept_seconds = time.monotonic() - started
    assert kept.ok, kept
    assert kept.result["dependencies"] == "skipped"
    assert fetch(sup, "/", PUBLIC_HOST)[0] == 200
    assert kept_seconds < fresh_seconds
    ready = [e for e in await sup.events() if e.type == "ready" and e.session_id == "s2"]
    assert len(ready) == 1
    print(
        f"\nvite prepare->ready: fresh install {fresh_seconds:.2f}s "
        f"(timings {fresh.result['timings_ms']}), node_modules kept {kept_seconds:.2f}s "
        f"(timings {kept.result['timings_ms']})"
    )
