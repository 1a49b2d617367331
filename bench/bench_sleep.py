"""Sleep and wake (issue 16): what a sleeping preview adds to a request, and what it saves.

- **wake**: time to the first byte of `GET /` through the gateway to a sleeping preview
  (put to sleep through the API just before) against the same request to the same preview
  awake, interleaved round by round; per app (node-basic, vite-vanilla).
- **resume**: time to the first byte of `GET /` (held by the gateway while the preview
  resumes) after hibernating it, against a fresh start of the same app (POST to ready,
  then the first byte); dependencies come from the host's cache in both.
- **CPU and memory**: `--count` idle Vite dev servers awake for `--window` seconds, then
  the same ones asleep for as long; the mean of their heartbeats' CPU % (the container's
  cgroup: the supervisor's own share included) and their memory.

Runs its own Redis and gateway (hypercorn) against the local Docker engine (no
controller: starts create containers when the pool is empty) and removes every container
it made.

    .venv/bin/python bench/bench_sleep.py [--rounds 30] [--resumes 5] [--count 4] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import _root  # noqa: F401  (puts the repository root on sys.path)
import httpx
from redis.asyncio import Redis

from bench.bench_api import percentile, with_gateway
from shared import keys
from shared.messages import Heartbeat
from tests.gateway.api_helpers import token
from tests.utils import TEST_IMAGE, RedisServer

OVERRIDES = {
    "container_memory_mb": 768,
    "heartbeat_interval": 1.0,
    "heartbeat_ttl": 4.0,
    "signing_secret": "bench-sleep-signing",
    "max_concurrent_per_user": 50,
}


class Bench:
    def __init__(self, base: str, redis: Redis) -> None:
        self.base = base
        self.redis = redis
        self.api = httpx.AsyncClient(
            base_url=base,
            timeout=240,
            headers={"authorization": f"Bearer {token('bench', ttl=7200)}"},
        )

    async def start(self, project: str, template: str) -> dict[str, Any]:
        body = {"project_id": project, "source": {"type": "template", "name": template}}
        created = await self.api.post("/v1/previews", json=body)
        if created.status_code != 202:
            raise RuntimeError(f"start: {created.status_code} {created.text}")
        sid = created.json()["id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            preview: dict[str, Any] = (await self.api.get(f"/v1/previews/{sid}")).json()
            if preview["state"] == "ready":
                return preview
            if preview["state"] == "failed":
                raise RuntimeError(f"{template} failed: {preview['error']}")
            await asyncio.sleep(0.3)
        raise RuntimeError(f"{template} never became ready")

    async def browser(self, preview: dict[str, Any]) -> httpx.AsyncClient:
        host = preview["url"].split("://", 1)[1].rstrip("/")
        client = httpx.AsyncClient(base_url=self.base, headers={"host": host}, timeout=60)
        opened = await client.get("/?" + preview["open_url"].split("?", 1)[1])
        client.headers["cookie"] = opened.headers["set-cookie"].split(";", 1)[0]
        return client

    @contextlib.asynccontextmanager
    async def opened(
        self, project: str, template: str
    ) -> AsyncIterator[tuple[dict[str, Any], httpx.AsyncClient]]:
        """A ready preview and a browser-like client on it; closed and deleted after."""
        preview = await self.start(project, template)
        client = await self.browser(preview)
        try:
            yield preview, client
        finally:
            await client.aclose()
            await self.api.delete(f"/v1/previews/{preview['id']}")

    async def sleep(self, sid: str) -> None:
        slept = await self.api.post(f"/v1/previews/{sid}/sleep")
        if slept.status_code != 202:
            raise RuntimeError(f"sleep: {slept.status_code} {slept.text}")

    async def cpu(self, cids: list[str], seconds: float) -> tuple[float, float]:
        """Mean CPU % and memory (MiB) per container over the next `seconds`."""
        began = time.time()
        await asyncio.sleep(seconds)
        cpu: list[float] = []
        memory: list[float] = []
        for cid in cids:
            entries = await self.redis.xrange(keys.heartbeat_history(cid), "-", "+")
            beats = [Heartbeat.read(fields[b"heartbeat"]) for _, fields in entries]
            window = [b for b in beats if b is not None and b.ts > began + 1.5]
            cpu.append(statistics.mean(b.cpu_percent for b in window))
            memory.append(statistics.mean(b.memory_used for b in window) / 2**20)
        return statistics.mean(cpu), statistics.mean(memory)

    async def close(self) -> None:
        await self.api.aclose()


async def first_byte(client: httpx.AsyncClient) -> float:
    began = time.perf_counter()
    elapsed = None
    async with client.stream("GET", "/") as response:
        async for _ in response.aiter_raw():
            if elapsed is None:  # the first byte; the rest is read to the end
                elapsed = time.perf_counter() - began
    if elapsed is None:
        elapsed = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"GET /: {response.status_code}")
    return elapsed


async def wake_latency(bench: Bench, template: str, rounds: int) -> dict[str, list[float]]:
    awake: list[float] = []
    woken: list[float] = []
    async with bench.opened(f"wake-{template}", template) as (preview, client):
        for _ in range(3):  # warm the dev server's own caches (Vite's first transform)
            await first_byte(client)
        for _ in range(rounds):
            awake.append(await first_byte(client))
            await bench.sleep(preview["id"])
            woken.append(await first_byte(client))
    return {"awake": awake, "asleep": woken}


async def resume_latency(bench: Bench, template: str, rounds: int) -> dict[str, list[float]]:
    resumed: list[float] = []
    fresh: list[float] = []
    async with bench.opened(f"resume-{template}", template) as (preview, client):
        for n in range(rounds):
            hibernated = await bench.api.post(f"/v1/previews/{preview['id']}/hibernate")
            if hibernated.status_code != 202:
                raise RuntimeError(f"hibernate: {hibernated.status_code} {hibernated.text}")
            resumed.append(await first_byte(client))
            began = time.perf_counter()
            other = await bench.start(f"fresh-{template}-{n}", template)
            browser = await bench.browser(other)
            try:
                await first_byte(browser)
            finally:
                await browser.aclose()
            fresh.append(time.perf_counter() - began)
            await bench.api.delete(f"/v1/previews/{other['id']}")
    return {"resumed": resumed, "fresh start": fresh}


async def measure(
    base: str, server: RedisServer, rounds: int, resumes: int, count: int, window: float
) -> None:
    redis = Redis.from_url(server.url)
    bench = Bench(base, redis)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for template in ("node-basic", "vite-vanilla"):
            print(f"wake latency: {template}, {rounds} rounds...", flush=True)
            results[template] = await wake_latency(bench, template, rounds)
        resumed: dict[str, dict[str, list[float]]] = {}
        for template in ("node-basic", "vite-vanilla"):
            print(f"resume: {template}, {resumes} rounds...", flush=True)
            resumed[template] = await resume_latency(bench, template, resumes)
        print(f"starting {count} Vite previews for CPU...", flush=True)
        previews = [await bench.start(f"cpu-{n}", "vite-vanilla") for n in range(count)]
        cids = [
            str(await redis.hget(keys.session(p["id"]), "container"), "utf-8") for p in previews
        ]
        awake_cpu, awake_mem = await bench.cpu(cids, window)
        await asyncio.gather(*(bench.sleep(p["id"]) for p in previews))
        asleep_cpu, asleep_mem = await bench.cpu(cids, window)
        for p in previews:
            await bench.api.delete(f"/v1/previews/{p['id']}")
    finally:
        await bench.close()
        await redis.aclose()
    print()
    print(
        f"Wake: first byte of GET / through the gateway, ms ({os.cpu_count()} CPUs shared by "
        "the client, gateway, Redis, the containers and other engineers' work: a loaded host)"
    )
    print("| app          | preview |     n |     p50 |     p99 |     max |")
    print("|--------------|---------|-------|---------|---------|---------|")
    summary: dict[str, Any] = {}
    for template, found in results.items():
        for case, samples in found.items():
            ms = [s * 1000 for s in samples]
            print(
                f"| {template:<12} | {case:<7} | {len(ms):>5} | {statistics.median(ms):>7.1f} | "
                f"{percentile(ms, 0.99):>7.1f} | {max(ms):>7.1f} |"
            )
        awake = [s * 1000 for s in found["awake"]]
        asleep = [s * 1000 for s in found["asleep"]]
        added = {
            "p50": statistics.median(asleep) - statistics.median(awake),
            "p99": percentile(asleep, 0.99) - percentile(awake, 0.99),
        }
        summary[template] = added
        print(
            f"  {template}: added by waking p50 {added['p50']:.1f} ms (target <= 50), "
            f"p99 {added['p99']:.1f} ms (target <= 200)"
        )
    print()
    print("Resume from hibernation: first byte of GET / held through the resume, s (same host)")
    print("| app          | case        |     n |     p50 |     max |")
    print("|--------------|-------------|-------|---------|---------|")
    for template, found in resumed.items():
        for case, samples in found.items():
            print(
                f"| {template:<12} | {case:<11} | {len(samples):>5} | "
                f"{statistics.median(samples):>7.2f} | {max(samples):>7.2f} |"
            )
        summary[f"resume {template}"] = statistics.median(found["resumed"])
    print("  (target: Vite resume <= 3 s; Next.js not measured: no Next.js template here)")
    ratio = asleep_cpu / awake_cpu if awake_cpu else float("nan")
    print()
    print(f"CPU and memory of {count} idle Vite previews, {window:.0f} s each (per container):")
    print(f"  awake:  {awake_cpu:.2f} % CPU, {awake_mem:.0f} MiB")
    print(f"  asleep: {asleep_cpu:.2f} % CPU, {asleep_mem:.0f} MiB")
    print(f"  asleep/awake CPU: {ratio:.3f} (target <= 0.05; the supervisor's own beats remain)")
    summary["cpu"] = {"awake": awake_cpu, "asleep": asleep_cpu, "ratio": ratio}
    print(json.dumps(summary))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--resumes", type=int, default=5)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    return with_gateway(
        TEST_IMAGE,
        OVERRIDES,
        lambda base, server: measure(
            base, server, args.rounds, args.resumes, args.count, args.window
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
