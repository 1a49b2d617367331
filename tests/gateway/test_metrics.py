"""Prometheus metrics: the exposition format, the controller's little server, and what a
real gateway counts for proxied traffic, WebSockets, limits and shared state."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from gateway.observability.collect import exposition
from gateway.observability.counters import Counters
from gateway.observability.metrics import Registry, render, serve_metrics
from gateway.observability.ops import ControllerOps
from shared import keys
from shared.settings import Settings
from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_env, upstream
from tests.utils import free_port, wait_until

__all__ = ["proxy_env", "upstream"]


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from exposition text (labels must match exactly)."""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    wanted = f"{name}{{{inner}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, number = line.rpartition(" ")
        if key == wanted:
            return float(number)
    return None


def test_exposition_format() -> None:
    registry = Registry()
    counter = registry.counter("demo_total", "A demo.", ["kind"])
    counter.labels('we"ird\n').inc(2)
    gauge = registry.gauge("demo_open", "Open now.")
    gauge.inc()
    gauge.inc()
    gauge.dec()
    histogram = registry.histogram("demo_seconds", "Durations.", buckets=(0.1, 1.0))
    for seconds in (0.05, 0.5, 0.5, 3.0):
        histogram.observe(seconds)
    text = render(registry.families())
    assert "# TYPE demo_total counter" in text
    assert 'demo_total{kind="we\\"ird\\n"} 2' in text
    assert "demo_open 1" in text
    assert 'demo_seconds_bucket{le="0.1"} 1' in text
    assert 'demo_seconds_bucket{le="1"} 3' in text
    assert 'demo_seconds_bucket{le="+Inf"} 4' in text
    assert "demo_seconds_count 4" in text and "demo_seconds_sum 4.05" in text
    with pytest.raises(ValueError):
        registry.counter("demo_total", "again")


async def test_serve_metrics_answers_only_metrics() -> None:
    port = free_port()

    async def collect() -> str:
        return "up 1\n"

    server = await serve_metrics(f"127.0.0.1:{port}", collect)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            found = await client.get("/metrics")
            assert found.status_code == 200 and found.text == "up 1\n"
            assert found.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert (await client.get("/other")).status_code == 404
    finally:
        server.close()
        await server.wait_closed()


async def test_controller_metrics_show_reaps_pool_and_hosts(
    settings: Settings, redis: object, tmp_path: object
) -> None:
    from redis.asyncio import Redis

    assert isinstance(redis, Redis)
    port = free_port()
    counters = Counters()
    counters.inc("session_failed", "heartbeat_lost", 2)
    counters.inc("session_stopped", "idle")
    counters.inc("container_destroyed", "scale_down")
    local = Settings.from_env(
        {},
        redis_url=settings.redis_url,
        controller_metrics_bind=f"127.0.0.1:{port}",
        state_dir=str(tmp_path),
    )
    await redis.hset(
        keys.POOL_STATS, mapping={"target": "3", "hits": "7", "misses": "2", "reserved_hits": "4"}
    )
    await redis.zadd(keys.RESERVED, {"pvc-kept": time.time() + 60})
    await redis.hset(keys.container("pvc-kept"), "host", "local")
    await redis.hset(keys.docker_host("local"), mapping={"state": "down", "reason": "gone"})
    await redis.sadd(keys.DRAINED_HOSTS, "local")
    ops = ControllerOps(local, redis, counters)
    await ops.start()
    try:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await ops.close()
    assert value(text, "preview_reaps_total", outcome="failed", reason="heartbeat_lost") == 2
    assert value(text, "preview_reaps_total", outcome="stopped", reason="idle") == 1
    assert (
        value(
            text, "preview_controller_events_total", event="container_destroyed", code="scale_down"
        )
        == 1
    )
    assert value(text, "preview_pool_target") == 3
    assert value(text, "preview_pool_acquisitions_total", result="hit") == 7
    assert value(text, "preview_pool_acquisitions_total", result="reserved") == 4
    assert value(text, "preview_pool_reserved", host="local") == 1
    assert value(text, "preview_pool_size", host="local") == 0
    assert value(text, "preview_host_up", host="local") == 0
    assert value(text, "preview_host_drained", host="local") == 1
    assert value(text, "preview_redis_up") == 1


async def test_redis_down_still_serves_process_metrics(tmp_path: object) -> None:
    from redis.asyncio import Redis

    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        text = await exposition(dead, Settings.from_env({}, state_dir=str(tmp_path)))
    finally:
        await dead.aclose()
    assert value(text, "preview_redis_up") == 0
    assert "# TYPE preview_proxy_request_seconds histogram" in text


@pytest.fixture
def metrics_of(proxy_env: ProxyEnv) -> Iterator[object]:
    def read() -> str:
        return httpx.get(f"{proxy_env.gateway.url}/metrics", timeout=10).text

    yield read


def test_gateway_counts_proxied_requests_websockets_and_refusals(
    proxy_env: ProxyEnv, upstream: Upstream, metrics_of: object
) -> None:
    read = metrics_of
    assert callable(read)
    before = read()
    base_2xx = value(before, "preview_proxy_requests_total", code="2xx") or 0
    base_count = value(before, "preview_proxy_request_seconds_count") or 0
    base_404 = value(before, "preview_proxy_refused_total", status="404") or 0

    sid = proxy_env.session(upstream.address)
    with proxy_env.login(sid) as client:
        for _ in range(3):
            assert client.get("/headers").status_code == 200
    with proxy_env.client("nosuchpreview") as stranger:
        assert stranger.get("/").status_code == 404

    text = read()
    assert value(text, "preview_proxy_requests_total", code="2xx") == base_2xx + 3
    assert value(text, "preview_proxy_request_seconds_count") == base_count + 3
    assert value(text, "preview_proxy_refused_total", status="404") == base_404 + 1
    buckets = re.findall(r'preview_proxy_request_seconds_bucket\{le="[^"]+"\} (\d+)', text)
    assert [int(b) for b in buckets] == sorted(int(b) for b in buckets)

    # A WebSocket through the relay: open while it lasts, closed after.
    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        ws_sid = proxy_env.session(f"127.0.0.1:{server.socket.getsockname()[1]}")
        with proxy_env.login(ws_sid) as client:
            cookie = str(client.headers["cookie"])
        host = proxy_env.host(ws_sid)
        with connect(
            f"ws://{host}/hmr",
            sock=socket.create_connection(("127.0.0.1", proxy_env.gateway.port)),
            additional_headers={"Cookie": cookie},
            proxy=None,
            open_timeout=10,
        ) as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == "ping"
            assert value(read(), "preview_websockets_open") == 1
        wait_until(lambda: value(read(), "preview_websockets_open") == 0, 10, "WebSocket closed")
        server.shutdown()
        thread.join(10)
    assert (value(read(), "preview_websockets_total") or 0) >= 1


def test_gateway_counts_rate_limited_kinds_and_shared_state(proxy_env: ProxyEnv) -> None:
    url = f"{proxy_env.gateway.url}/v1/previews"
    refused = 0
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(40):  # the default failed-authentication limit is 20/minute
                status = client.get(url, headers={"authorization": "Bearer nope"}).status_code
                refused += status == 429
                if refused:
                    break
    finally:
        # The limit is per client address in the shared test Redis: leave none behind.
        for key in proxy_env.redis.scan_iter(match=keys.RATE_LIMIT_PREFIX + "*"):
            proxy_env.redis.delete(key)
    assert refused
    text = httpx.get(f"{proxy_env.gateway.url}/metrics").text
    assert (value(text, "preview_rate_limited_total", kind="auth_failures") or 0) >= 1
    assert value(text, "preview_redis_up") == 1
    assert value(text, "preview_sessions_active") is not None
    assert value(text, "preview_host_up", host="local") is not None
