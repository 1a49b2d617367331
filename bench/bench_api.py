"""Latency of `POST /v1/previews` under 20 concurrent users (issue: gateway control plane).

Two cases, measured on the API answer (not dev-server readiness):
- **pooled start**: a warm container is waiting in the pool (the common case);
- **hot start**: the same user's same project is already live (200, no container).

Runs its own Redis and gateway (hypercorn, as the Procfile does) against the local Docker
engine, fills the warm pool itself (no controller), and removes every container it made.

    .venv/bin/python bench/bench_api.py [--users 20] [--rounds 5] [--hot 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import _root  # noqa: F401  (puts the repository root on sys.path)
import httpx
from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import DockerRuntime
from shared.settings import Settings
from tests.gateway.api_helpers import gateway_env, remove_containers, token
from tests.utils import RedisServer, run_gateway, start_redis

IMAGE = "preview-gateway/preview:latest"
OVERRIDES = {"container_memory_mb": 512, "heartbeat_interval": 1.0, "heartbeat_ttl": 4.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"| {name:<28} | {len(ms):>5} | {statistics.median(ms):>7.1f} | "
        f"{percentile(ms, 0.9):>7.1f} | {percentile(ms, 0.99):>7.1f} | {max(ms):>7.1f} |"
    )


async def fill_pool(containers: Containers, want: int) -> None:
    """Launch containers until `want` wait in the pool (as the controller would)."""
    missing = want - await containers.pool_size()
    gate = asyncio.Semaphore(4)

    async def warm() -> None:
        async with gate:
            info = await containers.launch()
        await containers.wait_idle(info.cid, timeout=120)
        await containers.add_to_pool(info.cid)

    await asyncio.gather(*(warm() for _ in range(max(0, missing))))


async def wait_pool(containers: Containers, want: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await containers.pool_size() < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not get back to {want} containers")
        await asyncio.sleep(0.2)


async def measure(base: str, server: RedisServer, users: int, rounds: int, hot: int) -> None:
    settings = Settings.from_env({}, redis_url=server.url, image=IMAGE, **OVERRIDES)
    redis = Redis.from_url(server.url, socket_timeout=150)
    runtime = DockerRuntime(settings)
    containers = Containers(settings, redis, runtime)
    pooled: list[float] = []
    hot_starts: list[float] = []
    not_pooled = 0
    headers = [{"Authorization": f"Bearer {token(f'user{n}', ttl=3600)}"} for n in range(users)]
    limits = httpx.Limits(max_connections=users * 2, max_keepalive_connections=users * 2)
    try:
        print(f"filling the warm pool with {users} containers...", flush=True)
        await fill_pool(containers, users)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

            async def post(n: int, project: str, want: int, into: list[float]) -> str:
                body = {"project_id": project, "source": {"type": "template", "name": "node-basic"}}
                began = time.perf_counter()
                response = await client.post("/v1/previews", json=body, headers=headers[n])
                into.append(time.perf_counter() - began)
                if response.status_code != want:
                    raise RuntimeError(f"{response.status_code}: {response.text}")
                return str(response.json()["id"]) + (
                    ":pool" if response.json()["from_pool"] else ""
                )

            async def ready(n: int, sid: str) -> None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    preview = (await client.get(f"/v1/previews/{sid}", headers=headers[n])).json()
                    if preview["state"] in ("ready", "failed"):
                        return
                    await asyncio.sleep(0.2)
                raise RuntimeError(f"preview {sid} never became ready")

            async def hot_loop(n: int, project: str) -> None:
                for _ in range(hot):
                    await post(n, project, 200, hot_starts)

            for r in range(rounds):
                await wait_pool(containers, users)
                ids = await asyncio.gather(
                    *(post(n, f"r{r}-u{n}", 202, pooled) for n in range(users))
                )
                not_pooled += sum(1 for sid in ids if not sid.endswith(":pool"))
                # Hot starts of live previews, once their dev servers no longer boot.
                await asyncio.gather(*(ready(n, sid.split(":")[0]) for n, sid in enumerate(ids)))
                await asyncio.gather(*(hot_loop(n, f"r{r}-u{n}") for n in range(users)))
                await asyncio.gather(
                    *(
                        client.delete(f"/v1/previews/{sid.split(':')[0]}", headers=headers[n])
                        for n, sid in enumerate(ids)
                    )
                )
                print(f"round {r + 1}/{rounds} done", flush=True)
    finally:
        await runtime.close()
        await redis.aclose()
    print()
    print(
        f"POST /v1/previews, {users} concurrent users, ms (API answer, not readiness); "
        f"{os.cpu_count()} CPUs shared by client, gateway, Redis and containers"
    )
    print("| case                         |     n |     p50 |     p90 |     p99 |     max |")
    print("|------------------------------|-------|---------|---------|---------|---------|")
    print(row("start, pooled container", pooled))
    print(row("hot start (already live)", hot_starts))
    if not_pooled:
        print(f"({not_pooled} starts found the pool empty and created a container)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hot", type=int, default=5, help="hot starts per user per round")
    args = parser.parse_args()
    return with_gateway(
        IMAGE,
        OVERRIDES,
        lambda base, server: measure(base, server, args.users, args.rounds, args.hot),
    )


def with_gateway(
    image: str,
    overrides: dict[str, Any],
    measure: Callable[[str, RedisServer], Coroutine[Any, Any, None]],
) -> int:
    """Run `measure(gateway URL, Redis)` against a Redis and a gateway of its own; print the
    gateway's log tail if it fails; remove every container made."""
    server = start_redis()
    try:
        env = gateway_env(server, image, **overrides)
        with run_gateway(env) as gateway:
            try:
                asyncio.run(measure(gateway.url, server))
            except Exception:
                print("gateway log (tail):\n" + "\n".join(gateway.log().splitlines()[-30:]))
                raise
    finally:
        removed = remove_containers(server)
        server.stop()
        print(f"removed {removed} containers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
