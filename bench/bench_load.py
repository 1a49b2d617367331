"""Load: many simulated users start, use (HTTP + HMR WebSocket) and stop previews against
the real stack for a bounded time (issue 9, item 1).

Runs its own Redis, a gateway (hypercorn, as the Procfile does) and a controller process
against the local Docker engine. A 2-core machine cannot give 200 users a container each,
so the controller keeps a fixed fleet of `--containers` (pool min = max = host maximum):
sessions take a warm container; stopping resets it and keeps it for that user only (a
container never serves two users), and with the fleet full the controller destroys such
reserved containers, oldest first, to warm fresh ones for the next users. Starts that
find every container busy get 503 `no_capacity`, an error kind of its own, and that user
backs off and retries. Each ordinary user loops: start, wait for
`ready` on the SSE stream, open the preview with its `open_url` token, hold it for
`--hold` s (the HMR WebSocket open, proxied GETs back to back), stop. Every
`--greedy-every`-th user instead takes all of its slots and asks for one more, which must
be 429 `too_many_previews`.

Sampled throughout: gateway and controller RSS, the per-user limit as Redis holds it
(live slot leases and live session records per user) and the containers registered (how
many were created during the run). Afterwards the pool must be full again and every slot
free.

    .venv/bin/python bench/bench_load.py [--users 200] [--seconds 120] [--containers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import re
import secrets
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import _root  # noqa: F401  (puts the repository root on sys.path)
import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from bench.bench_api import percentile
from shared import keys
from shared.redis_types import text
from tests.gateway.api_helpers import gateway_env, remove_containers, start_body, token
from tests.gateway.proxy_fixtures import rss_kib
from tests.gateway.test_events import parse
from tests.utils import (
    TEST_IMAGE,
    GatewayProcess,
    RedisServer,
    free_port,
    remove_labelled_containers,
    run_controller,
    run_gateway,
    start_redis,
)

LIMIT = 3  # PREVIEW_MAX_CONCURRENT_PER_USER (the default)
READY_TIMEOUT = 90.0  # a start not ready by then counts as an error
GREEDY_HOLD = 2.5  # seconds a user holding every slot keeps them
MAX_BACKOFF = 16.0  # seconds between start attempts at most
OVERRUN = 150.0  # users still busy this long after the end are cancelled
PROGRESS_EVERY = 10  # Redis samples (about a second each) between progress lines
LABEL = "preview-gateway.bench-load"
WS_TOKEN = re.compile(r'wsToken\s*=\s*"([^"]+)"')
IDS = re.compile(r"\b(pvc-)?[a-z0-9]{16}\b|\b\d+(\.\d+)?\b")


@dataclass
class Options:
    users: int = 200
    seconds: float = 120.0
    containers: int = 8
    template: str = "vite-vanilla"
    hold: float = 5.0
    think: float = 3.0
    greedy_every: int = 20
    sample: float = 5.0
    image: str = TEST_IMAGE


@dataclass
class Results:
    """Everything the users and samplers counted."""

    began: float = field(default_factory=time.monotonic)
    ended: float = 0.0
    api: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    start_latency: dict[int, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    proxied: list[float] = field(default_factory=list)
    starts: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    ready_s: list[float] = field(default_factory=list)
    ws_opened: int = 0
    limit_checks: int = 0
    limit_violations: list[str] = field(default_factory=list)
    client_max_live: int = 0
    redis_max_slots: int = 0
    redis_max_sessions: int = 0
    redis_samples: int = 0
    # Containers the run saw registered (keys.CONTAINERS), before it and in all: the
    # difference is how many were created while users came and went.
    containers_before: int = 0
    containers_seen: set[str] = field(default_factory=set)
    from_pool: collections.Counter[bool] = field(default_factory=collections.Counter)
    pool_stats: dict[str, int] = field(default_factory=dict)  # keys.POOL_STATS, over the run
    rss: list[tuple[float, int, int]] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1


def kind_of(response: httpx.Response) -> str:
    try:
        code = response.json().get("error", "")
    except ValueError:
        code = "not json"
    return f"{response.status_code} {code}".strip()


def backoff(response: httpx.Response, attempt: int) -> float:
    """An IDE's retry after a 503: Retry-After when given, else exponential with jitter."""
    with contextlib.suppress(KeyError, ValueError):
        return float(response.headers["retry-after"]) * random.uniform(1.0, 1.5)
    return min(MAX_BACKOFF, 2.0**attempt * 2) * random.uniform(0.5, 1.0)


class User:
    """One simulated IDE user: its own token, its live previews as it knows them."""

    def __init__(self, n: int, run: Run) -> None:
        self.n = n
        self.run = run
        self.name = f"load{n}"
        self.headers = {"Authorization": f"Bearer {token(self.name, ttl=3600)}"}
        self.live: set[str] = set()
        self.rounds = 0

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        began = time.perf_counter()
        response = await self.run.client.request(method, path, headers=self.headers, **kwargs)
        self.run.results.api[method].append(time.perf_counter() - began)
        if response.status_code >= 500 and response.status_code != 503:
            self.run.results.error(f"{kind_of(response)} on {method}")
        return response

    async def start(self, project: str) -> httpx.Response:
        response = await self.api(
            "POST", "/v1/previews", json=start_body(project, self.run.template)
        )
        results = self.run.results
        results.starts["attempts"] += 1
        results.start_latency[response.status_code].append(results.api["POST"][-1])
        if response.status_code == 202:
            results.starts["accepted"] += 1
            results.from_pool[bool(response.json().get("from_pool"))] += 1
            self.live.add(response.json()["id"])
            results.client_max_live = max(results.client_max_live, len(self.live))
        elif response.status_code == 200:
            results.starts["hot (200)"] += 1
        elif response.status_code == 503:
            results.error(kind_of(response))
        return response

    async def stop(self, sid: str) -> None:
        response = await self.api("DELETE", f"/v1/previews/{sid}")
        self.live.discard(sid)
        if response.status_code != 204:
            self.run.results.error(f"stop: {kind_of(response)}")

    async def loop(self) -> None:
        greedy = self.run.greedy_every > 0 and self.n % self.run.greedy_every == 0
        if not greedy:  # ramp-up; the first limit check runs while the pool is still full
            await asyncio.sleep(random.uniform(0, min(10.0, self.run.seconds / 4)))
        while not self.run.over():
            try:
                if greedy:
                    await self.fill_and_overflow()
                else:
                    await self.session()
            except (TimeoutError, httpx.HTTPError, OSError) as exc:
                self.run.results.error(f"client: {type(exc).__name__}")
            finally:
                for sid in list(self.live):
                    with contextlib.suppress(httpx.HTTPError, OSError):
                        await self.stop(sid)
            await self.run.pause(random.uniform(0.5, 1.5) * self.run.think)

    async def session(self) -> None:
        """Start (retrying while there is no capacity), wait for ready, use, stop."""
        self.rounds += 1
        project = f"p{self.rounds % 2}"
        for attempt in itertools.count():
            if attempt and self.run.over():
                return
            response = await self.start(project)
            if response.status_code in (200, 202):
                break
            if response.status_code != 503:
                self.run.results.error(f"start: {kind_of(response)}")
                return
            await self.run.pause(backoff(response, attempt))
        sid = response.json()["id"]
        began = time.monotonic()
        kinds: list[str] = []
        with contextlib.suppress(TimeoutError):
            async with (
                asyncio.timeout(READY_TIMEOUT),
                self.run.client.stream(
                    "GET", f"/v1/previews/{sid}/events", headers=self.headers, timeout=None
                ) as events,
            ):
                kinds = [e["event"] for e in parse((await events.aread()).decode())]
        preview = await self.api("GET", f"/v1/previews/{sid}")
        state = preview.json().get("state")
        if state != "ready":
            self.run.results.starts["failed"] += 1
            if not kinds:
                self.run.results.error(f"start: not ready after {READY_TIMEOUT:.0f}s ({state})")
            else:
                reason = (preview.json().get("error") or {}).get("reason", state)
                self.run.results.error(f"start failed: {reason} (last event {kinds[-1:]})")
            return
        self.run.results.starts["ready"] += 1
        self.run.results.ready_s.append(time.monotonic() - began)
        await self.use(preview.json())
        await self.stop(sid)

    async def use(self, preview: Mapping[str, Any]) -> None:
        """Open the preview as the iframe does, then hold it: HMR socket open, GETs."""
        host = str(preview["url"]).split("://", 1)[1].rstrip("/")
        query = str(preview["open_url"]).split("?", 1)[1]
        run = self.run
        async with httpx.AsyncClient(
            base_url=run.gateway.url, headers={"Host": host}, timeout=30
        ) as browser:
            opened = await browser.get(f"/?{query}")
            if opened.status_code not in (302, 303):
                run.results.error(f"open: {opened.status_code}")
                return
            cookie = opened.headers["set-cookie"].split(";", 1)[0]
            browser.headers["Cookie"] = cookie
            browser.cookies.clear()
            paths = ["/"]
            ws_token = None
            if run.template.startswith("vite"):
                client = await self.get(browser, "/@vite/client")
                found = WS_TOKEN.search(client.text if client else "")
                ws_token = found.group(1) if found else None
                if ws_token is None:
                    run.results.error("hmr: no wsToken in /@vite/client")
                paths += ["/main.js", "/@vite/client"]
            until = time.monotonic() + run.hold
            async with contextlib.AsyncExitStack() as stack:
                if ws_token is not None:
                    await self.open_hmr(stack, host, cookie, ws_token)
                while time.monotonic() < until and not run.over(grace=True):
                    for path in paths:
                        await self.get(browser, path)

    async def get(self, browser: httpx.AsyncClient, path: str) -> httpx.Response | None:
        began = time.perf_counter()
        try:
            response = await browser.get(path)
        except httpx.HTTPError as exc:
            self.run.results.error(f"proxy: {type(exc).__name__}")
            return None
        self.run.results.proxied.append(time.perf_counter() - began)
        if response.status_code != 200:
            self.run.results.error(f"proxy: {kind_of(response)}")
        return response

    async def open_hmr(
        self, stack: contextlib.AsyncExitStack, host: str, cookie: str, ws_token: str
    ) -> None:
        """Vite's HMR socket through the gateway, open until `stack` closes; its first
        message must be `connected`."""
        try:
            ws = await stack.enter_async_context(
                connect(
                    f"ws://{host}/?token={ws_token}",
                    host="127.0.0.1",
                    port=self.run.gateway.port,
                    additional_headers={"cookie": cookie},
                    origin=f"http://{host}",  # type: ignore[arg-type]
                    subprotocols=["vite-hmr"],  # type: ignore[list-item]
                    proxy=None,
                    open_timeout=15,
                )
            )
            first = json.loads(await asyncio.wait_for(ws.recv(), 15))
        except (TimeoutError, OSError, ValueError, WebSocketException) as exc:
            self.run.results.error(f"hmr: {type(exc).__name__}")
            return
        if first.get("type") != "connected":
            self.run.results.error(f"hmr: first message {first.get('type')}")
            return
        self.run.results.ws_opened += 1

    async def fill_and_overflow(self) -> None:
        """Take every slot, then ask for one more: it must be refused with 429."""
        async with self.run.greedy_turn:
            while len(self.live) < LIMIT and not self.run.over():
                response = await self.start(f"g{len(self.live)}")
                if response.status_code == 503:
                    await self.run.pause(0.5)
                elif response.status_code not in (200, 202):
                    self.run.results.error(f"start: {kind_of(response)}")
                    return
            if len(self.live) < LIMIT:
                return
            response = await self.start("g-extra")
            self.run.results.limit_checks += 1
            if response.status_code == 429:
                self.run.results.starts["refused at limit (429)"] += 1
                if response.json().get("error") != "too_many_previews":
                    self.run.results.error(f"limit: {kind_of(response)}")
            else:
                self.run.results.limit_violations.append(f"{self.name}: {kind_of(response)}")
            await asyncio.sleep(GREEDY_HOLD)  # long enough for the Redis sampler to see it


class Run:
    """The users' shared world: one API client, the clock, the results."""

    def __init__(self, options: Options, gateway: GatewayProcess) -> None:
        self.template = options.template
        self.seconds = options.seconds
        self.hold = options.hold
        self.think = options.think
        self.greedy_every = options.greedy_every
        self.gateway = gateway
        self.results = Results()
        self.deadline = time.monotonic() + options.seconds
        self.greedy_turn = asyncio.Lock()
        limits = httpx.Limits(max_connections=options.users * 2, max_keepalive_connections=400)
        self.client = httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits)

    def over(self, grace: bool = False) -> bool:
        return time.monotonic() > self.deadline + (5 if grace else 0)

    async def pause(self, seconds: float) -> None:
        """Sleep, but not past the end of the run."""
        await asyncio.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))


async def sample_redis(
    redis: Redis, users: list[User], results: Results, stop: asyncio.Event
) -> None:
    """Live slot leases and live session records per user, as Redis holds them."""
    while not stop.is_set():
        now = time.time()
        async with redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zcount(keys.user_slots(user.name), now, "+inf")
            slots = await pipe.execute()
        sids = [text(s) for s in await redis.smembers(keys.SESSIONS)]
        # Sampled each second: a container lives far longer, so none is missed.
        results.containers_seen.update(text(c) for c in await redis.smembers(keys.CONTAINERS))
        owners: collections.Counter[str] = collections.Counter()
        if sids:
            async with redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.hget(keys.session(sid), "user")
                owners.update(text(u) for u in await pipe.execute() if u)
        results.redis_max_slots = max([results.redis_max_slots, *slots])
        results.redis_max_sessions = max([results.redis_max_sessions, *owners.values(), 0])
        results.redis_samples += 1
        if results.redis_samples % PROGRESS_EVERY == 0:
            print(
                f"  t={time.monotonic() - results.began:4.0f}s live={len(sids):3d} "
                f"pool={await pool_size(redis)} ready={results.starts['ready']} "
                f"no_capacity={results.errors['503 no_capacity']} "
                f"proxied={len(results.proxied)} errors={sum(results.errors.values())}",
                flush=True,
            )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def sample_rss(
    pids: tuple[int, int], results: Results, every: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, AssertionError):
            results.rss.append((time.monotonic() - results.began, *(rss_kib(p) for p in pids)))  # type: ignore[arg-type]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def pool_size(redis: Redis) -> int:
    total = 0
    async for key in redis.scan_iter(match=keys.pool("*")):
        total += int(await redis.llen(key))
    return total


async def pool_stats(redis: Redis) -> dict[str, int]:
    """The acquisition counters of keys.POOL_STATS (hits, misses, and any other count)."""
    found = {text(k): text(v) for k, v in (await redis.hgetall(keys.POOL_STATS)).items()}
    return {k: int(v) for k, v in found.items() if v.isdigit() and k not in ("target", "peak")}


async def wait_pool(redis: Redis, want: int, timeout: float) -> float:
    began = time.monotonic()
    while await pool_size(redis) < want:
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"the pool did not reach {want} warm containers in {timeout}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - began


async def load(
    options: Options, server: RedisServer, gateway: GatewayProcess, controller: int
) -> Results:
    redis = Redis.from_url(server.url)
    try:
        warmed = await wait_pool(redis, options.containers, 300)
        print(
            f"{options.containers} warm containers after {warmed:.0f}s; {options.users} users "
            f"for {options.seconds:.0f}s",
            flush=True,
        )
        run = Run(options, gateway)
        before = {text(c) for c in await redis.smembers(keys.CONTAINERS)}
        run.results.containers_before = len(before)
        run.results.containers_seen.update(before)
        stats_before = await pool_stats(redis)
        users = [User(n, run) for n in range(options.users)]
        stop = asyncio.Event()
        samplers = [
            asyncio.create_task(sample_redis(redis, users, run.results, stop)),
            asyncio.create_task(
                sample_rss((gateway.process.pid, controller), run.results, options.sample, stop)
            ),
        ]
        try:
            tasks = [asyncio.create_task(u.loop()) for u in users]
            _, late = await asyncio.wait(tasks, timeout=options.seconds + OVERRUN)
            for task in late:
                task.cancel()
                run.results.error("client: user still busy at the end (cancelled)")
            await asyncio.gather(*tasks, return_exceptions=True)
            for user in users:  # what cancelled users left
                for sid in list(user.live):
                    with contextlib.suppress(httpx.HTTPError, OSError):
                        await user.stop(sid)
        finally:
            run.results.ended = time.monotonic()
            stop.set()
            await asyncio.gather(*samplers)
            after = await pool_stats(redis)
            run.results.pool_stats = {k: v - stats_before.get(k, 0) for k, v in after.items()}
            await run.client.aclose()
        # Everything given back: every slot free, every container in the pool again.
        now = time.time()
        leftover = sum(
            [int(await redis.zcount(keys.user_slots(u.name), now, "+inf")) for u in users]
        )
        if leftover:
            run.results.error(f"after: {leftover} slots still held")
        try:
            back = await wait_pool(redis, options.containers, 120)
            print(f"all {options.containers} containers back in the pool {back:.0f}s after the end")
        except RuntimeError as exc:
            run.results.error(f"after: {exc}")
        return run.results
    finally:
        await redis.aclose()


def slope_mib_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS (KiB) over time (s), in MiB per minute."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] / 1024 for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def report(options: Options, results: Results, logs: Mapping[str, str]) -> None:
    elapsed = results.ended - results.began
    s = results.starts
    accepted = s["accepted"]
    created = len(results.containers_seen) - results.containers_before
    print("\nRSS (MiB) every", options.sample, "s: t, gateway, controller")
    print("  " + "  ".join(f"{t:.0f}:{g / 1024:.0f}/{c / 1024:.0f}" for t, g, c in results.rss))
    half = results.rss[len(results.rss) // 2 :]
    gw_slope = slope_mib_per_min([(t, g) for t, g, _ in half])
    ctl_slope = slope_mib_per_min([(t, c) for t, _, c in half])
    print(
        f"\nload: {options.users} users, {elapsed:.0f}s, {options.containers} containers "
        f"(template {options.template}, hold {options.hold:.0f}s); {os.cpu_count()} CPUs "
        "shared by client, gateway, controller, Redis and containers"
    )
    print("| figure | value |")
    print("|---|---|")
    rows: list[tuple[str, str]] = [
        ("start attempts (POST /v1/previews)", str(s["attempts"])),
        ("accepted (202)", str(accepted)),
        ("ready", str(s["ready"])),
        ("failed after accept", str(s["failed"])),
        (
            "start success rate (ready / accepted, normal users)",
            rate(s["ready"], s["ready"] + s["failed"]),
        ),
        ("503 no_capacity (all containers busy)", str(results.errors["503 no_capacity"])),
        (
            "refused at the limit (429, expected)",
            f"{s['refused at limit (429)']} of {results.limit_checks} checks",
        ),
        ("time to ready after 202, p50 / p99 s", pair(results.ready_s, 1)),
        (
            "containers created during the run, per minute",
            f"{created} ({60 * created / elapsed:.1f}/min)",
        ),
        (
            "pool hit rate (accepted starts given a pooled container)",
            rate(results.from_pool[True], sum(results.from_pool.values())),
        ),
        (
            "pool acquisitions (keys.POOL_STATS over the run)",
            ", ".join(f"{k} {v}" for k, v in sorted(results.pool_stats.items())) or "n/a",
        ),
    ]
    for method in ("POST", "GET", "DELETE"):
        rows.append((f"API {method} latency p50 / p99 ms", pair(results.api[method], 1000)))
    for status, samples in sorted(results.start_latency.items()):
        rows.append((f"  POST answered {status}, p50 / p99 ms", pair(samples, 1000)))
    every = [x for v in results.api.values() for x in v]
    rows += [
        ("API calls, all, p50 / p99 ms", f"{len(every)} calls, {pair(every, 1000)}"),
        ("proxied requests (HTTP GET via preview host)", str(len(results.proxied))),
        ("proxied req/s (over the run)", f"{len(results.proxied) / elapsed:.1f}"),
        ("proxied latency p50 / p99 ms", pair(results.proxied, 1000)),
        ("HMR WebSockets opened (vite `connected`)", str(results.ws_opened)),
        ("per-user max live, client-side", f"{results.client_max_live} (limit {LIMIT})"),
        (
            "per-user max live slots, Redis",
            f"{results.redis_max_slots} ({results.redis_samples} samples)",
        ),
        ("per-user max live sessions, Redis", str(results.redis_max_sessions)),
        ("limit violations", str(len(results.limit_violations))),
        ("gateway RSS first / last / slope 2nd half", rss_row(results, 1, gw_slope)),
        ("controller RSS first / last / slope 2nd half", rss_row(results, 2, ctl_slope)),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nerrors by kind:")
    for kind, count in results.errors.most_common() or [("none", 0)]:
        print(f"  {count:>6}  {kind}")
    for name, log in logs.items():
        levels = collections.Counter(level for level, _ in map(parse_line, log.splitlines()))
        print(
            f"{name} log lines by level: "
            + ", ".join(f"{k} {v}" for k, v in sorted(levels.items()))
        )
        grouped = collections.Counter(
            f"{level} {message}"
            for level, message in map(parse_line, log.splitlines())
            if level in ("WARNING", "ERROR", "CRITICAL")
        )
        for message, count in grouped.most_common(6):
            print(f"  {count:>6}  {message[:160]}")
    for violation in results.limit_violations[:5]:
        print("LIMIT VIOLATION:", violation)


def parse_line(line: str) -> tuple[str, str]:
    """(level, message with ids and numbers masked) of a JSON log line."""
    try:
        found = json.loads(line)
    except ValueError:
        return "non-json", line
    message = IDS.sub("*", str(found.get("message", "")))
    return str(found.get("level", "?")).upper(), f"{found.get('logger', '')}: {message}"


def rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}% ({part}/{whole})" if whole else "n/a"


def pair(values: list[float], scale: float) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values) * scale:.1f} / {percentile(values, 0.99) * scale:.1f}"


def rss_row(results: Results, index: int, slope: float) -> str:
    if not results.rss:
        return "n/a"
    first, last = results.rss[0][index] / 1024, results.rss[-1][index] / 1024
    return f"{first:.0f} / {last:.0f} MiB, {slope:+.2f} MiB/min"


def stack_env(options: Options, server: RedisServer, port: int, label: str) -> dict[str, str]:
    n = options.containers
    return gateway_env(
        server,
        options.image,
        pool_min=n,
        pool_max=n,
        host_max_containers=n,
        container_cpus=0.5,
        container_labels=f"{LABEL}={label}",
        controller_interval=1.0,
        preview_port=port,
        public_url=f"http://127.0.0.1:{port}",
    )


def run_load(options: Options) -> tuple[Results, dict[str, str]]:
    """The whole stack up, the load, everything removed; the results and the logs."""
    label = secrets.token_hex(4)
    server = start_redis()
    logs: dict[str, str] = {}
    try:
        port = free_port()
        env = stack_env(options, server, port, label)
        with (
            run_gateway(env, port=port) as gateway,
            run_controller(env, free_port(), show_log=False) as controller,
        ):
            try:
                results = asyncio.run(load(options, server, gateway, controller.process.pid))
            finally:
                logs = {"gateway": gateway.log(), "controller": controller.log()}
        return results, logs
    finally:
        remove_containers(server)
        remove_labelled_containers(f"{LABEL}={label}")
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    defaults = Options()
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--containers", type=int, default=defaults.containers)
    parser.add_argument("--template", default=defaults.template, help="node-basic or vite-vanilla")
    parser.add_argument(
        "--hold", type=float, default=defaults.hold, help="seconds a preview is used"
    )
    parser.add_argument(
        "--think", type=float, default=defaults.think, help="mean pause between sessions, s"
    )
    parser.add_argument("--greedy-every", type=int, default=defaults.greedy_every)
    parser.add_argument(
        "--sample", type=float, default=defaults.sample, help="RSS sampling period, s"
    )
    args = parser.parse_args()
    options = Options(**{k: v for k, v in vars(args).items()})
    results, logs = run_load(options)
    report(options, results, logs)
    return 1 if results.limit_violations else 0


if __name__ == "__main__":
    sys.exit(main())
