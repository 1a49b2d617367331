"""Warm pool, reaper and affinity figures (issue 6), on the real stack of this machine.

1. **Acquire at N concurrent starts.** The acquisition primitive (``Containers.pop_pooled``,
   one Lua script) by N concurrent callers on a pool of N entries, against a bare Redis
   RPOP at the same concurrency; then ``POST /v1/previews`` by N distinct users through a
   real gateway process (hypercorn, as bench_api.py runs it) with N warm containers
   waiting, against an authenticated ``GET /v1/previews`` at the same concurrency.
2. **Container death.** With an in-process controller: a ready session's container is
   ``docker kill``ed (time until the session is ``failed``), and a pooled container is
   killed (time until the pool is back at its target with live containers only). Once
   with the tests' short timings, once with the defaults (heartbeat 5 s, TTL 15 s,
   controller pass 2 s); figures also in multiples of the heartbeat TTL.
3. **Start to ready of one Vite React project** (vite, react, react-dom,
   @vitejs/plugin-react, lockfile made on the host): a fresh container on an empty cache
   volume (npm install); a new pooled container once the archive is cached on the
   volume (restore); the container that last served the project, reserved for its user
   with its node_modules kept and chosen again by affinity (skipped).

Everything runs on its own redis-server and Docker volumes; every container carries the
label ``preview-gateway.bench=pool-<run>`` and is removed at the end, with the volumes.
The in-process gateway code logs to /tmp/pv-bench-pool-<run>.log (decisions: pooled,
destroyed, failed). Each part's table is printed when it ends, all again at the end.

    .venv/bin/python bench/bench_pool.py [--users 50] [--rounds 3] [--death-rounds 3]
        [--vite-rounds 1] [--configs fast,defaults] [--parts 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _root  # noqa: F401  (puts the repository root on sys.path)
import httpx
from redis.asyncio import Redis

from bench.bench_api import percentile
from bench.bench_depcache import VITE_APP, Project, npm_env, project_blob, run, write_project
from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import DockerRuntime
from gateway.controller.main import Controller
from gateway.controller.pool import PoolKeeper
from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from tests.gateway.api_helpers import gateway_env, remove_containers, token
from tests.gateway.controller_fixtures import (
    drop_acl_users,
    fast,
    load,
    pooled,
    running,
    start,
    starter_for,
    wait_state,
)
from tests.utils import (
    TEST_IMAGE,
    RedisServer,
    remove_labelled_containers,
    remove_labelled_volumes,
    run_gateway,
    start_redis,
)

LABEL_KEY = "preview-gateway.bench"
RUN = f"pool-{secrets.token_hex(4)}"
LABEL = f"{LABEL_KEY}={RUN}"
# Room for 50+ small containers on one host (placement counts memory and CPU limits).
SMALL = {"container_memory_mb": 256, "container_cpus": 0.5, "host_cpu_overcommit": 40.0}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def volume(name: str) -> str:
    full = f"pv-bench-{RUN}-{name}"
    run(["docker", "volume", "create", "--label", LABEL, full])
    return full


def base_settings(server: RedisServer, vol: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": server.url,
        "image": TEST_IMAGE,
        "cache_volume": vol,
        "container_labels": (LABEL,),
        "heartbeat_interval": 1.0,
        "heartbeat_ttl": 4.0,
        "container_pids": 256,
        **overrides,
    }
    return Settings.from_env({}, **values)


async def seconds_until(
    check: Callable[[], Awaitable[object]], timeout: float, what: str, step: float = 0.05
) -> float:
    """Seconds until `check` is truthy, polled every `step` (50 ms: a fine grain for timings)."""
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(step)
    return time.monotonic() - began


async def fill(keeper: PoolKeeper, want: int) -> None:
    """Tick the real pool keeper (as the controller does) until `want` containers wait in
    the pool; it replaces those that never get idle on a loaded machine."""

    async def full() -> bool:
        await keeper.tick()
        return await keeper.containers.pool_size() >= want

    await seconds_until(full, 900, f"{want} warm containers", step=0.5)


async def docker_kill(cid: str) -> None:
    # Not subprocess.run: the controller shares this event loop and must not stall.
    process = await asyncio.create_subprocess_exec(
        "docker", "kill", cid, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"docker kill {cid}: {err.decode().strip()}")


@contextlib.asynccontextmanager
async def controlled(settings: Settings, server: RedisServer) -> AsyncIterator[Controller]:
    """An in-process controller (as tests build one) running for the block; every
    container it or its starts made is destroyed after."""
    redis = Redis.from_url(server.url, socket_timeout=30)
    blocking = Redis.from_url(server.url, socket_timeout=900)
    runtime = DockerRuntime(settings)
    controller = Controller(settings, redis, blocking, runtime, labels={LABEL_KEY: RUN})
    try:
        async with running(controller):
            yield controller
    finally:
        for cid in await redis.smembers(keys.CONTAINERS):
            with contextlib.suppress(Exception):
                await controller.containers.destroy(text(cid), "bench cleanup")
        remove_labelled_containers(LABEL)
        await drop_acl_users(redis)
        await redis.flushall()
        await runtime.close()
        await blocking.aclose()
        await redis.aclose()


# --- 1. acquire at N concurrent starts -------------------------------------------------


@dataclass
class Acquire:
    rpop: list[float] = field(default_factory=list)
    lua: list[float] = field(default_factory=list)
    read: list[float] = field(default_factory=list)
    post: list[float] = field(default_factory=list)
    from_pool: int = 0
    created: int = 0
    failed: int = 0


async def timed(into: list[float] | None, work: Awaitable[Any]) -> Any:
    began = time.perf_counter()
    result = await work
    if into is not None:
        into.append(time.perf_counter() - began)
    return result


async def acquire_primitive(server: RedisServer, n: int, rounds: int, out: Acquire) -> None:
    """pop_pooled by n concurrent callers on a pool of n fake entries (records and
    heartbeats written as a warm container has them), distinct projects: the script
    scans the whole list for an affinity match before it takes the oldest."""
    settings = base_settings(server, "unused")
    redis = Redis.from_url(server.url)
    runtime = DockerRuntime(settings)
    containers = Containers(settings, redis, runtime)
    image = "sha256:bench"
    try:
        for r in range(rounds + 1):  # round 0 opens the connections, not measured
            await redis.flushall()
            await redis.set(keys.pool_image(TEST_IMAGE), image)
            cids = [f"pvc-bench{r:03d}{i:04d}" for i in range(n)]
            async with redis.pipeline(transaction=False) as pipe:
                for cid in cids:
                    pipe.hset(
                        keys.container(cid),
                        mapping={
                            "cid": cid,
                            "host": "local",
                            "address": "127.0.0.1:9",
                            "state": "pooled",
                            "project": f"old-{cid}",
                            "image": image,
                        },
                    )
                    pipe.set(keys.heartbeat(cid), "{}", ex=60)
                    pipe.lpush(keys.pool(image), cid)
                pipe.rpush("bench:list", *cids)
                await pipe.execute()
            lua = out.lua if r else None
            got = await asyncio.gather(
                *(timed(lua, containers.pop_pooled(f"project-{i}")) for i in range(n))
            )
            if sorted(a.cid for a in got if a is not None) != sorted(cids):
                raise RuntimeError("pop_pooled did not hand out each container exactly once")
            rpop = out.rpop if r else None
            await asyncio.gather(*(timed(rpop, redis.rpop("bench:list")) for _ in range(n)))
        await redis.flushall()
    finally:
        await runtime.close()
        await redis.aclose()


async def api_starts(
    base: str, server: RedisServer, settings: Settings, n: int, rounds: int, out: Acquire
) -> None:
    redis = Redis.from_url(server.url, socket_timeout=150)
    runtime = DockerRuntime(settings)
    containers = Containers(settings, redis, runtime)
    headers = [{"Authorization": f"Bearer {token(f'user{i}', ttl=7200)}"} for i in range(n)]
    limits = httpx.Limits(max_connections=n * 2, max_keepalive_connections=n * 2)
    keeper = PoolKeeper(containers)
    try:
        say(f"part 1: filling the warm pool with {n} containers")
        await fill(keeper, n)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

            async def post(i: int, project: str) -> tuple[str, bool]:
                body = {"project_id": project, "source": {"type": "template", "name": "node-basic"}}
                response = await timed(
                    out.post, client.post("/v1/previews", json=body, headers=headers[i])
                )
                if response.status_code != 202:
                    raise RuntimeError(f"start: {response.status_code}: {response.text}")
                return str(response.json()["id"]), bool(response.json()["from_pool"])

            async def settled(i: int, sid: str) -> bool:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    got = await client.get(f"/v1/previews/{sid}", headers=headers[i])
                    if got.json()["state"] in ("ready", "failed"):
                        return bool(got.json()["state"] == "ready")
                    await asyncio.sleep(0.25)
                return False

            # Open the client's connections first: the figures are requests, not handshakes.
            await asyncio.gather(*(client.get("/v1/previews", headers=h) for h in headers))
            for r in range(rounds):
                await fill(keeper, n)  # the released containers are back, or replaced
                await asyncio.gather(
                    *(timed(out.read, client.get("/v1/previews", headers=h)) for h in headers)
                )
                started = await asyncio.gather(*(post(i, f"r{r}-p{i}") for i in range(n)))
                out.from_pool += sum(1 for _, hit in started if hit)
                out.created += sum(1 for _, hit in started if not hit)
                ready = await asyncio.gather(*(settled(i, s) for i, (s, _) in enumerate(started)))
                out.failed += ready.count(False)
                await asyncio.gather(
                    *(
                        client.delete(f"/v1/previews/{sid}", headers=headers[i])
                        for i, (sid, _) in enumerate(started)
                    )
                )
                say(f"part 1: API round {r + 1}/{rounds} done")
    finally:
        await keeper.close()
        await runtime.close()
        await redis.aclose()


async def part_acquire(server: RedisServer, n: int, rounds: int, prim_rounds: int) -> Acquire:
    out = Acquire()
    say(f"part 1: pop_pooled vs RPOP, {n} concurrent callers, {prim_rounds} rounds")
    await acquire_primitive(server, n, prim_rounds, out)
    vol = volume("api")
    settings = base_settings(server, vol, pool_min=n, pool_max=n, pool_warm_timeout=300.0, **SMALL)
    env = gateway_env(
        server,
        TEST_IMAGE,
        cache_volume=vol,
        container_labels=LABEL,
        **SMALL,
    )
    try:
        with run_gateway(env) as gateway:
            try:
                await api_starts(gateway.url, server, settings, n, rounds, out)
            except Exception:
                print("gateway log (tail):\n" + "\n".join(gateway.log().splitlines()[-30:]))
                raise
    finally:
        remove_containers(server)
        await flush(server)
    return out


async def flush(server: RedisServer) -> None:
    redis = Redis.from_url(server.url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()


# --- 2. container death ----------------------------------------------------------------


@dataclass
class Death:
    config: str
    ttl: float
    interval: float
    controller_interval: float
    health_interval: float
    failed: list[float] = field(default_factory=list)  # kill -> session failed
    since_beat: list[float] = field(default_factory=list)  # last heartbeat -> failed
    refill: list[float] = field(default_factory=list)  # pooled kill -> pool at target


async def part_death(server: RedisServer, config: str, rounds: int) -> Death:
    vol = volume(f"death-{config}")
    common = {"pool_min": 1, "pool_max": 1, "orphan_interval": 3600.0, "container_memory_mb": 512}
    if config == "fast":
        settings = fast(base_settings(server, vol), **common)
    else:  # the defaults' heartbeat, TTL, controller pass and pool health interval
        defaults = Settings()
        settings = base_settings(
            server,
            vol,
            heartbeat_interval=defaults.heartbeat_interval,
            heartbeat_ttl=defaults.heartbeat_ttl,
            **common,
        )
    out = Death(
        config,
        settings.heartbeat_ttl,
        settings.heartbeat_interval,
        settings.controller_interval,
        settings.pool_health_interval,
    )
    ttl = settings.heartbeat_ttl
    async with controlled(settings, server) as controller:
        redis, containers = controller.redis, controller.containers
        starter = starter_for(controller)

        async def pool_at_target(dead: str = "") -> bool:
            cids = await pooled(redis, containers)
            alive = [c for c in cids if c != dead]
            return len(alive) >= settings.pool_min and len(alive) == len(cids)

        for r in range(rounds):
            await seconds_until(pool_at_target, 180, "the pool to fill")
            session = await start(starter, f"death{r}", f"doomed{r}")
            await wait_state(starter.previews, session.id, "ready", timeout=120)
            cid = session.container

            async def serving(cid: str = cid, sid: str = session.id) -> bool:
                heartbeat = await containers.heartbeat(cid)
                return heartbeat is not None and heartbeat.session_id == sid

            await seconds_until(serving, 30, "a heartbeat for the session")
            await seconds_until(pool_at_target, 180, "the pool to refill after the start")
            await docker_kill(cid)
            last = await containers.heartbeat(cid)
            assert last is not None

            async def failed(sid: str = session.id) -> bool:
                current = await load(redis, sid)
                return current is not None and current.state == "failed"

            out.failed.append(await seconds_until(failed, 10 * ttl + 30, "the session to fail"))
            out.since_beat.append(time.time() - last.ts)
            current = await load(redis, session.id)
            assert current is not None and current.error is not None, "failed without a reason"

            victim = (await pooled(redis, containers))[0]
            await docker_kill(victim)

            async def refilled(victim: str = victim) -> bool:
                return await pool_at_target(victim)

            out.refill.append(
                await seconds_until(
                    refilled,
                    settings.pool_health_interval + 10 * ttl + 120,
                    "the pool to drop the dead container and refill",
                )
            )
            say(
                f"part 2 ({config}): round {r + 1}/{rounds}: failed after "
                f"{out.failed[-1]:.2f}s, pool refilled after {out.refill[-1]:.2f}s"
            )
    return out


# --- 3. start to ready of one Vite project ---------------------------------------------


@dataclass
class ViteStart:
    case: str
    seconds: float
    dependencies: str
    cid: str
    timings: dict[str, int]


def vite_blob(workdir: Path) -> bytes:
    """The Vite React project with a lockfile (made on the host, no install)."""
    project = Project("vite-react", workdir / "vite-react")
    project.path.mkdir(parents=True)
    write_project(VITE_APP, project.path)
    run(
        ["npm", "install", "--package-lock-only", "--ignore-scripts"],
        cwd=project.path,
        env=npm_env(workdir),
    )
    return project_blob(project)


async def part_vite(server: RedisServer, blob: bytes, round_: int) -> list[ViteStart]:
    settings = base_settings(
        server,
        volume(f"vite{round_}"),
        pool_min=3,
        pool_max=3,
        # Installs load the machine: a missed beat must not fail the start being timed.
        heartbeat_interval=2.0,
        heartbeat_ttl=20.0,
        controller_interval=0.5,
        leader_ttl=2.0,
        orphan_interval=3600.0,
        idle_timeout=3600.0,
    )
    project = f"vite-react-{round_}"
    results: list[ViteStart] = []
    async with controlled(settings, server) as controller:
        redis, containers = controller.redis, controller.containers
        starter = starter_for(controller)

        async def full() -> bool:
            return len(await pooled(redis, containers)) >= settings.pool_max

        async def start_ready(user: str, case: str) -> ViteStart:
            await seconds_until(full, 180, "the pool to fill")
            began = time.monotonic()
            session = await start(starter, user, project, {"type": "archive"})
            assert await starter.prepare_pending(session, blob)
            ready = await wait_state(starter.previews, session.id, "ready", timeout=900)
            seconds = time.monotonic() - began
            say(f"part 3: {case}: {seconds:.1f}s ({ready.dependencies}) {ready.timings}")
            return ViteStart(case, seconds, ready.dependencies, ready.container, ready.timings)

        fresh = await start_ready("alice", "fresh container, empty cache volume")
        results.append(fresh)
        sid = text(await redis.get(keys.user_project("alice", project)))

        async def archived() -> bool:
            code, out = await containers.runtime.default.exec(
                fresh.cid, ["sh", "-c", "ls /cache/deps/v1/*/"]
            )
            return code == 0 and ".tar.zst" in out

        await seconds_until(archived, 600, "the node_modules archive on the volume")
        results.append(await start_ready("bob", "new container, archive cached"))

        session = await starter.previews.load(sid)
        assert session is not None
        await starter.previews.stop(session)

        async def released() -> bool:  # reserved for alice with its affinity key
            return fresh.cid in await containers.reserved.all()

        await seconds_until(released, 120, "the container reserved for its user")
        results.append(await start_ready("alice", "reserved, same project (affinity)"))
    return results


# --- report ----------------------------------------------------------------------------


def ms_row(name: str, samples: list[float], base: float | None) -> str:
    ms = [s * 1000 for s in samples]
    p50 = statistics.median(ms)
    ratio = f"{p50 / base:.1f}x" if base else "1.0x (base)"
    return (
        f"| {name:<44} | {len(ms):>5} | {p50:>7.2f} | {percentile(ms, 0.99):>7.2f} | "
        f"{max(ms):>7.2f} | {ratio:>11} |"
    )


def report_acquire(a: Acquire, n: int) -> None:
    print(f"\n### 1. Acquire at {n} concurrent starts, ms ({os.cpu_count()} CPUs shared)\n")
    print(f"| {'case':<44} | {'n':>5} | {'p50':>7} | {'p99':>7} | {'max':>7} | {'p50 ratio':>11} |")
    print(f"|{'-' * 46}|------:|--------:|--------:|--------:|------------:|")
    rpop = statistics.median(a.rpop) * 1000
    print(ms_row("Redis RPOP (baseline)", a.rpop, None))
    print(ms_row(f"pop_pooled Lua, pool of {n}, no affinity hit", a.lua, rpop))
    if a.post:
        read = statistics.median(a.read) * 1000
        print(ms_row("GET /v1/previews via gateway (API baseline)", a.read, None))
        print(ms_row("POST /v1/previews via gateway, pool filled", a.post, read))
        print(
            f"\nstarts served from the pool: {a.from_pool}, created: {a.created}; "
            f"sessions not ready afterwards: {a.failed}"
        )


def report_death(deaths: list[Death]) -> None:
    print("\n### 2. Container death (in-process controller, real containers)\n")
    print(
        "| config (beat/TTL/pass/health s) | event | n | median s | max s | median xTTL "
        "| max xTTL | <= 2xTTL |"
    )
    print("|---|---|--:|--:|--:|--:|--:|:-:|")
    for d in deaths:
        name = (
            f"{d.config} ({d.interval:g}/{d.ttl:g}/{d.controller_interval:g}/{d.health_interval:g})"
        )
        for event, values in (
            ("session container killed -> failed", d.failed),
            ("last heartbeat -> session failed", d.since_beat),
            ("pooled container killed -> pool at target", d.refill),
        ):
            med, top = statistics.median(values), max(values)
            ok = "yes" if top <= 2 * d.ttl else "NO"
            print(
                f"| {name} | {event} | {len(values)} | {med:.2f} | {top:.2f} | "
                f"{med / d.ttl:.2f} | {top / d.ttl:.2f} | {ok} |"
            )


def report_vite(starts: list[ViteStart]) -> None:
    print("\n### 3. Start to ready, Vite React project (start call -> session ready)\n")
    print(
        "| case | n | dependencies | median s | max s | fresh / this | files ms | deps ms "
        "| dev server ms | container of the fresh start |"
    )
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|:-:|")
    cases: dict[str, list[ViteStart]] = {}
    for s in starts:
        cases.setdefault(s.case, []).append(s)
    first = starts[0].case
    fresh = statistics.median(s.seconds for s in cases[first])
    firsts = {s.cid for s in cases[first]}
    for case, runs in cases.items():
        med = statistics.median(s.seconds for s in runs)
        deps = ",".join(sorted({s.dependencies for s in runs}))
        phases = " | ".join(
            f"{statistics.median(s.timings.get(p, 0) for s in runs):.0f}"
            for p in ("files", "dependencies", "devserver")
        )
        same = "-" if case == first else f"{sum(s.cid in firsts for s in runs)}/{len(runs)}"
        print(
            f"| {case} | {len(runs)} | {deps} | {med:.1f} | {max(s.seconds for s in runs):.1f} "
            f"| {fresh / med:.1f}x | {phases} | {same} |"
        )


async def main_async(args: argparse.Namespace, server: RedisServer) -> None:
    parts = set(args.parts.split(","))
    acquire: Acquire | None = None
    deaths: list[Death] = []
    vite: list[ViteStart] = []
    try:
        if "1" in parts:
            acquire = await part_acquire(server, args.users, args.rounds, args.primitive_rounds)
            report_acquire(acquire, args.users)
        if "2" in parts:
            for config in args.configs.split(","):
                deaths.append(await part_death(server, config, args.death_rounds))
                report_death(deaths[-1:])
        if "3" in parts:
            with tempfile.TemporaryDirectory(prefix="pv-bench-pool-") as workdir:
                say("part 3: lockfile for the Vite React project (npm, on the host)")
                blob = vite_blob(Path(workdir))
            for r in range(args.vite_rounds):
                vite += await part_vite(server, blob, r)
    finally:  # everything measured, also when a later part failed
        print("\n## Summary")
        if acquire is not None:
            report_acquire(acquire, args.users)
        if deaths:
            report_death(deaths)
        if vite:
            report_vite(vite)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=50, help="concurrent starts (part 1)")
    parser.add_argument("--rounds", type=int, default=3, help="API rounds (part 1)")
    parser.add_argument("--primitive-rounds", type=int, default=20)
    parser.add_argument("--death-rounds", type=int, default=3)
    parser.add_argument("--configs", default="fast,defaults", help="part 2 timings")
    parser.add_argument("--vite-rounds", type=int, default=1, help="part 3 rounds")
    parser.add_argument("--parts", default="1,2,3")
    args = parser.parse_args()
    log_file = Path(tempfile.gettempdir(), f"pv-bench-{RUN}.log")
    logging.basicConfig(
        filename=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    say(f"log of the in-process gateway code: {log_file}")
    server = start_redis()
    try:
        asyncio.run(main_async(args, server))
    finally:
        removed = remove_containers(server)
        remove_labelled_containers(LABEL)
        remove_labelled_volumes(LABEL)
        server.stop()
        say(f"cleaned up ({removed} containers left by the gateway, label {LABEL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
