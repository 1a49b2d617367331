"""Container time per user and project, and what it costs.

The leading controller calls :meth:`CostMeter.accrue` every pass: the time since the
previous accrual (``GETSET`` on one key, so two controllers overlapping during a leader
change count disjoint intervals) is added, per UTC day, to each live session's user and
project, and to ``pool`` for every warm container waiting (general or reserved). Money: a
container-second costs PREVIEW_COST_PER_HOST_HOUR / (host capacity * 3600), the capacity being
PREVIEW_COST_HOST_CAPACITY or else what placement computes from the hosts' sizes.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from gateway.observability import live
from gateway.sessions.store import live_sessions
from shared import keys
from shared.redis_types import text
from shared.settings import Settings

DAY = 86400
TOP = 50  # users and projects listed per report


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class CostMeter:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keep = int(max(1.0, settings.records_retention_days) * DAY) + DAY

    async def accrue(self, now: float | None = None) -> float:
        """Count container time up to `now`; returns the seconds of wall time counted."""
        now = now if now is not None else time.time()
        previous = await self.redis.set(keys.COST_ACCRUED_AT, repr(now), get=True)
        if not isinstance(previous, bytes | str):
            return 0.0  # the first accrual only starts the clock
        start = max(float(previous), now - keys.COST_MAX_GAP)
        if now <= start:
            return 0.0
        sessions = await live_sessions(self.redis, live.MAX_SESSIONS)
        pool = await live.pool(self.redis, self.settings)
        key = keys.cost_day(day_of(now))
        async with self.redis.pipeline(transaction=True) as pipe:
            total = 0.0
            for session in sessions:
                if session.state == "stopping":
                    continue
                seconds = now - max(start, session.created_at)
                if seconds <= 0:
                    continue
                total += seconds
                pipe.hincrbyfloat(key, f"u:{session.user}", seconds)
                pipe.hincrbyfloat(key, f"p:{session.project_id}", seconds)
            idle = (now - start) * (pool.pooled + pool.reserved)
            if idle:
                pipe.hincrbyfloat(key, "pool", idle)
            pipe.hincrbyfloat(key, "total", total + idle)
            pipe.expire(key, self.keep)
            await pipe.execute()
        return now - start

    async def price_per_second(self) -> float | None:
        """Money per container-second, or None when no price or capacity is known."""
        if self.settings.cost_per_host_hour <= 0:
            return None
        capacity = self.settings.cost_host_capacity
        if capacity <= 0:
            known = [h.capacity for h in await live.hosts(self.redis, self.settings) if h.capacity]
            capacity = round(sum(known) / len(known)) if known else 0
        if capacity <= 0:
            return None
        return self.settings.cost_per_host_hour / capacity / 3600

    async def days(
        self, count: int, now: float | None = None
    ) -> list[tuple[str, dict[str, float]]]:
        now = now if now is not None else time.time()
        names = [day_of(now - i * DAY) for i in range(max(1, count))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.cost_day(name))
            replies = await pipe.execute()
        return [
            (name, {text(k): float(text(v)) for k, v in reply.items()})
            for name, reply in zip(names, replies, strict=True)
        ]

    async def today(self) -> float | None:
        """Today's (UTC) cost so far; None when costs are not priced."""
        price = await self.price_per_second()
        if price is None:
            return None
        (_, found), *_ = await self.days(1)
        return found.get("total", 0.0) * price

    async def report(self, count: int) -> dict[str, Any]:
        """Container-seconds and cost per user and project over the last `count` days."""
        price = await self.price_per_second()
        per_day = await self.days(count)
        users: dict[str, float] = {}
        projects: dict[str, float] = {}
        for _, found in per_day:
            for field, seconds in found.items():
                if field.startswith("u:"):
                    users[field[2:]] = users.get(field[2:], 0.0) + seconds
                elif field.startswith("p:"):
                    projects[field[2:]] = projects.get(field[2:], 0.0) + seconds

        def money(seconds: float) -> float | None:
            return None if price is None else round(seconds * price, 4)

        def ranked(found: dict[str, float]) -> list[dict[str, Any]]:
            top = sorted(found.items(), key=lambda item: -item[1])[:TOP]
            return [{"id": k, "container_seconds": round(v, 1), "cost": money(v)} for k, v in top]

        daily = [
            {
                "day": day,
                "container_seconds": round(found.get("total", 0.0), 1),
                "pool_seconds": round(found.get("pool", 0.0), 1),
                "cost": money(found.get("total", 0.0)),
            }
            for day, found in per_day
        ]
        total = sum(found.get("total", 0.0) for _, found in per_day)
        return {
            "days": count,
            "price_per_container_hour": None if price is None else round(price * 3600, 6),
            "budget_daily": self.settings.cost_budget_daily or None,
            "container_seconds": round(total, 1),
            "cost": money(total),
            "daily": daily,
            "users": ranked(users),
            "projects": ranked(projects),
        }


def over_budget(settings: Settings, spent: float | None) -> bool:
    return (
        settings.cost_budget_daily > 0 and spent is not None and spent > settings.cost_budget_daily
    )
