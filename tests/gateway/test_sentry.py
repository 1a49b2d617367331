"""Sentry, checked against a real local endpoint receiving the SDK's envelopes: an
unexpected error in the gateway arrives with the user's id and without any token, cookie
or password; alerts arrive once per condition with their fingerprint; the supervisor's
hook reports errors the same way."""

from __future__ import annotations

import logging

import httpx
import pytest
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.routing import Route

from gateway.api.app import create_app
from gateway.api.auth import authenticate
from gateway.observability import alerts
from gateway.observability.sentry_setup import scrub_event
from shared.settings import Settings
from supervisor.sentry_hook import init_sentry as init_supervisor_sentry
from tests.gateway.api_helpers import SECRET, token
from tests.gateway.conftest import GatewayFactory
from tests.gateway.sentry_endpoint import SentryEndpoint, sentry_endpoint
from tests.utils import wait_until

__all__ = ["sentry_endpoint"]

USER_TOKEN = token("alice", ttl=24 * 3600)  # minted at import: must outlive a long, loaded run
COOKIE_VALUE = "pv-cookie-value-0123456789"
PREVIEW_TOKEN = "preview-token-abcdefghijkl"
REDIS_PASSWORD = "redis-password-zyxwvut"


async def test_gateway_error_reaches_sentry_with_user_and_no_secrets(
    sentry_endpoint: SentryEndpoint, settings: Settings
) -> None:
    local = Settings.from_env(
        {},
        redis_url=settings.redis_url,
        jwt_secret=SECRET,
        sentry_dsn=sentry_endpoint.dsn(),
        sentry_environment="test",
    )
    app = create_app(local)

    async def explode(request: Request) -> None:
        user = authenticate(request)
        url = f"redis://:{REDIS_PASSWORD}@10.0.0.1:6379/0"
        raise RuntimeError(f"boom for {user.id} talking to {url} with {USER_TOKEN}")

    app.router.routes.append(Route("/v1/explode", explode))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        answer = await client.get(
            f"/v1/explode?preview_token={PREVIEW_TOKEN}&x=1",
            headers={
                "Authorization": f"Bearer {USER_TOKEN}",
                "Cookie": f"pv_abc={COOKIE_VALUE}",
            },
        )
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "internal_error",
        "detail": "unexpected error; it has been logged",
    }

    events = sentry_endpoint.wait_events(1)
    errors = [e for e in events if e.get("exception")]
    assert errors, events
    event = errors[0]
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert event["user"] == {"id": "alice"}
    assert event["tags"]["component"] == "gateway"
    assert event["environment"] == "test"
    assert event["request"]["url"].endswith("/v1/explode")
    raw = sentry_endpoint.raw
    for secret in (USER_TOKEN, COOKIE_VALUE, PREVIEW_TOKEN, REDIS_PASSWORD, SECRET):
        assert secret.encode() not in raw, secret
    assert b"[redacted]" in raw


async def test_alerts_are_fingerprinted_and_sent_once(
    sentry_endpoint: SentryEndpoint, settings: Settings, redis: Redis
) -> None:
    from gateway.observability.sentry_setup import init_sentry

    assert init_sentry(Settings.from_env({}, sentry_dsn=sentry_endpoint.dsn()), "controller")
    first = alerts.Alerts(redis, repeat=600, source="controller-1")
    other = alerts.Alerts(redis, repeat=600, source="controller-2")
    assert await first.fire(alerts.POOL_DEPLETED, "the warm pool was empty", host="local")
    assert not await first.fire(alerts.POOL_DEPLETED, "the warm pool was empty")
    assert not await other.fire(alerts.POOL_DEPLETED, "seen elsewhere too")  # across processes
    assert await first.fire(alerts.DOCKER_HOST_DOWN, "host a down", subject="a")
    assert await first.fire(alerts.DOCKER_HOST_DOWN, "host b down", subject="b")
    assert not await first.fire(alerts.DOCKER_HOST_DOWN, "host b down", subject="b")
    first.clear(alerts.REDIS_UNREACHABLE)

    events = sentry_endpoint.wait_events(3)
    assert len(events) == 3
    fingerprints = sorted(tuple(e["fingerprint"]) for e in events)
    assert fingerprints == [
        ("preview-alert", "docker_host_down", "a"),
        ("preview-alert", "docker_host_down", "b"),
        ("preview-alert", "pool_depleted", ""),
    ]
    pool = next(e for e in events if e["tags"]["alert"] == "pool_depleted")
    assert pool["level"] == "error"
    assert pool["contexts"]["alert"] == {"host": "local", "source": "controller-1"}
    assert "[alert] the warm pool was empty" in str(pool.get("logentry") or pool.get("message"))


async def test_redis_down_alert_dedupes_without_redis(sentry_endpoint: SentryEndpoint) -> None:
    from gateway.observability.sentry_setup import init_sentry

    init_sentry(Settings.from_env({}, sentry_dsn=sentry_endpoint.dsn()), "gateway")
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        sender = alerts.Alerts(dead, repeat=600, source="gw")
        assert await sender.fire(alerts.REDIS_UNREACHABLE, "Redis is unreachable", shared=False)
        assert not await sender.fire(alerts.REDIS_UNREACHABLE, "still", shared=False)
    finally:
        await dead.aclose()
    events = sentry_endpoint.wait_events(1)
    assert [e["tags"]["alert"] for e in events] == ["redis_unreachable"]


def test_supervisor_errors_reach_sentry_without_credentials(
    sentry_endpoint: SentryEndpoint,
) -> None:
    assert init_supervisor_sentry(sentry_endpoint.dsn(7), "pvc-test")
    url = f"redis://pvc-test:{REDIS_PASSWORD}@host.docker.internal:6379/0"
    try:
        raise ConnectionError(f"lost {url}")
    except ConnectionError:
        logging.getLogger("supervisor.daemon").exception("command loop failed (%s)", url)
    events = sentry_endpoint.wait_events(1)
    assert events[0]["tags"] == {"component": "supervisor", "container": "pvc-test"}
    assert events[0]["exception"]["values"][-1]["type"] == "ConnectionError"
    assert REDIS_PASSWORD.encode() not in sentry_endpoint.raw


def test_no_dsn_no_sentry() -> None:
    from gateway.observability.sentry_setup import init_sentry

    assert not init_sentry(Settings.from_env({}), "gateway")
    assert not init_supervisor_sentry("", "pvc")


@pytest.mark.parametrize("header", ["authorization", "cookie", "x-preview-secret"])
def test_scrub_keeps_only_harmless_headers(header: str) -> None:
    event = {
        "request": {"headers": {header: "value", "user-agent": "ua"}, "cookies": {"a": "b"}},
        "user": {"id": "alice", "ip_address": "10.1.2.3", "email": "a@b"},
        "extra": {"token": "t", "note": f"jwt {USER_TOKEN}"},
    }
    cleaned = scrub_event(event, {})
    assert cleaned["request"] == {"headers": {"user-agent": "ua"}}
    assert cleaned["user"] == {"id": "alice"}
    assert cleaned["extra"] == {"token": "[redacted]", "note": "jwt [redacted]"}


def test_a_real_gateway_alerts_when_a_start_finds_the_pool_empty(
    sentry_endpoint: SentryEndpoint, start_gateway: GatewayFactory
) -> None:
    gateway = start_gateway(sentry_dsn=sentry_endpoint.dsn(), sentry_environment="ci")
    body = {"project_id": "p1", "source": {"type": "template", "name": "node-basic"}}
    headers = {"Authorization": f"Bearer {USER_TOKEN}"}
    started = httpx.post(f"{gateway.url}/v1/previews", json=body, headers=headers, timeout=60)
    assert started.status_code == 202, started.text
    httpx.delete(f"{gateway.url}/v1/previews/{started.json()['id']}", headers=headers)

    wait_until(lambda: sentry_endpoint.events, 15, "the pool_depleted alert")
    (event,) = sentry_endpoint.events
    assert event["fingerprint"] == ["preview-alert", "pool_depleted", ""]
    assert event["environment"] == "ci" and event["tags"]["component"] == "gateway"
    assert event["contexts"]["alert"]["project"] == "p1"
    assert USER_TOKEN.encode() not in sentry_endpoint.raw
    assert SECRET.encode() not in sentry_endpoint.raw


def test_refused_starts_are_no_sentry_errors(
    sentry_endpoint: SentryEndpoint, start_gateway: GatewayFactory, tmp_path: object
) -> None:
    # Under a burst with no capacity every refusal used to log an ERROR, which the SDK
    # turns into an event: on-call hears of it through the alerts instead.
    gateway = start_gateway(
        sentry_dsn=sentry_endpoint.dsn(), docker_hosts=f"unix://{tmp_path}/no-engine.sock"
    )
    body = {"project_id": "p1", "source": {"type": "template", "name": "node-basic"}}
    headers = {"Authorization": f"Bearer {USER_TOKEN}"}
    for _ in range(3):
        refused = httpx.post(f"{gateway.url}/v1/previews", json=body, headers=headers, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"] == "no_capacity"
    wait_until(lambda: "start refused" in gateway.log(), 10, "the refusals logged")
    gateway.stop()  # the SDK flushes what it holds on the way out
    errors = [e for e in sentry_endpoint.events if e.get("level") in ("error", "fatal")]
    assert errors == [], errors
