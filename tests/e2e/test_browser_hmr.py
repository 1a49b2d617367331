"""A person's view: a real Vite app, started through the API, opened in Chromium through
the gateway, edited through the API and updated in place by hot module replacement."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.conftest import ARTIFACTS, Stack, open_page
from tests.utils import wait_until

NEW_MAIN = """
document.querySelector("h1").textContent = "Edited through the API";
if (import.meta.hot) { import.meta.hot.accept(); }
"""


def test_vite_preview_renders_and_hot_reloads(stack: Stack, browser: Any) -> None:
    with stack.api("alice") as alice:
        started = time.monotonic()
        preview = stack.start_preview(alice, "vite-e2e", "vite-vanilla")
        print(
            f"vite start to ready: {time.monotonic() - started:.1f}s "
            f"(dependencies {preview['dependencies']})"
        )
        sid = preview["id"]
        open_url = alice.get(f"/v1/previews/{sid}").json()["open_url"]

        opened = open_page(browser, open_url, "Hello from Vite")
        page, context, errors, sockets = opened.page, opened.context, opened.errors, opened.sockets
        assert "preview_token" not in page.url  # the token was traded for a cookie
        page.click("#counter")
        assert page.inner_text("#counter") == "count is 1"
        # Vite's HMR client holds a WebSocket through the gateway's relay.
        wait_until(lambda: [ws for ws in sockets if not ws.is_closed()], 15, "HMR WebSocket")
        assert all(ws.url.startswith(f"ws://{sid}.") for ws in sockets)

        saved = alice.put(f"/v1/previews/{sid}/files/main.js", content=NEW_MAIN.encode())
        assert saved.status_code in (200, 204), saved.text
        page.wait_for_selector("text=Edited through the API", timeout=20_000)
        assert page.evaluate("window.__notReloaded === true"), "the page reloaded instead of HMR"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "vite-hmr.png"))
        assert errors == []
        context.close()

        # Another user cannot open it, with their own token or with alice's cookie name.
        with stack.api("bob") as bob:
            assert bob.get(f"/v1/previews/{sid}").status_code == 404
        intruder = browser.new_context()
        other = intruder.new_page()
        response = other.goto(open_url.split("?")[0] + "?preview_token=" + stack.token("bob"))
        assert response is not None and response.status == 401
        intruder.close()
        assert alice.delete(f"/v1/previews/{sid}").status_code == 204
