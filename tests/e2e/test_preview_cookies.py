"""Cookies between previews, in Chromium (issue 14, finding 5).

Two previews of the same user behind a real gateway, each a real Node dev server. Preview
A is hostile: its dev server answers with cookies for the parent domain (a junk `pv_{B}`
in several spellings, 12 x 4 KB), and its page's JavaScript plants more with
`document.cookie`. B must still open from a fresh `open_url` (200, its own page), and
nothing A planted may reach B's dev server. Also: the login redirect stays on the host.

On the code before the fix: B answered 401 after `open_url` (A's junk `pv_{B}` with
`Domain=preview.localhost` was older, so first in the Cookie header, and only the first
was checked), and a `//other-host/` path was redirected off-site.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.e2e.conftest import Stack
from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_env, start_upstream, upstream
from tests.utils import wait_until

__all__ = ["proxy_env", "upstream"]

DOMAIN = "preview.localhost"
# What user A deploys in its own preview: every answer plants cookies for B.
HOSTILE_SERVER = """
const http = require("node:http");
http.createServer((req, res) => {
  const cookies = ["pv_VICTIM=junk; Domain=DOMAIN; Path=/"];
  for (let i = 0; i < 12; i++) cookies.push(`big${i}=${"x".repeat(4000)}; Domain=DOMAIN; Path=/`);
  res.writeHead(200, {"content-type": "text/html", "set-cookie": cookies});
  res.end("<!doctype html><p>planted</p>");
}).listen(Number(process.env.PORT || 3000));
"""


@pytest.fixture(scope="module")
def upstream_b() -> Iterator[Upstream]:
    up = start_upstream()
    yield up
    up.process.kill()
    up.process.wait()


def url(env: ProxyEnv, sid: str, path: str = "/") -> str:
    return f"http://{env.host(sid)}{path}"


def open_url(env: ProxyEnv, sid: str) -> str:
    return url(env, sid, f"/?preview_token={env.token(sid)}")


def parent_cookies(context: Any) -> list[str]:
    return [c["name"] for c in context.cookies() if c["domain"].lstrip(".") == DOMAIN]


def seen_by_dev_server(page: Any, env: ProxyEnv, sid: str) -> str:
    response = page.goto(url(env, sid, "/headers"))
    assert response is not None and response.status == 200, response and response.text()
    headers: dict[str, str] = response.json()["headers"]
    assert headers["host"] == env.host(sid)
    return headers.get("cookie", "")


@pytest.mark.parametrize("attack", ["shadow", "flood"])
def test_upstream_cookies_stay_on_their_own_host(
    proxy_env: ProxyEnv, upstream: Upstream, upstream_b: Upstream, browser: Any, attack: str
) -> None:
    """shadow: a junk `pv_{B}` for the parent domain (was 401); flood: 48 KB of cookies
    for the parent domain, more than B's dev server takes in a head (was 431)."""
    a = proxy_env.session(upstream.address)
    b = proxy_env.session(upstream_b.address)
    victim = b if attack == "shadow" else "nobody"
    context = browser.new_context()
    try:
        page = context.new_page()
        assert page.goto(open_url(proxy_env, a)).status == 200
        hostile = f"/hostile-cookies?victim={victim}&domain={DOMAIN}&big=12"
        planted = page.goto(url(proxy_env, a, hostile))
        assert planted is not None and planted.status == 200
        before_b = context.cookies()

        # B opens from a fresh link: its own page, not a 401 or a 431.
        response = page.goto(open_url(proxy_env, b))
        assert response is not None and response.status == 200, response.text()
        assert "hello from the dev server" in page.content()
        assert urlsplit(page.url).netloc == proxy_env.host(b)
        seen = seen_by_dev_server(page, proxy_env, b)
        assert "big0" not in seen and "shared" not in seen and "junk" not in seen, seen

        # Every Set-Cookie of A's was made host-only, and none named like ours was kept.
        assert [c["name"] for c in before_b if c["domain"].lstrip(".") == DOMAIN] == []
        names = {c["name"].lower() for c in before_b}
        assert not any(n.startswith(("pv_", "__host-pv_")) and b in n for n in names), names
    finally:
        context.close()


def test_cookies_planted_by_script_do_not_lock_the_owner_out(
    proxy_env: ProxyEnv, upstream: Upstream, upstream_b: Upstream, browser: Any
) -> None:
    """The gateway cannot stop a page's JavaScript from setting parent-domain cookies:
    B accepts its valid cookie among the junk, and its login clears what was planted."""
    a = proxy_env.session(upstream.address)
    b = proxy_env.session(upstream_b.address)
    context = browser.new_context()
    try:
        page = context.new_page()
        assert page.goto(open_url(proxy_env, a)).status == 200
        page.evaluate(
            """([victim, domain]) => {
                const tail = `; domain=${domain}; path=/`;
                document.cookie = `pv_${victim}=junk` + tail;
                for (let i = 0; i < 12; i++) document.cookie = `js${i}=${'y'.repeat(4000)}` + tail;
            }""",
            [b, DOMAIN],
        )
        # Chromium took them (its cookie store answers a moment later): the attack is real.
        wait_until(lambda: len(parent_cookies(context)) == 13, 10, "planted cookies stored")

        response = page.goto(open_url(proxy_env, b))
        assert response is not None and response.status == 200, response.text()
        assert "hello from the dev server" in page.content()
        assert parent_cookies(context) == []  # the login response expired them
        seen = seen_by_dev_server(page, proxy_env, b)
        assert "js0" not in seen and "junk" not in seen, seen
        # B's own (host-only) cookies are not the parent's: opening again keeps them.
        assert page.goto(open_url(proxy_env, b)).status == 200
        assert "devserver=1" in seen_by_dev_server(page, proxy_env, b)

        # Planted again after B's login: B's own cookie still opens it (any valid one).
        page.goto(url(proxy_env, a))
        page.evaluate(f"document.cookie = 'pv_{b}=junk; domain={DOMAIN}; path=/'")
        again = page.goto(url(proxy_env, b))
        assert again is not None and again.status == 200
    finally:
        context.close()


def test_the_login_redirect_stays_on_the_preview_host(
    proxy_env: ProxyEnv, upstream: Upstream, browser: Any
) -> None:
    sid = proxy_env.session(upstream.address)
    elsewhere = f"evil.localhost:{proxy_env.gateway.port}"
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in (f"//{elsewhere}/x", f"/\\{elsewhere}/x", f"/%2F%2F{elsewhere}/x"):
            page.goto(url(proxy_env, sid, f"{path}?preview_token={proxy_env.token(sid)}"))
            assert urlsplit(page.url).netloc == proxy_env.host(sid), (path, page.url)
            assert "hello from the dev server" in page.content()
    finally:
        context.close()


def test_real_previews_in_containers(stack: Stack, browser: Any) -> None:
    """The same attack from a real preview container, through the API, as a user would."""
    with stack.api("alice") as alice:
        sids = []
        try:
            for project in ("cookies-a", "cookies-b"):
                source = {"type": "template", "name": "node-basic"}
                created = alice.post("/v1/previews", json={"project_id": project, "source": source})
                assert created.status_code == 202, created.text
                sids.append(created.json()["id"])
            for sid in sids:
                assert stack.wait_ready(alice, sid)["state"] == "ready"
            a, b = sids
            hostile = HOSTILE_SERVER.replace("VICTIM", b).replace("DOMAIN", DOMAIN).encode()
            saved = alice.put(f"/v1/previews/{a}/files/server.js", content=hostile)
            assert saved.status_code in (200, 204), saved.text
            assert alice.post(f"/v1/previews/{a}/restart").status_code in (200, 202)

            context = browser.new_context()
            page = context.new_page()
            page.goto(alice.get(f"/v1/previews/{a}").json()["open_url"])
            a_url = str(alice.get(f"/v1/previews/{a}").json()["url"])

            def planted() -> bool:
                # Once planted, A's own requests carry 48 KB of cookies and its dev server
                # answers 431: A hurts only itself.
                with contextlib.suppress(PlaywrightError):
                    page.goto(a_url)
                return any(c["name"] == "big0" for c in context.cookies())

            wait_until(planted, 60, "A's restarted dev server")
            # A fresh tab: A's may still be on the self-refreshing "starting" page, whose
            # refresh would interrupt the navigation to B.
            page.close()
            page = context.new_page()
            response = page.goto(alice.get(f"/v1/previews/{b}").json()["open_url"])
            assert response is not None and response.status == 200, response.text()
            assert "Hello from node-basic" in page.content()
            assert parent_cookies(context) == []
            context.close()
        finally:
            for sid in sids:
                alice.delete(f"/v1/previews/{sid}")
