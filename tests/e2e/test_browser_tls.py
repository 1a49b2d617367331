"""A person's view over HTTPS: the gateway's own TLS listener with the run script's local
CA, a real Vite app in a real container, Chromium trusting that one certificate. The
page's modules come over HTTP/2 (its resource timing says so), HMR updates it in place,
and the preview works inside a cross-site iframe (the `SameSite=None; Secure;
Partitioned` cookie), which is what the app embedding previews needs."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, Stack, run_stack
from tests.e2e.test_ports_browser import full_stack
from tests.gateway.proxy_fixtures import ProxyEnv, proxy_gateway
from tests.gateway.tls_fixtures import TlsFiles, tls_files
from tests.utils import ROOT, RedisServer, free_port, serving, wait_until

__all__ = ["tls_files"]

NEW_MAIN = """
document.querySelector("h1").textContent = "Edited over HTTP/2";
if (import.meta.hot) { import.meta.hot.accept(); }
"""
NETWORK_CHANGED = "ERR_NETWORK_CHANGED"
# The protocol of each response from the preview's host that says (a response from
# Chromium's cache says "").
PROTOCOLS = """(host) => [
    ...performance.getEntriesByType("navigation"),
    ...performance.getEntriesByType("resource"),
].filter((e) => new URL(e.name).host === host && e.nextHopProtocol)
 .map((e) => e.nextHopProtocol)"""


@pytest.fixture(scope="module")
def tls_stack(redis_server: RedisServer, test_image: str, tls_files: TlsFiles) -> Iterator[Stack]:
    with run_stack(redis_server, test_image, **tls_files.settings(free_port())) as running:
        yield running


@pytest.fixture(scope="module")
def tls_browser(tls_files: TlsFiles) -> Iterator[Any]:
    """Chromium that accepts the gateway's certificate (its SPKI), and no other error."""
    from playwright.sync_api import sync_playwright

    trust = f"--ignore-certificate-errors-spki-list={tls_files.spki()}"
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, trust])
        try:
            yield instance
        finally:
            instance.close()


class Embedder(http.server.ThreadingHTTPServer):
    """Another site on this machine (https://localhost:port, its own site: not under
    preview.localhost) whose page embeds `frame_url` in an iframe. On this machine, as
    the app embedding previews is for a developer: Chromium asks before a public page
    may load a local one (Local Network Access), which no test can answer."""

    frame_url = ""


class EmbedderPage(http.server.BaseHTTPRequestHandler):
    server: Embedder

    def do_GET(self) -> None:
        body = f'<!doctype html><iframe src="{self.server.frame_url}" width=800></iframe>'
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def embedder(tls_files: TlsFiles) -> Iterator[Embedder]:
    server = Embedder(("127.0.0.1", 0), EmbedderPage)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server):
        yield server


@pytest.mark.slow
def test_vite_over_http2_hot_reloads_and_opens_in_a_cross_site_iframe(
    tls_stack: Stack, tls_browser: Any, embedder: Embedder
) -> None:
    with tls_stack.api("alice") as alice:
        preview = tls_stack.start_preview(alice, "vite-tls", "vite-vanilla")
        sid = preview["id"]
        host = f"{sid}.preview.localhost:{tls_stack.settings.preview_port}"
        try:
            open_url = alice.get(f"/v1/previews/{sid}").json()["open_url"]
            assert open_url.startswith(f"https://{host}/?preview_token="), open_url

            context = tls_browser.new_context()
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            sockets: list[Any] = []
            page.on("websocket", lambda ws: sockets.append(ws))
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(open_url)
            page.wait_for_selector("text=Hello from Vite", timeout=30_000)
            page.wait_for_load_state("networkidle")
            protocols = page.evaluate(PROTOCOLS, host)
            assert len(protocols) >= 3 and set(protocols) == {"h2"}, protocols
            page.evaluate("window.__notReloaded = true")
            open_sockets = lambda: [ws for ws in sockets if not ws.is_closed()]  # noqa: E731
            wait_until(open_sockets, 15, f"HMR WebSocket ({console})")
            assert all(ws.url.startswith(f"wss://{host}/") for ws in sockets), sockets

            saved = alice.put(f"/v1/previews/{sid}/files/main.js", content=NEW_MAIN.encode())
            assert saved.status_code in (200, 204), saved.text
            page.wait_for_selector("text=Edited over HTTP/2", timeout=20_000)
            relays = [line for line in tls_stack.gateway.log().splitlines() if "websocket" in line]
            assert page.evaluate("window.__notReloaded === true"), f"reloaded: {console} {relays}"
            assert errors == []
            context.close()

            # Another site embeds the preview: the login happens inside the iframe and
            # its cookie is sent there (third-party, partitioned by the embedding site).
            embedded = tls_browser.new_context()
            outer = embedded.new_page()
            embedder.frame_url = alice.get(f"/v1/previews/{sid}").json()["open_url"]
            outer.goto(f"https://localhost:{embedder.server_address[1]}/")
            frame = outer.frame_locator("iframe")
            try:
                frame.locator("text=Edited over HTTP/2").wait_for(timeout=30_000)
            except Exception:
                frames = [(f.url, f.content()[:300]) for f in outer.frames]
                raise AssertionError(f"iframe: {frames} {embedded.cookies()}") from None
            inner = next(f for f in outer.frames if host in f.url)
            assert "preview_token" not in inner.url
            assert set(inner.evaluate(PROTOCOLS, host)) == {"h2"}
            cookies = [c for c in embedded.cookies() if c["name"].startswith("__Host-pv_")]
            assert cookies and cookies[0]["sameSite"] == "None" and cookies[0]["secure"]
            embedded.close()
        finally:
            started = time.monotonic()
            assert alice.delete(f"/v1/previews/{sid}").status_code == 204
            print(f"preview stopped in {time.monotonic() - started:.1f}s")


@pytest.mark.slow
def test_a_full_stack_preview_in_a_cross_site_iframe_calls_its_api(
    tls_stack: Stack, tls_browser: Any, embedder: Embedder
) -> None:
    """Another site embeds the owner's preview (its open_url only): the hops through the
    API's port host happen inside the iframe, so that host's partitioned cookie is in the
    embedding site's partition, where the frontend's credentialed fetch sends it."""
    with tls_stack.api("bob") as bob:
        sid = tls_stack.start_ready(bob, "ports-tls", "vite-vanilla")
        try:
            full_stack(bob, sid)
            embedded = tls_browser.new_context()
            outer = embedded.new_page()
            embedder.frame_url = bob.get(f"/v1/previews/{sid}").json()["open_url"]
            outer.goto(f"https://localhost:{embedder.server_address[1]}/")
            api = outer.frame_locator("iframe").locator("#api:has-text('hello from the API')")
            try:
                api.wait_for(timeout=60_000)
            except Exception:
                frames = [(f.url, f.content()[:300]) for f in outer.frames]
                raise AssertionError(f"iframe: {frames} {embedded.cookies()}") from None
            assert "via POST" in api.inner_text()
            names = {c["name"]: c for c in embedded.cookies()}
            port_cookie = names[f"__Host-pv_{sid}-3001"]
            assert port_cookie["secure"] and port_cookie["sameSite"] == "None"
            embedded.close()
        finally:
            assert bob.delete(f"/v1/previews/{sid}").status_code == 204


@pytest.fixture(scope="module")
def many_modules(redis_server: RedisServer, tls_files: TlsFiles) -> Iterator[ProxyEnv]:
    port = free_port()
    server = subprocess.Popen(["node", str(ROOT / "tests/fixtures/many_modules.js"), str(port)])
    try:
        with proxy_gateway(redis_server, tls=tls_files) as env:
            env.upstream_port = port  # type: ignore[attr-defined]
            yield env
    finally:
        server.kill()
        server.wait()


@pytest.mark.slow
def test_a_page_of_420_modules_loads_over_http2_every_time(
    many_modules: ProxyEnv, tls_browser: Any
) -> None:
    """Chromium chains HTTP/2 streams with exclusive priorities: with hypercorn's priority
    tree a third of these loads left modules pending forever (gateway/hypercorn_compat)."""
    env = many_modules
    sid = env.session(f"127.0.0.1:{env.upstream_port}")  # type: ignore[attr-defined]
    url = f"https://{env.host(sid)}/"
    loaded = attempts = 0
    while loaded < 6:
        attempts += 1
        assert attempts <= 15, "too many loads cut by interface changes on this machine"
        context = tls_browser.new_context()
        try:
            page = context.new_page()
            failed: list[str] = []
            page.on("requestfailed", lambda r, out=failed: out.append(f"{r.url} {r.failure}"))
            page.goto(f"{url}?preview_token={env.token(sid)}")
            try:
                page.wait_for_function("window.__ready !== undefined", timeout=30_000)
            except PlaywrightError:
                if any(NETWORK_CHANGED in f for f in failed):
                    continue  # Docker bridges come and go here: Chromium drops requests
                ran = page.evaluate("globalThis.__count")
                raise AssertionError(f"{ran} modules ran; failed: {failed[:5]}") from None
            assert set(page.evaluate(PROTOCOLS, env.host(sid))) == {"h2"}
            assert page.evaluate("globalThis.__count") == 421  # every module ran
            loaded += 1
        finally:
            context.close()
