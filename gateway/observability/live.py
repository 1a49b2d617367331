"""The system's live state as operators see it, read from Redis in a few round trips:
sessions, the warm pool, the Docker hosts with their load. Shared by ``/metrics``, the
admin API (dashboard) and ``previewctl``; no Docker calls, so a slow engine cannot stall
a scrape.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from gateway.containers.docker_runtime import host_name
from gateway.containers.placement import host_capacity, read_hosts
from gateway.sessions.store import Session
from shared import keys
from shared.redis_types import record, text
from shared.settings import Settings

MAX_SESSIONS = 5000  # operator views list at most this many live sessions


def host_names(settings: Settings) -> list[str]:
    """The configured Docker hosts' names, as placement and the records use them."""
    return [host_name(url) for url in settings.docker_hosts]


@dataclass
class HostView:
    name: str
    up: bool
    reason: str
    since: float
    capacity: int
    containers: int
    pooled: int = 0
    reserved: int = 0
    sessions: int = 0
    drained: bool = False

    @property
    def load(self) -> float:
        return self.containers / self.capacity if self.capacity else 0.0


@dataclass
class PoolView:
    """The general pool (never-used containers: `pooled`, `hits`) and the containers
    reserved for their last user (`reserved`, `reserved_hits`)."""

    image: str
    pooled: int
    target: int
    hits: int
    misses: int
    per_host: dict[str, int] = field(default_factory=dict)
    reserved: int = 0
    reserved_hits: int = 0
    reserved_per_host: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float | None:
        """Starts that got a warm container (general or their own reserved one)."""
        total = self.hits + self.reserved_hits + self.misses
        return (self.hits + self.reserved_hits) / total if total else None

    def summary(self) -> dict[str, object]:
        return {
            "image": self.image,
            "pooled": self.pooled,
            "reserved": self.reserved,
            "target": self.target,
            "hits": self.hits,
            "reserved_hits": self.reserved_hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
        }


async def pool(redis: Redis, settings: Settings) -> PoolView:
    image = text(await redis.get(keys.pool_image(settings.image)))
    cids = [text(c) for c in await redis.lrange(keys.pool(image), 0, -1)] if image else []
    found: Any = await redis.zrange(keys.RESERVED, 0, -1)
    reserved = [text(c) for c in found]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.POOL_STATS)
        for cid in [*cids, *reserved]:
            pipe.hget(keys.container(cid), "host")
        replies = await pipe.execute()
    stats = record(replies[0])
    per_host = Counter(text(h) for h in replies[1 : 1 + len(cids)] if h)
    reserved_per_host = Counter(text(h) for h in replies[1 + len(cids) :] if h)
    return PoolView(
        image=image,
        pooled=len(cids),
        target=int(stats.get("target") or settings.pool_min),
        hits=int(stats.get("hits") or 0),
        misses=int(stats.get("misses") or 0),
        per_host=dict(per_host),
        reserved=len(reserved),
        reserved_hits=int(stats.get("reserved_hits") or 0),
        reserved_per_host=dict(reserved_per_host),
    )


async def hosts(
    redis: Redis,
    settings: Settings,
    live: list[Session] | None = None,
    pooled: dict[str, int] | None = None,
    reserved: dict[str, int] | None = None,
) -> list[HostView]:
    """Every configured host: up or down (as the controller last saw it), capacity, use."""
    names = host_names(settings)
    seen, drained = await read_hosts(redis, names)
    per_host = Counter(s.host for s in live or [])
    views = []
    for name, (found, used) in zip(names, seen, strict=True):
        mem, cpus = int(found.get("mem_total") or 0), int(found.get("ncpu") or 0)
        views.append(
            HostView(
                name=name,
                up=found.get("state", "up") != "down",
                reason=found.get("reason", ""),
                since=float(found.get("since") or 0),
                capacity=host_capacity(settings, mem, cpus) if mem else 0,
                containers=used,
                pooled=(pooled or {}).get(name, 0),
                reserved=(reserved or {}).get(name, 0),
                sessions=per_host.get(name, 0),
                drained=name in drained,
            )
        )
    return views


async def drain(redis: Redis, name: str, on: bool = True) -> bool:
    """Mark a host drained (no new containers; existing ones finish) or undo it. True when
    that changed something."""
    if on:
        return bool(await redis.sadd(keys.DRAINED_HOSTS, name))
    return bool(await redis.srem(keys.DRAINED_HOSTS, name))


async def transitions(redis: Redis, now: float) -> dict[str, Any]:
    """Sleep, hibernation and resume at a glance: how many previews are hibernated now (the
    global index, whose entries past their resume window are dropped here) and the recent
    wakes (with how long each took) and resumes, newest first."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lrange(keys.RECENT_WAKES, 0, -1)
        pipe.lrange(keys.RECENT_RESUMES, 0, -1)
        wakes, resumes = await pipe.execute()
    return {
        "hibernated": await hibernated(redis, now),
        "recent_wakes": _items(wakes),
        "recent_resumes": _items(resumes),
    }


async def hibernated(redis: Redis, now: float) -> int:
    """Previews hibernated now (their resume window not over), from the global index."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(keys.HIBERNATED, "-inf", now)
        pipe.zcard(keys.HIBERNATED)
        _, count = await pipe.execute()
    return int(count)


def _items(raw: list[Any]) -> list[dict[str, Any]]:
    found = []
    for item in raw:
        try:
            value = json.loads(text(item))
        except ValueError:
            continue  # not ours: shown as nothing rather than failing the page
        if isinstance(value, dict):
            found.append(value)
    return found
