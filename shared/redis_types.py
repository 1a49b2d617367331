"""Small typed helpers over redis-py, whose replies are typed as ``bytes | str``."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared.redis_client import reconnecting


def text(value: bytes | str | None, default: str = "") -> str:
    """A reply value as text (clients here do not decode responses)."""
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else value


def record(reply: dict[Any, Any]) -> dict[str, str]:
    """An HGETALL reply as a str → str dict."""
    return {text(k): text(v) for k, v in reply.items()}


async def raw_command(redis: Redis, *args: str | bytes | int | float) -> Any:
    """A raw command (ACL SETUSER and others redis-py has no typed method for)."""
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call]


def connect(url: str, **options: Any) -> Redis:
    """A client of the Redis at ``url`` for a long-lived process, reconnecting once after a
    restart (``shared.redis_client.redis_client`` is the one that follows sentinels)."""
    return Redis.from_url(url, **reconnecting(options))
