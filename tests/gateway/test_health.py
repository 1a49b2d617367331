"""/healthz and /readyz on the real gateway (hypercorn) with real Redis and Docker."""

from __future__ import annotations

import httpx

from tests.gateway.api_helpers import SECRET, bearer
from tests.utils import run_gateway, settings_env, start_redis, wait_until


def test_ready_when_redis_and_docker_answer_then_503_naming_redis() -> None:
    redis = start_redis(bind_bridge=False)
    try:
        env = settings_env(redis_url=redis.url)
        with run_gateway(env) as gateway:
            assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
            ready = httpx.get(f"{gateway.url}/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["redis"] == "ok"
            assert ready.json()["checks"]["docker"] == {"local": "ok"}
            redis.stop()
            down = httpx.get(f"{gateway.url}/readyz", timeout=10)
            assert down.status_code == 503
            body = down.json()
            assert body["error"] == "dependency_down"
            assert body["detail"] == "not reachable: redis"
            assert "Redis not reachable" in body["checks"]["redis"]
            assert redis.password not in down.text
            assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    finally:
        redis.stop()


def test_503_naming_docker_when_the_engine_is_down(tmp_path: object) -> None:
    redis = start_redis(bind_bridge=False)
    try:
        env = settings_env(
            redis_url=redis.url, docker_hosts=f"unix://{tmp_path}/gone.sock", jwt_secret=SECRET
        )
        with run_gateway(env) as gateway:
            down = httpx.get(f"{gateway.url}/readyz", timeout=10)
            assert down.status_code == 503
            assert down.json()["detail"] == "not reachable: docker"
            assert "Docker engine not reachable" in str(down.json()["checks"]["docker"])
            # A start then finds no container: 503 that says when to come back.
            started = httpx.post(
                f"{gateway.url}/v1/previews",
                headers=bearer(),
                json={"project_id": "p", "source": {"type": "template", "name": "node-basic"}},
                timeout=30,
            )
            assert started.status_code == 503, started.text
            assert started.json()["error"] == "no_capacity"
            assert int(started.headers["retry-after"]) >= 1
    finally:
        redis.stop()


def test_unknown_path_is_json_404() -> None:
    redis = start_redis(bind_bridge=False)
    try:
        with run_gateway(settings_env(redis_url=redis.url)) as gateway:
            response = httpx.get(f"{gateway.url}/nope")
            assert response.status_code == 404
            assert response.json()["error"] == "not_found"
            wait_until(lambda: "gateway started" in gateway.log(), 5, "startup log line")
            assert redis.password not in gateway.log()
    finally:
        redis.stop()
