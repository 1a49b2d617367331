"""Redis failover under traffic (issue 20): Sentinel against a plain Redis restart.

A real gateway and controller (subprocesses, the tests' short timings: heartbeat 1 s,
TTL 4 s, controller pass 0.3 s) and real containers. Traffic: users start a preview
(``POST /v1/previews``) and stop it at once (``DELETE``), one after another, and a probe
writes an increasing number to Redis as fast as it is acknowledged. Each round kills
Redis with SIGKILL mid-traffic and measures:

- **first start**: from the kill to the answer of the first ``POST /v1/previews`` sent
  after it and answered 202;
- **starts lost**: previews answered 202 before the kill whose session and records the
  Redis serving afterwards does not know;
- **records lost**: start/stop records of requests answered before the kill that are
  missing once every spool has been replayed (records written while Redis was away are
  spooled and replayed, so only records Redis acknowledged and then lost can go);
- **writes lost**: the probe's acknowledged writes missing afterwards (the replication
  lag at the kill; with the baseline, the append-only file's last second).

Modes: ``sentinel`` (tests/sentinel_cluster.py: master, replica, three sentinels; the
master is killed, the replica promoted, the old master restarted to rejoin as replica
before the next round) and ``restart`` (the baseline: one redis-server with the
append-only file fsync'd every second, killed and started again at once on the same
port and data, as a supervisor restarting a crashed Redis does).

    PREVIEW_TEST_IMAGE=... .venv/bin/python bench/bench_failover.py [--rounds 10]
        [--modes sentinel,restart]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _root  # noqa: F401  (puts the repository root on sys.path)
import httpx
from redis import Redis as SyncRedis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.observability.recorder import spool_dir
from shared import keys
from shared.redis_client import redis_client
from shared.redis_types import text
from shared.settings import Settings
from tests.gateway.api_helpers import bearer, failover_env, start_body
from tests.sentinel_cluster import MASTER, SentinelCluster, sentinel_cluster
from tests.utils import (
    TEST_IMAGE,
    GatewayProcess,
    RedisServer,
    remove_labelled_containers,
    run_controller,
    run_gateway,
    start_redis,
    wait_until,
)

LABEL = "preview-gateway.bench"
PROBE_KEY = f"{keys.PREFIX}bench:failover-probe"
USERS = 5
BEFORE = 2.0  # seconds of traffic before the kill
AFTER = 2.0  # seconds of traffic after the first successful start


@dataclass
class Answered:
    sid: str
    at: float  # monotonic, when the answer came
    sent: float = 0.0  # monotonic, when the request went


@dataclass
class Traffic:
    started: list[Answered] = field(default_factory=list)
    stopped: list[Answered] = field(default_factory=list)
    refused: int = 0  # 503s
    other: list[str] = field(default_factory=list)
    pending_stop: list[tuple[str, str]] = field(default_factory=list)  # (user, sid)
    acked: list[tuple[float, int]] = field(default_factory=list)  # probe: (time, value)
    took: list[tuple[float, float]] = field(default_factory=list)  # API calls: (sent, seconds)
    running: bool = True


async def starts_and_stops(url: str, traffic: Traffic, run: str) -> None:
    """Start a preview and stop it at once, user after user, until told to stop."""
    n = 0
    async with httpx.AsyncClient(base_url=url, timeout=90) as client:
        while traffic.running or traffic.pending_stop:
            for user, sid in list(traffic.pending_stop):
                sent = time.monotonic()
                answer = await client.delete(f"/v1/previews/{sid}", headers=bearer(user))
                traffic.took.append((sent, time.monotonic() - sent))
                if answer.status_code in (204, 404):
                    traffic.pending_stop.remove((user, sid))
                    if answer.status_code == 204:
                        traffic.stopped.append(Answered(sid, time.monotonic()))
                elif answer.status_code == 503:
                    traffic.refused += 1
                else:
                    traffic.other.append(f"DELETE {answer.status_code} {answer.text[:120]}")
            if not traffic.running:
                await asyncio.sleep(0.2)
                continue
            n += 1
            user = f"bench-{run}-{n % USERS}"
            sent = time.monotonic()
            try:
                answer = await client.post(
                    "/v1/previews", json=start_body(f"p{n}"), headers=bearer(user)
                )
            except httpx.TimeoutException:
                traffic.other.append(f"POST timed out at {time.monotonic():.1f}")
                continue
            traffic.took.append((sent, time.monotonic() - sent))
            if answer.status_code in (200, 202):
                sid = str(answer.json()["id"])
                traffic.started.append(Answered(sid, time.monotonic(), sent))
                traffic.pending_stop.append((user, sid))
            elif answer.status_code == 503:
                traffic.refused += 1
                await asyncio.sleep(0.2)
            else:
                traffic.other.append(f"POST {answer.status_code} {answer.text[:120]}")
                await asyncio.sleep(0.2)


async def probe(settings: Settings, traffic: Traffic) -> None:
    """Write 1, 2, 3... to one key; remember what Redis acknowledged, and when."""
    redis = redis_client(settings, socket_connect_timeout=1, socket_timeout=2)
    value = 0
    try:
        while traffic.running:
            try:
                await redis.set(PROBE_KEY, value + 1)
            except (RedisError, OSError):
                await asyncio.sleep(0.05)
                continue
            value += 1
            traffic.acked.append((time.monotonic(), value))
            await asyncio.sleep(0.002)
    finally:
        await redis.aclose()


@dataclass
class Round:
    first_start: float
    starts_lost: int
    records_lost: int
    writes_lost: int
    refused: int
    errors: list[str]
    slowest: float  # the longest request after the kill, seconds


class Target:
    """A Redis to break: what the processes are told, a client, and how to kill it."""

    settings: dict[str, str]  # PREVIEW_* by field name, over gateway_env's
    server: RedisServer  # the one gateway_env is given (its URL is overridden for Sentinel)

    def client(self) -> SyncRedis:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def recover(self) -> None:
        """After the kill, in a thread: whatever brings Redis back."""
        raise NotImplementedError

    def settle(self) -> None:
        """After the round: back to the starting shape for the next one."""


class SentinelTarget(Target):
    def __init__(self, cluster: SentinelCluster) -> None:
        self.cluster = cluster
        self.settings = cluster.settings()
        self.server = cluster.nodes[0]
        self.killed: RedisServer | None = None

    def client(self) -> SyncRedis:
        client: SyncRedis = self.cluster.sync_sentinel().master_for(
            MASTER,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 3),
            retry_on_error=[RedisConnectionError],
        )
        return client

    def kill(self) -> None:
        self.killed = self.cluster.kill_master()

    def recover(self) -> None:
        assert self.killed is not None
        self.cluster.wait_new_master(self.killed.port)

    def settle(self) -> None:
        assert self.killed is not None
        self.cluster.rejoin(self.killed)


class RestartTarget(Target):
    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.settings = {}

    def client(self) -> SyncRedis:
        return SyncRedis.from_url(
            self.server.url, socket_timeout=5, retry=Retry(NoBackoff(), 3),
            retry_on_error=[RedisConnectionError],
        )  # fmt: skip

    def kill(self) -> None:
        self.server.process.kill()
        self.server.process.wait()

    def recover(self) -> None:
        self.server.restart()


def one_round(target: Target, env: dict[str, str], url: str, state_dir: Path, run: str) -> Round:
    settings = Settings.from_env(env)
    traffic = Traffic()
    check = target.client()

    async def drive() -> tuple[float, float]:
        load = asyncio.create_task(starts_and_stops(url, traffic, run))
        writer = asyncio.create_task(probe(settings, traffic))
        await asyncio.sleep(BEFORE)
        await asyncio.to_thread(target.kill)
        kill_at = time.monotonic()  # the process is gone (killed and reaped)
        recovering = asyncio.create_task(asyncio.to_thread(target.recover))
        deadline = kill_at + 120
        while not any(a.sent > kill_at for a in traffic.started):
            if time.monotonic() > deadline:
                raise AssertionError("no start succeeded within 120 s of the kill")
            await asyncio.sleep(0.02)
        first = min(a.at for a in traffic.started if a.sent > kill_at) - kill_at
        await asyncio.sleep(AFTER)
        await recovering
        traffic.running = False
        await asyncio.gather(load, writer)
        return first, kill_at

    first, kill_at = asyncio.run(drive())
    # What was acknowledged before the kill and what Redis has now (spools replayed).
    before = [a.sid for a in traffic.started if a.at < kill_at]
    stopped_before = {a.sid for a in traffic.stopped if a.at < kill_at}
    wanted = [f"{sid}:start" for sid in before] + [f"{sid}:stop" for sid in stopped_before]
    spool = spool_dir(Settings.from_env({}, state_dir=str(state_dir)))

    def replayed() -> bool:
        left = [p for p in spool.glob("*.jsonl") if p.stat().st_size] if spool.exists() else []
        return not left

    with contextlib.suppress(AssertionError):
        wait_until(replayed, 30, "spools replayed")
    missing = [r for r in wanted if not check.hexists(keys.RECORDS_DATA, r)]
    lost_starts = [
        sid for sid in before
        if not check.exists(keys.session(sid)) and f"{sid}:start" in missing
    ]  # fmt: skip
    acked_before = max((v for t, v in traffic.acked if t < kill_at), default=0)
    stored = int(check.get(PROBE_KEY) or 0)
    check.close()
    slowest = max((took for sent, took in traffic.took if sent > kill_at - 1), default=0.0)
    return Round(
        first,
        len(lost_starts),
        len(missing),
        max(0, acked_before - stored),
        traffic.refused,
        traffic.other,
        slowest,
    )


@contextlib.contextmanager
def system(
    target: Target, state_dir: Path, run: str
) -> Iterator[tuple[dict[str, str], GatewayProcess]]:
    env = failover_env(
        target.server,
        TEST_IMAGE,
        f"{LABEL}=failover-{run}",
        state_dir,
        pool_min=2,
        pool_max=3,
        **target.settings,
    )
    with run_controller(env, show_log=False) as controller, run_gateway(env) as gateway:
        try:
            yield env, gateway
        except BaseException:
            print(f"--- gateway log\n{gateway.log()[-4000:]}\n--- controller log\n"
                  f"{controller.log()[-4000:]}")  # fmt: skip
            raise


def bench(mode: str, rounds: int, make: Callable[[], Any]) -> list[Round]:
    run = secrets.token_hex(3)
    results = []
    state_dir = Path(f"/tmp/pv-bench-failover-{run}")
    with make() as redis:
        target: Target = SentinelTarget(redis) if mode == "sentinel" else RestartTarget(redis)
        try:
            with system(target, state_dir, run) as (env, gateway):
                check = target.client()
                wait_until(lambda: _pooled(check) >= 2, 120, "a warm pool of 2")
                for number in range(1, rounds + 1):
                    result = one_round(target, env, gateway.url, state_dir, run)
                    target.settle()
                    wait_until(lambda: _pooled(check) >= 2, 120, "the pool back")
                    results.append(result)
                    print(
                        f"{mode} {number}/{rounds}: first start {result.first_start:.2f}s, "
                        f"starts lost {result.starts_lost}, records lost {result.records_lost}, "
                        f"writes lost {result.writes_lost}, 503s {result.refused}, "
                        f"slowest API call {result.slowest:.1f}s"
                        + (f", other answers {result.errors[:3]}" if result.errors else ""),
                        flush=True,
                    )
                    if (result.errors or result.slowest > 5) and os.environ.get("BENCH_SHOW_LOG"):
                        print(gateway.log()[-8000:])
                check.close()
        finally:
            remove_labelled_containers(f"{LABEL}=failover-{run}")
    return results


def _pooled(client: SyncRedis) -> int:
    cids = [text(c) for c in client.smembers(keys.CONTAINERS)]
    states = [client.hget(keys.container(c), "state") for c in cids]
    return sum(1 for s in states if s == b"pooled")


def summary(mode: str, results: list[Round]) -> tuple[float, float]:
    times = [r.first_start for r in results]
    p50, top = statistics.median(times), max(times)
    print(
        f"{mode:>8}: first start after the kill p50 {p50:.2f}s max {top:.2f}s over {len(times)}; "
        f"per kill: starts lost max {max(r.starts_lost for r in results)} "
        f"(total {sum(r.starts_lost for r in results)}), records lost max "
        f"{max(r.records_lost for r in results)} (total {sum(r.records_lost for r in results)}), "
        f"acknowledged writes lost max {max(r.writes_lost for r in results)}, "
        f"503s p50 {statistics.median(r.refused for r in results):.0f}"
    )
    return p50, top


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--modes", default="sentinel,restart")
    args = parser.parse_args()
    makers: dict[str, Callable[[], Any]] = {
        "sentinel": sentinel_cluster,
        "restart": lambda: _redis(persistent=True),
    }
    results = {mode: bench(mode, args.rounds, makers[mode]) for mode in args.modes.split(",")}
    print("\n--- failover figures")
    figures = {mode: summary(mode, rounds) for mode, rounds in results.items()}
    if {"sentinel", "restart"} <= figures.keys():
        (fp50, fmax), (rp50, rmax) = figures["sentinel"], figures["restart"]
        print(f"sentinel / restart: p50 {fp50 / rp50:.2f}x, max {fmax / rmax:.2f}x")
    return 0


@contextlib.contextmanager
def _redis(persistent: bool) -> Iterator[RedisServer]:
    server = start_redis(persistent=persistent)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
