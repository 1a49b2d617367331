"""A person's view of hibernation: the preview's container goes back to the pool, and

- a Vite page left open in Chromium comes back by itself: its HMR client loses the socket,
  pings the same URL until it answers, and that ping resumes the preview (held by the
  gateway until ready), then the client reloads into the app, files kept;
- a page opened after hibernation shows the starting page first, then the app, at the
  same URL and with the same cookie.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import ARTIFACTS, Stack, open_page
from tests.utils import wait_until

KEPT = """
document.querySelector("h1").textContent = "Kept across hibernation";
"""
WAKING_STATES = ("resuming", "preparing", "starting", "ready")


def test_open_page_comes_back_by_itself_and_a_new_one_sees_the_starting_page(
    stack: Stack, browser: Any
) -> None:
    with stack.api("alice") as alice:
        preview = stack.start_preview(alice, "vite-hib", "vite-vanilla")
        sid = preview["id"]

        def state() -> str:
            return str(alice.get(f"/v1/previews/{sid}").json()["state"])

        saved = alice.put(f"/v1/previews/{sid}/files/main.js", content=KEPT.encode())
        assert saved.status_code == 200, saved.text

        opened = open_page(browser, preview["open_url"], "Kept across hibernation")
        page, errors = opened.page, opened.errors
        url = page.url
        wait_until(lambda: [ws for ws in opened.sockets if not ws.is_closed()], 15, "HMR socket")

        hibernated = alice.post(f"/v1/previews/{sid}/hibernate")
        assert hibernated.status_code == 202, hibernated.text
        assert hibernated.json()["state"] == "hibernated"

        # Nobody calls the API: the page's own reconnect resumes the preview.
        wait_until(lambda: state() in WAKING_STATES, 30, "the open page to resume the preview")
        page.wait_for_function("window.__notReloaded !== true", timeout=90_000)
        page.wait_for_selector("text=Kept across hibernation", timeout=90_000)
        assert page.url == url
        wait_until(lambda: state() == "ready", 60, "the resumed preview ready")

        # A page opened later: the starting page first, then the app, same URL and cookie.
        page.close()
        again = alice.post(f"/v1/previews/{sid}/hibernate")
        assert again.status_code == 202, again.text
        fresh = opened.context.new_page()
        response = fresh.goto(url)
        assert response is not None and response.status == 200
        assert "Starting your preview" in response.text()
        fresh.wait_for_selector("text=Kept across hibernation", timeout=90_000)
        assert fresh.url == url
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        fresh.screenshot(path=str(ARTIFACTS / "vite-resumed.png"))
        assert errors == []
        opened.context.close()
        assert alice.delete(f"/v1/previews/{sid}").status_code == 204
