"""Request rate limits per user, counted in Redis so they hold across gateway replicas.

Why not slowapi's ``Limiter`` decorators: slowapi checks limits synchronously even around
``async def`` endpoints (``_check_request_limit`` in its async wrapper; upstream issues
laurentS/slowapi#55 and #130), so its Redis storage would make a blocking Redis round trip
on the event loop for every request, and a slow Redis would stall every connection of the
process, proxy traffic included. ``async+redis://`` does not help: slowapi would hand the
async storage to its sync strategies. So this module uses the engine slowapi is built on,
the ``limits`` package, through its asyncio API (``limits.aio``): same limit syntax as the
settings (``10/minute``, ``100/hour;1000/day``), a moving window, the keys under
``keys.RATE_LIMIT_PREFIX``, and the gateway's own Redis connection pool.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from gateway.errors import ApiError
from shared import keys
from shared.settings import Settings

KINDS = ("starts", "reads", "auth_failures")


class RateLimits:
    """`await hit(kind, key)`: count one request; ApiError 429 with Retry-After when over."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.items = self.check_settings(settings)
        # Share the gateway's pool (limits types its options as scalars only).
        options: dict[str, Any] = {"connection_pool": redis.connection_pool}
        self.storage = RedisStorage(
            "async+" + settings.redis_url,
            implementation="redispy",
            key_prefix=keys.RATE_LIMIT_PREFIX,
            **options,
        )
        self.strategy = MovingWindowRateLimiter(self.storage)

    @staticmethod
    def check_settings(settings: Settings) -> dict[str, list[RateLimitItem]]:
        """The parsed limits; ValueError naming the variable when one cannot be parsed."""
        items = {}
        for kind in KINDS:
            raw = getattr(settings, f"rate_limit_{kind}")
            try:
                items[kind] = parse_many(raw)
            except ValueError:
                name = f"PREVIEW_RATE_LIMIT_{kind.upper()}"
                raise ValueError(f"{name}: cannot parse {raw!r}") from None
        return items

    async def hit(self, kind: str, key: str) -> None:
        for item in self.items[kind]:
            if not await self.strategy.hit(item, kind, key):
                stats = await self.strategy.get_window_stats(item, kind, key)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise ApiError(
                    429,
                    "rate_limited",
                    f"more than {item.amount} {kind.replace('_', ' ')} per "
                    f"{item.multiples} {item.GRANULARITY.name}; retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )


def client_key(conn: HTTPConnection, user: str | None) -> str:
    """Per user when the caller is known, else per client address."""
    if user is not None:
        return "user:" + user
    return "ip:" + (conn.client.host if conn.client else "unknown")
