"""Every Redis client of the gateway, controller, previewctl and supervisor is made here.

Without sentinels a client connects to ``PREVIEW_REDIS_URL``. With
``PREVIEW_REDIS_SENTINELS`` it asks them for the current master of
``PREVIEW_REDIS_MASTER`` on every new connection (redis-py's Sentinel-managed pool), so
after a failover the next command (retried once, as after a Redis restart) reaches the
promoted replica; while no master is known, commands fail with a ``ConnectionError``
(``MasterNotFoundError``) like an outage does. The URL still gives the master's user,
password and database.

A master announced on a loopback address is on the host of the sentinel that announced
it: such an address is replaced by that sentinel's own host. Supervisors reach the
sentinels through ``host.docker.internal``, so a loopback-only setup works for them too.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.settings import Settings

CONTAINER_LOOPBACK_HOST = "host.docker.internal"
PING_TIMEOUT = 2.0


def addresses(raw: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    """``host:port`` strings (validated by the settings) as pairs."""
    pairs = []
    for item in raw:
        host, _, port = item.rpartition(":")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalAwareSentinel(Sentinel):
    """redis-py's Sentinel, with a loopback master address read as the answering
    sentinel's host (what a container or another machine must connect to)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for number, sentinel in enumerate(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisConnectionError, ResponseError, RedisTimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            state = masters.get(service_name) if isinstance(masters, dict) else None
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]
                host = str(state["ip"])
                if is_loopback(host):
                    host = str(sentinel.connection_pool.connection_kwargs["host"])
                return host, int(state["port"])
        detail = f": {'; '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"no master found for {service_name!r}{detail}")


class SentinelManagedRedis(Redis):
    """A client of the master that also closes its own sentinel connections."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if isinstance(manager, Sentinel):
            await manager.aclose()


def sentinel_master(
    sentinels: list[tuple[str, int]],
    master: str,
    url: str,
    sentinel_options: dict[str, Any],
    **options: Any,
) -> Redis:
    """A client of the current master of ``master``; credentials and database from
    ``url``, the sentinels' own credentials (and client options) in ``sentinel_options``."""
    parts = urlsplit(url)
    auth: dict[str, Any] = {}
    if parts.username:
        auth["username"] = unquote(parts.username)
    if parts.password:
        auth["password"] = unquote(parts.password)
    db = int(parts.path.strip("/") or 0)
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    manager = LocalAwareSentinel(
        sentinels, sentinel_kwargs={**timeouts, **sentinel_options}, **options
    )
    client: Redis = manager.master_for(master, redis_class=SentinelManagedRedis, db=db, **auth)
    return client


def reconnecting(options: dict[str, Any]) -> dict[str, Any]:
    """Options for a long-lived process's client. After a Redis restart or a failover
    every pooled connection is dead, and redis-py fails the next command on each; this
    client reconnects (asking the sentinels again) and sends it once more (an outage
    still fails fast)."""
    return {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError], **options}


def redis_client(settings: Settings, **options: Any) -> Redis:
    """The gateway's, controller's or previewctl's client for ``settings``."""
    options = reconnecting(options)
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, **options)
    sentinel_auth = (
        {"password": settings.redis_sentinel_password} if settings.redis_sentinel_password else {}
    )
    return sentinel_master(
        addresses(settings.redis_sentinels),
        settings.redis_master,
        settings.redis_url,
        sentinel_auth,
        **options,
    )


def rate_limit_storage(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The storage URI and extra options for slowapi/limits (which make their own
    synchronous client): the same Redis, through the same sentinels."""
    if not settings.redis_sentinels:
        return settings.redis_url, {}
    parts = urlsplit(settings.redis_url)
    sentinel_kwargs: dict[str, Any] = {"password": settings.redis_sentinel_password or None}
    options: dict[str, Any] = {
        "sentinel_kwargs": sentinel_kwargs,
        "use_replicas": False,  # counts read from a lagging replica would not be limits
        "db": int(parts.path.strip("/") or 0),
    }
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    uri = f"redis+sentinel://{','.join(settings.redis_sentinels)}/{settings.redis_master}"
    return uri, options


def container_sentinels(settings: Settings) -> tuple[str, ...]:
    """The sentinels as a supervisor in a container reaches them."""
    if settings.container_redis_sentinels:
        return settings.container_redis_sentinels
    mapped = []
    for host, port in addresses(settings.redis_sentinels):
        mapped.append(f"{CONTAINER_LOOPBACK_HOST if is_loopback(host) else host}:{port}")
    return tuple(mapped)


def supervisor_sentinel_env(settings: Settings) -> dict[str, str]:
    """What a container's supervisor needs to follow the sentinels (nothing without them):
    their addresses as seen from the container, the master's name, and the sentinels'
    restricted user, never ``PREVIEW_REDIS_SENTINEL_PASSWORD``."""
    if not settings.redis_sentinels:
        return {}
    return {
        "PREVIEW_SUPERVISOR_REDIS_SENTINELS": ",".join(container_sentinels(settings)),
        "PREVIEW_SUPERVISOR_REDIS_MASTER": settings.redis_master,
        "PREVIEW_SUPERVISOR_SENTINEL_USER": settings.container_sentinel_user,
    }


def sentinel_user_options(user: str) -> dict[str, Any]:
    """``name:password`` (empty: none) as a client's username and password options."""
    if not user:
        return {}
    name, _, password = user.partition(":")
    return {"username": name, "password": password}


async def unreachable(redis: Redis, timeout: float = PING_TIMEOUT) -> str | None:
    """Why Redis does not answer a PING within `timeout` (None: it does). The one health
    check of every process: ``asyncio.timeout``, not ``wait_for``, because on 3.11 the
    latter can swallow the cancellation that stops the caller's loop."""
    try:
        async with asyncio.timeout(timeout):
            await redis.ping()
    except (TimeoutError, RedisError, OSError) as exc:
        return f"Redis not reachable: {exc or type(exc).__name__}"
    return None
