"""Share links in Chromium against a real Vite preview in a real container.

A second browser (another person) opens the owner's public link: the notice once, then the
app with hot module replacement; a revocation refuses them within a second and closes
their HMR WebSocket; an expired link is refused; what they hold opens nothing else. A
signed-in link refuses an anonymous browser and admits another user through the API's
single-use URL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from gateway.proxy.shares import Share
from shared import keys
from tests.e2e.conftest import Stack
from tests.utils import wait_until

pytestmark = pytest.mark.slow

NEW_MAIN = """
document.querySelector("h1").textContent = "Seen by a viewer";
if (import.meta.hot) { import.meta.hot.accept(); }
"""


@pytest.fixture(scope="module")
def vite(stack: Stack) -> Iterator[str]:
    with stack.api("alice") as alice:
        sid = stack.start_ready(alice, "share-e2e", "vite-vanilla")
        yield sid
        alice.delete(f"/v1/previews/{sid}")


def make_share(stack: Stack, sid: str, access: str) -> dict[str, Any]:
    with stack.api("alice") as alice:
        made = alice.post(f"/v1/previews/{sid}/shares", json={"access": access})
    assert made.status_code == 201, made.text
    found: dict[str, Any] = made.json()
    return found


def visit(browser: Any, url: str) -> tuple[Any, Any, Any]:
    """A new browser context (no cookies of its own) with one page opened at `url`;
    (context, page, the navigation's response)."""
    context = browser.new_context()
    page = context.new_page()
    return context, page, page.goto(url)


def test_public_share_in_another_browser(stack: Stack, browser: Any, vite: str) -> None:
    link = make_share(stack, vite, "public")
    context, page, response = visit(browser, link["url"])
    assert response is not None and response.status == 200
    assert "live preview of someone" in page.inner_text("body")  # the notice, once
    # Vite's HMR client connects through the viewer's cookie.
    with (
        page.expect_websocket(timeout=30_000) as socket,
        page.expect_console_message(lambda m: "[vite] connected" in m.text, timeout=30_000),
    ):
        page.click("#continue")
    hmr = socket.value
    page.wait_for_selector("text=Hello from Vite", timeout=30_000)
    assert "preview_share" not in page.url
    page.evaluate("window.__notReloaded = true")
    with stack.api("alice") as alice:
        saved = alice.put(f"/v1/previews/{vite}/files/main.js", content=NEW_MAIN.encode())
        assert saved.status_code == 200, saved.text
    page.wait_for_selector("text=Seen by a viewer", timeout=20_000)
    assert page.evaluate("window.__notReloaded === true"), "reloaded instead of HMR"

    # The link again in the same browser: no notice (once per browser).
    again = context.new_page()
    again.goto(link["url"])
    again.wait_for_selector("text=Seen by a viewer", timeout=30_000)
    again.close()

    # What the viewer holds: cookies for this one host, none the owner's, no API rights.
    names = {c["name"]: c for c in context.cookies()}
    assert set(names) == {f"pv_s_{vite}", f"pv_n_{vite}"}, names
    assert all(c["domain"] == f"{vite}.preview.localhost" and c["httpOnly"] for c in names.values())
    api = context.request.get(f"{stack.gateway.url}/v1/previews/{vite}")
    assert api.status == 401
    probe = context.new_page()  # (Playwright's own requests do not resolve *.localhost)
    upgrade = probe.goto(link["url"].split("?")[0] + "?preview_token=x")
    assert upgrade is not None and upgrade.status == 401
    probe.close()

    # Revoked: the next navigation is refused and the HMR socket closes, within a second.
    with stack.api("alice") as alice:
        assert alice.delete(f"/v1/previews/{vite}/shares/{link['id']}").status_code == 204
    began = time.monotonic()
    if not hmr.is_closed():
        hmr.wait_for_event("close", timeout=1000)
    print(f"revocation to the viewer's HMR socket closed: {time.monotonic() - began:.3f}s")
    refused = page.reload()
    assert refused is not None and refused.status == 401
    assert time.monotonic() - began < 1.5  # the reload itself included
    assert "revoked" in page.inner_text("body")
    context.close()


def test_expired_share_is_refused(stack: Stack, browser: Any, vite: str) -> None:
    # The API's shortest link lives a minute: write one that lapses in two seconds.
    now = time.time()
    short = Share("E" * 22, vite, "alice", "public", False, now, now + 2)
    client = redis_sync.Redis.from_url(stack.settings.redis_url)
    client.hset(keys.share(short.id), mapping=short.to_record())  # type: ignore[arg-type]
    client.expireat(keys.share(short.id), int(now) + 3)
    client.close()
    url = f"http://{vite}.preview.localhost:{stack.settings.preview_port}/?preview_share={short.id}"
    context, page, _ = visit(browser, url)
    page.click("#continue")
    page.wait_for_selector("h1", timeout=30_000)

    def refused() -> bool:
        response = page.reload()
        return response is not None and response.status == 401

    wait_until(refused, 5, "expired share refused")
    context.close()


def test_signed_in_share(stack: Stack, browser: Any, vite: str) -> None:
    link = make_share(stack, vite, "signed_in")
    anonymous, page, response = visit(browser, link["url"])
    assert response is not None and response.status == 401
    assert "signed-in viewers" in page.inner_text("body")
    anonymous.close()

    with stack.api("bob") as bob:
        opened = bob.post(f"/v1/shares/{link['id']}/open")
        assert opened.status_code == 200, opened.text
        assert bob.get(f"/v1/previews/{vite}").status_code == 404  # a viewer, not an owner
    context, page, _ = visit(browser, opened.json()["url"])
    page.wait_for_selector("h1", timeout=30_000)
    assert "share_token" not in page.url
    context.close()
