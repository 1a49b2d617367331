"""The starting page in Chromium (issue 17): it reloads at ``ready``, not at its next poll.

Its status call is a bounded long-poll: once the page shows what the gateway said, its
next call is held until the preview moves. A page left open on a starting preview makes
one held call, not a poll every 0.8 s (as before), and reloads into the app once the
preview is ready. Several pages of the same preview (the owner's tabs) share one follower.
"""

from __future__ import annotations

import time
from typing import Any

from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_env, upstream

__all__ = ["proxy_env", "upstream"]

STATUS = "/__preview/status"


def is_status(request: Any) -> bool:
    return STATUS in request.url


def test_the_starting_page_waits_on_a_held_call_and_reloads_at_ready(
    proxy_env: ProxyEnv, upstream: Upstream, browser: Any
) -> None:
    sid = proxy_env.session(upstream.address, state="starting")
    context = browser.new_context()
    try:
        pages = [context.new_page() for _ in range(3)]
        asked: dict[int, list[str]] = {n: [] for n in range(len(pages))}
        for n, page in enumerate(pages):
            page.on("request", lambda r, n=n: asked[n].append(r.url) if is_status(r) else None)
        login = f"http://{proxy_env.host(sid)}/?preview_token={proxy_env.token(sid)}"
        pages[0].goto(login)
        for page in pages[1:]:
            page.goto(f"http://{proxy_env.host(sid)}/")
        for page in pages:
            page.wait_for_selector("text=Starting your preview", timeout=10_000)
        # An observation window, not a synchronisation: while nothing changes, each page
        # makes its first call (answered at once) and one held call, where a poll every
        # 0.8 s would have made three more.
        pages[0].wait_for_timeout(2_500)
        assert [len(urls) for urls in asked.values()] == [2] * len(pages), asked
        assert all(urls[1].split("seen=")[1] for urls in asked.values()), asked  # with a version

        proxy_env.set_state(sid, "ready")
        began = time.monotonic()
        for page in pages:
            page.wait_for_selector("text=hello from the dev server", timeout=10_000)
        # The held calls answered at the change: well under the 10 s hold.
        assert time.monotonic() - began < 5.0
        assert [len(urls) for urls in asked.values()] == [2] * len(pages), "polled, not held"
    finally:
        context.close()
