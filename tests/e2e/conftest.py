"""The whole stack for end-to-end tests: Redis, Docker, the gateway on hypercorn, a browser."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis

from gateway.cli import mint_token
from shared.settings import Settings
from tests.conftest import LABEL_TEST_RUN, TEST_RUN
from tests.utils import (
    GatewayProcess,
    RedisServer,
    free_port,
    remove_labelled_containers,
    run_gateway,
    settings_env,
)

CHROMIUM = "/usr/bin/chromium"
# The flags this closed network needs (no background calls home) and root needs (no sandbox).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / ".state" / "test-artifacts"


@dataclass
class Stack:
    gateway: GatewayProcess
    settings: Settings
    env: dict[str, str] = field(default_factory=dict)  # another replica runs with it

    def token(self, user: str, admin: bool = False) -> str:
        return mint_token(self.settings, user, 600, admin)

    def api(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.gateway.url,
            timeout=60,
            headers={"authorization": f"Bearer {self.token(user)}"},
        )

    def start_ready(self, client: httpx.Client, project: str, template: str) -> str:
        """Start a template project and wait until it is ready; its id."""
        return str(self.start_preview(client, project, template)["id"])

    def start_preview(self, client: httpx.Client, project: str, template: str) -> dict[str, Any]:
        """Start a template project and wait until it is ready; the preview as the API gives it."""
        created = client.post(
            "/v1/previews",
            json={"project_id": project, "source": {"type": "template", "name": template}},
        )
        assert created.status_code == 202, created.text
        preview = self.wait_ready(client, created.json()["id"])
        assert preview["state"] == "ready", preview
        return preview

    def wait_ready(self, client: httpx.Client, sid: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            preview: dict[str, Any] = client.get(f"/v1/previews/{sid}").json()
            assert "state" in preview, preview
            if preview["state"] in {"ready", "failed"} or time.monotonic() > deadline:
                return preview
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)


@contextlib.contextmanager
def run_stack(redis_server: RedisServer, test_image: str, **extra: Any) -> Iterator[Stack]:
    port = free_port()
    values: dict[str, Any] = dict(
        redis_url=redis_server.url,
        image=test_image,
        preview_port=port,
        jwt_secret="e2e-secret-of-at-least-32-bytes-long",
        signing_secret="e2e-signing",
        container_memory_mb=1536,
        heartbeat_interval=1.0,
        heartbeat_ttl=4.0,
        log_format="json",
        container_labels=(f"{LABEL_TEST_RUN}={TEST_RUN}",),
    )
    values.update(extra)
    settings = Settings.from_env({}, **values)
    env = settings_env(**values)
    # A stack is a deployment of its own: the previous module's containers were removed
    # with its stack, so its records (a user's reserved containers among them) must go too.
    with contextlib.closing(SyncRedis.from_url(redis_server.url)) as client:
        client.flushall()
    try:
        with run_gateway(env, port=port) as gateway:
            yield Stack(gateway, settings, env)
    finally:
        remove_labelled_containers(f"{LABEL_TEST_RUN}={TEST_RUN}")


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, test_image: str) -> Iterator[Stack]:
    with run_stack(redis_server, test_image) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@dataclass
class OpenPage:
    """A page opened in a fresh browser context, with its uncaught errors and WebSockets."""

    context: Any
    page: Any
    errors: list[str]
    sockets: list[Any]


def open_page(browser: Any, url: str, wait_text: str) -> OpenPage:
    """Open `url` in a new context and wait for `wait_text`; the page is marked so that a
    reload (instead of hot module replacement) shows (`window.__notReloaded`)."""
    context = browser.new_context()
    page = context.new_page()
    opened = OpenPage(context, page, [], [])
    page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
    page.on("websocket", lambda ws: opened.sockets.append(ws))
    page.goto(url)
    page.wait_for_selector(f"text={wait_text}", timeout=30_000)
    page.evaluate("window.__notReloaded = true")
    return opened
