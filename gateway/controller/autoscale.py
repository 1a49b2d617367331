"""The warm pool's target size, between PREVIEW_POOL_MIN and PREVIEW_POOL_MAX, from demand.

A pool of N absorbs N starts that arrive before refills can catch up, so the target is the
number of starts expected within one replenish time (launch to `idle`, measured): the
larger of the busiest such burst within PREVIEW_POOL_SCALE_WINDOW and the recent rate
times the replenish time. Remembering the busiest burst (not just the current rate) is
what serves a burst after a quiet hour from the pool. Acquisitions are recorded by the
acquire script itself (``keys.POOL_DEMAND``); the replenish time lives in
``keys.POOL_STATS`` so a new leader starts from the old one's measurement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.redis_types import text
from shared.settings import Settings

DEFAULT_REPLENISH = 10.0  # seconds, until the first container has been warmed
RECENT = 300.0  # seconds over which "the recent rate" is measured
SMOOTHING = 0.3  # weight of a new replenish measurement


@dataclass(frozen=True)
class Demand:
    peak: int  # most acquisitions within any replenish-time span of the window
    rate: float  # acquisitions per second over the last RECENT seconds
    replenish: float  # seconds from launching a container to it being pooled


def peak_within(times: Sequence[float], span: float) -> int:
    """The most of the sorted `times` that fall within any interval `span` long."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > span:
            start += 1
        best = max(best, end - start + 1)
    return best


def target_for(settings: Settings, demand: Demand) -> int:
    wanted = max(demand.peak, math.ceil(demand.rate * demand.replenish))
    return min(settings.pool_max, max(settings.pool_min, wanted))


class Autoscaler:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis

    async def replenish_time(self) -> float:
        raw = text(await self.redis.hget(keys.POOL_STATS, "replenish_s"))
        try:
            return float(raw) if raw else DEFAULT_REPLENISH
        except ValueError:
            return DEFAULT_REPLENISH

    async def record_replenish(self, seconds: float) -> None:
        """Fold one launch-to-pooled time into the smoothed replenish time."""
        raw = text(await self.redis.hget(keys.POOL_STATS, "replenish_s"))
        smoothed = seconds if not raw else (1 - SMOOTHING) * float(raw) + SMOOTHING * seconds
        await self.redis.hset(keys.POOL_STATS, "replenish_s", f"{smoothed:.3f}")

    async def demand(self, now: float | None = None) -> Demand:
        now = time.time() if now is None else now
        window_start = now - self.settings.pool_scale_window
        scored: Any = await self.redis.zrangebyscore(
            keys.POOL_DEMAND, window_start, "+inf", withscores=True
        )
        times = sorted(float(pair[1]) for pair in scored)
        replenish = max(await self.replenish_time(), 0.1)
        recent = sum(1 for t in times if t >= now - RECENT)
        return Demand(peak_within(times, replenish), recent / RECENT, replenish)

    async def target(self) -> tuple[int, Demand]:
        demand = await self.demand()
        target = target_for(self.settings, demand)
        await self.redis.hset(
            keys.POOL_STATS,
            mapping={"target": str(target), "peak": str(demand.peak), "updated": repr(time.time())},
        )
        return target, demand
