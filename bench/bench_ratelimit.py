"""What a rate-limit check costs, and what it does to the event loop (issue: control plane).

Three ways to check the same moving-window limit in the same real Redis, each with N
concurrent callers on one event loop, while a ticker measures how late the loop runs:
- **slowapi, worker thread** (the gateway's way: gateway/api/ratelimit.py);
- **limits.aio** (the asyncio API of the engine slowapi is built on; the previous way);
- **slowapi, on the loop** (what slowapi's decorators and middleware do).
Then the same with Redis paused for 1 s (SIGSTOP): the loop's worst lateness is the figure
that matters for the proxy traffic sharing the loop.

    .venv/bin/python bench/bench_ratelimit.py [--callers 20] [--checks 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import threading
import time
from collections.abc import Awaitable, Callable

import _root  # noqa: F401  (puts the repository root on sys.path)
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from bench.bench_api import percentile
from gateway.api.ratelimit import RateLimits
from shared.settings import Settings
from tests.utils import RedisServer, start_redis

ITEM = parse("1000000/minute")
Check = Callable[[str], Awaitable[None]]


async def measure(
    check: Check, callers: int, checks: int, pause: RedisServer | None
) -> tuple[list[float], float]:
    """Latencies of `checks` checks by `callers` tasks; the loop's worst lateness."""
    latencies: list[float] = []
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            began = time.monotonic()
            await asyncio.sleep(0.005)
            worst = max(worst, time.monotonic() - began - 0.005)

    async def caller(index: int) -> None:
        for n in range(checks // callers):
            began = time.monotonic()
            await check(f"user:{index}")
            latencies.append(time.monotonic() - began)
            if pause is not None and index == 0 and n == 2:
                pause.process.send_signal(signal.SIGSTOP)
                # From a thread: a blocked loop could not run a callback.
                threading.Timer(1.0, pause.process.send_signal, (signal.SIGCONT,)).start()

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(caller(i) for i in range(callers)))
    done.set()
    await tick
    return latencies, worst


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    server = start_redis(bind_bridge=False)
    try:
        settings = Settings.from_env({}, redis_url=server.url, rate_limit_reads="1000000/minute")
        ours = RateLimits(settings)
        aio = MovingWindowRateLimiter(RedisStorage("async+" + server.url, implementation="redispy"))
        sync = ours.slowapi.limiter

        async def thread(key: str) -> None:
            await ours.hit("reads", key)

        async def native(key: str) -> None:
            await aio.hit(ITEM, "reads", key)

        async def blocking(key: str) -> None:
            sync.hit(ITEM, "reads", key)

        ways = {
            "slowapi, worker thread (ours)": thread,
            "limits.aio": native,
            "slowapi, on the loop": blocking,
        }
        results: dict[str, tuple[float, float, float, float]] = {}
        for name, check in ways.items():
            await measure(check, args.callers, 200, None)  # warm up connections
            latencies, worst = await measure(check, args.callers, args.checks, None)
            _, stalled = await measure(check, args.callers, args.checks // 4, server)
            results[name] = (
                statistics.median(latencies) * 1000,
                percentile(latencies, 0.99) * 1000,
                worst * 1000,
                stalled * 1000,
            )
    finally:
        server.stop()
    base = results["limits.aio"][0]
    print(f"\n{args.callers} concurrent callers, {args.checks} checks each way, one event loop")
    print(
        "| way | p50 ms | p99 ms | p50 vs limits.aio | loop late, max ms | same, Redis paused 1 s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, (p50, p99, worst, stalled) in results.items():
        print(
            f"| {name} | {p50:.2f} | {p99:.2f} | {p50 / base:.2f}x | {worst:.1f} | {stalled:.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
