"""A person's view of sleep: a Vite page left open in Chromium while its preview sleeps keeps
its HMR WebSocket; an edit saved through the API wakes the preview and the page updates in
place (hot module replacement, no reload); a reload while asleep is answered too."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.conftest import ARTIFACTS, Stack, open_page
from tests.utils import wait_until

EDITED = """
document.querySelector("h1").textContent = "Edited while asleep";
if (import.meta.hot) { import.meta.hot.accept(); }
"""


def test_page_left_open_sleeps_and_an_edit_wakes_it_with_hmr(stack: Stack, browser: Any) -> None:
    with stack.api("alice") as alice:
        preview = stack.start_preview(alice, "vite-sleep", "vite-vanilla")
        sid = preview["id"]

        opened = open_page(browser, preview["open_url"], "Hello from Vite")
        page, context, errors, sockets = opened.page, opened.context, opened.errors, opened.sockets
        wait_until(lambda: [ws for ws in sockets if not ws.is_closed()], 15, "HMR WebSocket")
        hmr = next(ws for ws in sockets if not ws.is_closed())

        slept = alice.post(f"/v1/previews/{sid}/sleep")
        assert slept.status_code == 202, slept.text
        assert slept.json()["state"] == "sleeping"

        def asleep() -> bool:
            hb = alice.get(f"/v1/previews/{sid}").json().get("heartbeat") or {}
            return bool(hb.get("dev_server") == "sleeping")

        wait_until(asleep, 10, "the heartbeat to say sleeping")
        # The page's socket to the frozen dev server stays open.
        page.wait_for_timeout(3000)  # a page left alone (observation window, not a sync)
        assert not hmr.is_closed()
        assert alice.get(f"/v1/previews/{sid}").json()["state"] == "sleeping"

        began = time.monotonic()
        saved = alice.put(f"/v1/previews/{sid}/files/main.js", content=EDITED.encode())
        assert saved.status_code == 200, saved.text
        page.wait_for_selector("text=Edited while asleep", timeout=20_000)
        print(f"edit while asleep to the page updated: {time.monotonic() - began:.2f}s")
        assert page.evaluate("window.__notReloaded === true"), "the page reloaded instead of HMR"
        assert not hmr.is_closed()
        assert alice.get(f"/v1/previews/{sid}").json()["state"] == "ready"

        # Asleep again, a reload is held until the preview wakes, then served.
        assert alice.post(f"/v1/previews/{sid}/sleep").status_code == 202
        response = page.reload()
        assert response is not None and response.status == 200
        page.wait_for_selector("text=Edited while asleep", timeout=20_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "vite-sleep.png"))
        assert errors == []
        context.close()
        assert alice.delete(f"/v1/previews/{sid}").status_code == 204
