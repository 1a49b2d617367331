"""A person's view of /admin: in headless Chromium, with an admin token, the dashboard
shows live sessions, hosts, recent failures and charts drawn from real preview records
(one from a preview started here through the API, the others as earlier starts left
them), and exports the records as CSV. A screenshot is kept in .state/test-artifacts/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from gateway.observability.records import Record
from shared import keys
from tests.e2e.conftest import ARTIFACTS, Stack
from tests.utils import RedisServer, wait_until

REASON = "Module not found: 'react-dom'"


@pytest.fixture
def records_redis(redis_server: RedisServer) -> Iterator[SyncRedis]:
    client = SyncRedis.from_url(redis_server.url)
    # A clean slate: an earlier module's warm pool may still list containers its teardown
    # removed (their heartbeats outlive them by a few seconds), and its records would
    # count in the charts.
    client.flushall()
    try:
        yield client
    finally:
        client.delete(keys.RECORDS_INDEX, keys.RECORDS_DATA)
        client.close()


def earlier_starts(client: SyncRedis) -> None:
    """A day of starts as the gateway records them: every few hours, some failing."""
    now = time.time()
    for hour in range(2, 24, 3):
        for n in range(3):
            sid = f"hist{hour:02d}{n}"
            failed = n == 2 and hour % 2 == 0
            found = Record(
                id=f"{sid}:start",
                kind="start",
                ts=now - hour * 3600 + n,
                sid=sid,
                user=f"user{n}",
                project="shop",
                host="local",
                outcome="failed" if failed else "ready",
                reason=REASON if failed else "",
                from_pool=n != 1,
                dependencies="restored" if n == 0 else "installed",
                timings={} if failed else {"acquire": 40, "total": 1500 + hour * 200 + n * 900},
                created_at=now - hour * 3600,
            )
            client.zadd(keys.RECORDS_INDEX, {found.id: found.ts})
            client.hset(keys.RECORDS_DATA, found.id, found.to_json())


def test_dashboard_shows_live_state_and_charts(
    stack: Stack, browser: Any, records_redis: SyncRedis
) -> None:
    earlier_starts(records_redis)
    with stack.api("dana") as dana:
        created = dana.post(
            "/v1/previews",
            json={"project_id": "dash", "source": {"type": "template", "name": "node-basic"}},
        )
        assert created.status_code == 202, created.text
        sid = created.json()["id"]
        try:
            ready = wait_until(lambda: readiness(stack, dana, sid), 240, "the preview to be ready")
            assert ready["state"] == "ready", ready
            wait_until(
                lambda: records_redis.hexists(keys.RECORDS_DATA, f"{sid}:start"),
                15,
                "the start record of the live preview",
            )
            for action in ("sleep", "wake"):  # a wake for the dashboard to list
                assert dana.post(f"/v1/previews/{sid}/{action}").status_code == 202
            check_dashboard(stack, browser, sid)
        finally:
            dana.delete(f"/v1/previews/{sid}")


def readiness(stack: Stack, client: Any, sid: str) -> dict[str, Any] | None:
    answer = client.get(f"/v1/previews/{sid}")
    assert answer.status_code == 200, f"{answer.text}\n{stack.gateway.log()[-4000:]}"
    preview: dict[str, Any] = answer.json()
    return preview if preview["state"] in ("ready", "failed") else None


def check_dashboard(stack: Stack, browser: Any, sid: str) -> None:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1300})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        # Without a token: the form, and nothing else.
        page.goto(f"{stack.gateway.url}/admin")
        page.wait_for_selector("#login:not([hidden])")
        assert page.is_hidden("#main")
        page.fill("#token", stack.token("mallory"))  # valid, but not an admin
        page.click("#login button")
        page.wait_for_selector("text=this endpoint needs the admin scope")

        admin = stack.token("ops", admin=True)
        page.goto(f"{stack.gateway.url}/admin#token={admin}")
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        assert "token=" not in page.url  # taken out of the address bar

        times = page.locator("#chart-times")
        assert int(times.get_attribute("data-points") or 0) >= 2  # 7 days: daily points
        page.select_option("#days", "1")  # a day: hourly points
        # (polled from here: the page's CSP forbids the eval wait_for_function needs)
        wait_until(lambda: int(times.get_attribute("data-points") or 0) >= 10, 10, "hourly points")
        assert times.locator("circle").count() >= 10 and times.locator("path").count() == 2
        success = page.locator("#chart-success")
        assert int(success.get_attribute("data-points") or 0) >= 5
        assert page.locator("#failures").inner_text().count(REASON) >= 3
        assert sid in page.locator("#sessions").inner_text()
        assert "local" in page.locator("#hosts").inner_text()
        assert page.inner_text("#k-sessions").strip().isdigit()
        asleep, _, hibernated = page.inner_text("#k-asleep").partition(" / ")
        assert asleep.strip().isdigit() and hibernated.strip().isdigit()
        wakes = page.locator("#wakes").inner_text()
        assert sid in wakes and " ms" in wakes
        assert "%" in page.inner_text("#k-success")

        with page.expect_download() as download:
            page.click("#csv")
        exported = Path(download.value.path()).read_text(encoding="utf-8")
        assert exported.startswith("id,kind,time") and f"{sid}:start" in exported

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert errors == []
    finally:
        context.close()
