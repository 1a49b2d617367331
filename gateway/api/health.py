"""Liveness and readiness: /healthz always answers, /readyz checks Redis and Docker."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.containers.docker_runtime import DockerRuntime
from shared.redis_client import unreachable


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """200 when Redis and at least one Docker host answer; 503 naming what is down."""
    redis: Redis = request.app.state.redis
    runtime: DockerRuntime = request.app.state.runtime
    redis_error, hosts = await asyncio.gather(unreachable(redis), runtime.reachable())
    checks: dict[str, object] = {
        "redis": redis_error or "ok",
        "docker": {name: error or "ok" for name, error in hosts.items()},
    }
    down = []
    if redis_error:
        down.append("redis")
    if all(error is not None for error in hosts.values()):
        down.append("docker")
    if down:
        return JSONResponse(
            {
                "status": "unavailable",
                "error": "dependency_down",
                "detail": f"not reachable: {', '.join(down)}",
                "checks": checks,
            },
            503,
        )
    return JSONResponse({"status": "ready", "checks": checks})
