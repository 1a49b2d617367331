"""Sleep and wake (issue 16): what a sleeping preview adds to a request, and what it saves.

- **wake**: time to the first byte of `GET /` through the gateway to a sleeping preview
  (put to sleep through the API just before) against the same request to the same preview
  awake, interleaved round by round; per app (`--apps`: the node-basic and vite-vanilla
  templates, and next15, the Next.js 15 app of bench/bench_frameworks.py).
- **resume**: time to the first byte of `GET /` (held by the gateway while the preview
  resumes) after hibernating it, against a fresh start of the same app (POST to ready,
  then the first byte); dependencies come from the host's cache in both. Each with its
  phases: the preview's timings (acquire, files, dependencies, build cache, dev server, of
  which warm-up), what came before the prepare ran and after `ready` until the first byte.
- **CPU and memory**: `--count` idle dev servers of `--cpu-app` awake for `--window`
  seconds, then the same ones asleep for as long; each container's CPU time and memory
  read from its cgroup on the host (the whole container: the supervisor's own share
  included), per container.

Runs its own Redis and gateway (hypercorn) against the local Docker engine (no
controller: starts create containers when the pool is empty) and removes every container
it made. Supervisors beat at the production defaults (PREVIEW_HEARTBEAT_INTERVAL).

    .venv/bin/python bench/bench_sleep.py [--only wake,resume,cpu] [--apps vite-vanilla,next15]
        [--rounds 30] [--resumes 5] [--cpu-app next15] [--count 10] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import _root  # noqa: F401  (puts the repository root on sys.path)
import httpx
from redis.asyncio import Redis

from bench.bench_api import percentile, with_gateway
from bench.bench_depcache import project_blob
from bench.bench_frameworks import APPS, prepared
from shared import keys
from tests.gateway.api_helpers import token
from tests.utils import TEST_IMAGE, RedisServer

TEMPLATES = ("node-basic", "vite-vanilla")
OVERRIDES = {
    "container_memory_mb": 1024,  # a Next.js dev server
    "heartbeat_interval": 5.0,  # the production defaults: what a sleeping preview costs
    "heartbeat_ttl": 15.0,
    "sleep_heartbeat_interval": 30.0,
    "signing_secret": "bench-sleep-signing",
    "max_concurrent_per_user": 50,
    "host_cpu_overcommit": 16.0,  # ten idle Next.js previews on a 2-core machine
}
# The resume's phases as the preview's timings name them, in order.
PHASES = ("acquire", "files", "dependencies", "build_cache", "devserver", "warmup")


def cgroup_usage(cid: str) -> tuple[int, int]:
    """A container's CPU time (ns) and memory in use (bytes, without inactive page cache)
    from its cgroup on this host (v1 or v2, cgroupfs or systemd driver)."""
    full = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}}", cid], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = Path("/sys/fs/cgroup")
    for v2 in (root / "system.slice" / f"docker-{full}.scope", root / "docker" / full):
        if (v2 / "cpu.stat").exists():
            cpu = _keyed(v2 / "cpu.stat")["usage_usec"] * 1000
            used = int((v2 / "memory.current").read_text())
            return cpu, used - _keyed(v2 / "memory.stat").get("inactive_file", 0)
    cpu = int((root / "cpuacct" / "docker" / full / "cpuacct.usage").read_text())
    memory = root / "memory" / "docker" / full
    used = int((memory / "memory.usage_in_bytes").read_text())
    return cpu, used - _keyed(memory / "memory.stat").get("total_inactive_file", 0)


def _keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


class Bench:
    def __init__(self, base: str, redis: Redis) -> None:
        self.base = base
        self.redis = redis
        self.api = httpx.AsyncClient(
            base_url=base,
            timeout=600,
            headers={"authorization": f"Bearer {token('bench', ttl=7200)}"},
        )
        self.blobs: dict[str, bytes] = {}

    async def start(self, project: str, app: str) -> dict[str, Any]:
        """A template, or one of bench_frameworks' apps uploaded as an archive; ready."""
        if app in APPS:
            if app not in self.blobs:
                self.blobs[app] = project_blob(await asyncio.to_thread(prepared, app))
            source = {"type": "archive"}
        else:
            source = {"type": "template", "name": app}
        body = {"project_id": project, "source": source}
        created = await self.api.post("/v1/previews", json=body)
        if created.status_code not in (200, 202):
            raise RuntimeError(f"start: {created.status_code} {created.text}")
        sid = created.json()["id"]
        if app in APPS:
            uploaded = await self.api.put(f"/v1/previews/{sid}/files", content=self.blobs[app])
            if uploaded.status_code != 202:
                raise RuntimeError(f"upload: {uploaded.status_code} {uploaded.text}")
        return await self.until(sid, lambda p: p["state"] == "ready", 900)

    async def until(self, sid: str, done: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            preview: dict[str, Any] = (await self.api.get(f"/v1/previews/{sid}")).json()
            if done(preview):
                return preview
            if preview["state"] == "failed":
                raise RuntimeError(f"{sid} failed: {preview['error']}")
            await asyncio.sleep(0.3)
        raise RuntimeError(f"{sid}: not there within {timeout:.0f}s")

    async def browser(self, preview: dict[str, Any]) -> httpx.AsyncClient:
        host = preview["url"].split("://", 1)[1].rstrip("/")
        client = httpx.AsyncClient(base_url=self.base, headers={"host": host}, timeout=300)
        opened = await client.get("/?" + preview["open_url"].split("?", 1)[1])
        client.headers["cookie"] = opened.headers["set-cookie"].split(";", 1)[0]
        return client

    @contextlib.asynccontextmanager
    async def opened(
        self, project: str, app: str
    ) -> AsyncIterator[tuple[dict[str, Any], httpx.AsyncClient]]:
        """A ready preview and a browser-like client on it; closed and deleted after."""
        preview = await self.start(project, app)
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

    async def container(self, sid: str) -> str:
        return str(await self.redis.hget(keys.session(sid), "container"), "utf-8")

    async def reserved(self, cid: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while await self.redis.hget(keys.container(cid), "state") != b"reserved":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cid} not reserved within {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def phases(self, sid: str, first_byte_s: float) -> dict[str, float]:
        """The start's (or resume's) phases in ms, once its prepare result is in."""
        preview = await self.until(sid, lambda p: "devserver" in p["timings"], 30)
        timings = {k: float(v) for k, v in preview["timings"].items()}
        found = {k: timings[k] for k in PHASES if k in timings}
        total = timings.get("total", 0.0)
        steps = sum(v for k, v in found.items() if k != "warmup")
        found["before prepare"] = total - steps  # command delivery, queueing, stop
        found["ready -> byte"] = first_byte_s * 1000 - total  # record, proxy hold
        return found

    async def cpu(self, cids: list[str], seconds: float) -> tuple[float, float]:
        """Mean CPU % and memory (MiB) per container over the next ``seconds``."""
        before = [cgroup_usage(cid)[0] for cid in cids]
        began = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - began
        after = [cgroup_usage(cid) for cid in cids]
        cpu = [(a[0] - b) / 1e9 / elapsed * 100 for a, b in zip(after, before, strict=True)]
        return statistics.mean(cpu), statistics.mean(a[1] for a in after) / 2**20

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


async def wake_latency(bench: Bench, app: str, rounds: int) -> dict[str, list[float]]:
    awake: list[float] = []
    woken: list[float] = []
    async with bench.opened(f"wake-{app}", app) as (preview, client):
        for _ in range(3):  # warm the dev server's own caches (Vite's first transform)
            await first_byte(client)
        for _ in range(rounds):
            awake.append(await first_byte(client))
            await bench.sleep(preview["id"])
            woken.append(await first_byte(client))
    return {"awake": awake, "asleep": woken}


Phases = dict[str, list[float]]


async def resume_latency(
    bench: Bench, app: str, rounds: int
) -> tuple[dict[str, list[float]], dict[str, Phases]]:
    resumed: list[float] = []
    fresh: list[float] = []
    phases: dict[str, Phases] = {"resumed": {}, "fresh start": {}}

    def note(case: str, found: dict[str, float]) -> None:
        for phase, ms in found.items():
            phases[case].setdefault(phase, []).append(ms)

    async with bench.opened(f"resume-{app}", app) as (preview, client):
        for n in range(rounds):
            cid = await bench.container(preview["id"])
            hibernated = await bench.api.post(f"/v1/previews/{preview['id']}/hibernate")
            if hibernated.status_code != 202:
                raise RuntimeError(f"hibernate: {hibernated.status_code} {hibernated.text}")
            # A visit comes minutes later, when the released container is reserved for
            # the project again (not the instant after, while it is being reset).
            await bench.reserved(cid)
            resumed.append(await first_byte(client))
            note("resumed", await bench.phases(preview["id"], resumed[-1]))
            began = time.perf_counter()
            other = await bench.start(f"fresh-{app}-{n}", app)
            browser = await bench.browser(other)
            try:
                await first_byte(browser)
            finally:
                await browser.aclose()
            fresh.append(time.perf_counter() - began)
            note("fresh start", await bench.phases(other["id"], fresh[-1]))
            await bench.api.delete(f"/v1/previews/{other['id']}")
    return {"resumed": resumed, "fresh start": fresh}, phases


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


async def measure(base: str, server: RedisServer, args: argparse.Namespace) -> None:
    redis = Redis.from_url(server.url)
    bench = Bench(base, redis)
    summary: dict[str, Any] = {}
    try:
        if "wake" in args.only:
            for app in args.apps:
                print(f"wake latency: {app}, {args.rounds} rounds... ({load()})", flush=True)
                report_wake(app, await wake_latency(bench, app, args.rounds), summary)
        if "resume" in args.only:
            for app in args.apps:
                print(f"resume: {app}, {args.resumes} rounds... ({load()})", flush=True)
                found, phases = await resume_latency(bench, app, args.resumes)
                report_resume(app, found, phases, summary)
        if "cpu" in args.only:
            await cpu_and_memory(bench, redis, args, summary)
    finally:
        await bench.close()
        await redis.aclose()
    print(json.dumps(summary))


def report_wake(app: str, found: dict[str, list[float]], summary: dict[str, Any]) -> None:
    print(
        f"Wake, {app}: first byte of GET / through the gateway, ms ({os.cpu_count()} CPUs "
        f"shared by the client, gateway, Redis, the containers and other work; {load()})"
    )
    print("| preview |     n |     p50 |     p99 |     max |")
    print("|---------|-------|---------|---------|---------|")
    for case, samples in found.items():
        ms = [s * 1000 for s in samples]
        print(
            f"| {case:<7} | {len(ms):>5} | {statistics.median(ms):>7.1f} | "
            f"{percentile(ms, 0.99):>7.1f} | {max(ms):>7.1f} |"
        )
    awake = [s * 1000 for s in found["awake"]]
    asleep = [s * 1000 for s in found["asleep"]]
    added = {
        "p50": statistics.median(asleep) - statistics.median(awake),
        "p99": percentile(asleep, 0.99) - percentile(awake, 0.99),
    }
    summary[f"wake {app}"] = added
    print(
        f"  added by waking p50 {added['p50']:.1f} ms (target <= 50), "
        f"p99 {added['p99']:.1f} ms (target <= 200)\n",
        flush=True,
    )


def report_resume(
    app: str, found: dict[str, list[float]], phases: dict[str, Phases], summary: dict[str, Any]
) -> None:
    print(f"Resume, {app}: first byte of GET / held through the resume, s ({load()})")
    print("| case        |     n |     p50 |     max |")
    print("|-------------|-------|---------|---------|")
    for case, samples in found.items():
        print(
            f"| {case:<11} | {len(samples):>5} | {statistics.median(samples):>7.2f} | "
            f"{max(samples):>7.2f} |"
        )
    names = list(dict.fromkeys(p for case in phases.values() for p in case))
    print("  phases, ms (p50): " + ", ".join(names))
    for case, found_phases in phases.items():
        cells = [
            f"{statistics.median(found_phases[p]):.0f}" if p in found_phases else "-" for p in names
        ]
        print(f"  {case:<11}: " + " | ".join(cells))
    resumed, fresh = statistics.median(found["resumed"]), statistics.median(found["fresh start"])
    summary[f"resume {app}"] = {"resumed": resumed, "fresh": fresh, "ratio": resumed / fresh}
    print(f"  resumed/fresh: {resumed / fresh:.2f} (target: Vite resume <= 3 s)\n", flush=True)


async def cpu_and_memory(
    bench: Bench, redis: Redis, args: argparse.Namespace, summary: dict[str, Any]
) -> None:
    app, count, window = args.cpu_app, args.count, args.window
    print(f"starting {count} {app} previews for CPU... ({load()})", flush=True)
    previews = [await bench.start(f"cpu-{n}", app) for n in range(count)]
    try:
        cids = [await bench.container(p["id"]) for p in previews]
        await asyncio.sleep(10)  # the starts' after-effects (warm-up, first compiles) settle
        awake_load = load()
        awake_cpu, awake_mem = await bench.cpu(cids, window)
        await asyncio.gather(*(bench.sleep(p["id"]) for p in previews))
        asleep_load = load()
        asleep_cpu, asleep_mem = await bench.cpu(cids, window)
    finally:
        for p in previews:
            await bench.api.delete(f"/v1/previews/{p['id']}")
    ratio = asleep_cpu / awake_cpu if awake_cpu else float("nan")
    print(f"CPU and memory of {count} idle {app} previews, {window:.0f} s each, per container")
    print("(the container's cgroup on the host: dev server and supervisor):")
    print(f"  awake:  {awake_cpu:.3f} % CPU, {awake_mem:.0f} MiB  ({awake_load})")
    print(f"  asleep: {asleep_cpu:.3f} % CPU, {asleep_mem:.0f} MiB  ({asleep_load})")
    print(f"  asleep/awake CPU: {ratio:.3f} (target <= 0.05)")
    summary["cpu"] = {
        "app": app,
        "awake": awake_cpu,
        "asleep": asleep_cpu,
        "ratio": ratio,
        "awake_mib": awake_mem,
        "asleep_mib": asleep_mem,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", default="wake,resume,cpu", help="sections to run")
    parser.add_argument("--apps", default="node-basic,vite-vanilla,next15")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--resumes", type=int, default=5)
    parser.add_argument("--cpu-app", default="next15")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    args.apps = [a for a in args.apps.split(",") if a]
    for app in [*args.apps, args.cpu_app]:
        if app not in APPS and app not in TEMPLATES:
            parser.error(f"unknown app {app!r} (templates {TEMPLATES}, or {sorted(APPS)})")
    return with_gateway(TEST_IMAGE, OVERRIDES, lambda base, server: measure(base, server, args))


if __name__ == "__main__":
    sys.exit(main())
