"""Request rate limits per user, with slowapi, counted in Redis so they hold across
gateway replicas.

slowapi's ``Limiter`` builds the storage (Redis, under ``keys.RATE_LIMIT_PREFIX``) and the
moving-window strategy from our settings; we call that strategy ourselves rather than
through slowapi's decorators or middleware, for one reason: slowapi checks limits
synchronously even around ``async def`` endpoints (``_check_request_limit``; upstream
laurentS/slowapi#55 and #130), so each check would be a blocking Redis round trip on the
event loop, and a slow Redis would stall every connection of the process, proxy traffic
included. Here each check runs in a worker thread (at most ``CHECK_THREADS`` at once), and
the Redis socket timeouts bound how long one can take. Limits use slowapi's syntax
(``10/minute``, ``100/hour;1000/day``); over a limit → 429 JSON with ``Retry-After``.

The failed-authentication limit is the same object for the API and the preview proxy (the
router reads it from the app's state): every rule of ``PREVIEW_RATE_LIMIT_AUTH_FAILURES``,
the same moving window, keyed by client address here and by preview and client address
there (``keys.auth_failures``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
from limits import RateLimitItem, parse_many
from slowapi import Limiter
from starlette.requests import HTTPConnection

from gateway.errors import ApiError
from shared import keys
from shared.redis_client import rate_limit_storage
from shared.settings import Settings

KINDS = ("starts", "reads", "auth_failures", "share_views")
CHECK_THREADS = 4
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0


class RateLimited(ApiError):
    """429 for a request rate; ``kind`` is the limit the route's guard counted it against
    (what ``preview_rate_limited_total`` is labelled with)."""

    def __init__(self, kind: str, detail: str, retry: int) -> None:
        super().__init__(429, "rate_limited", detail, headers={"Retry-After": str(retry)})
        self.kind = kind


class RateLimits:
    """`await hit(kind, key)`: count one request; ApiError 429 with Retry-After when over."""

    def __init__(self, settings: Settings) -> None:
        self.items = self.check_settings(settings)
        # Passed on to redis-py (slowapi types them as strings only).
        options: dict[str, Any] = {
            "key_prefix": keys.RATE_LIMIT_PREFIX,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
        }
        uri, extra = rate_limit_storage(settings)
        self.slowapi = Limiter(
            key_func=client_address,
            storage_uri=uri,
            storage_options={**options, **extra},
            strategy="moving-window",
            headers_enabled=False,
            swallow_errors=False,  # Redis down → 503 like the rest of the API
            in_memory_fallback_enabled=False,  # a per-replica count would not be a limit
        )
        self.threads = anyio.CapacityLimiter(CHECK_THREADS)

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

    async def over(self, kind: str, key: str) -> tuple[RateLimitItem, int] | None:
        """Count one request; the first limit it is over and the seconds until that one
        has room again, or None."""
        items = self.items[kind]
        return await anyio.to_thread.run_sync(self._hit, items, kind, key, limiter=self.threads)

    async def hit(self, kind: str, key: str) -> None:
        over = await self.over(kind, key)
        if over is not None:
            item, retry = over
            raise RateLimited(
                kind,
                f"more than {item.amount} {kind.replace('_', ' ')} per "
                f"{item.multiples} {item.GRANULARITY.name}; retry in {retry} s",
                retry,
            )

    def _hit(
        self, items: Sequence[RateLimitItem], kind: str, key: str
    ) -> tuple[RateLimitItem, int] | None:
        """In a worker thread: count the request against each limit; the first one it is
        over and the seconds until it has room again, or None."""
        strategy = self.slowapi.limiter
        for item in items:
            if not strategy.hit(item, kind, key):
                stats = strategy.get_window_stats(item, kind, key)
                return item, max(1, math.ceil(stats.reset_time - time.time()))
        return None


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def client_key(conn: HTTPConnection, user: str | None) -> str:
    """Per user when the caller is known, else per client address."""
    if user is not None:
        return "user:" + user
    return "ip:" + client_address(conn)
