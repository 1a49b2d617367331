"""Releasing a container after its session: reset and reserved for the same user, or
destroyed when it must not serve again (failed reset, over its disk budget, served too
long, image rebuilt, host down).

A container never serves two users: a reset one goes back only to the user it served
(``reserved``), never to the general pool. ``Releases`` is a part of ``Containers``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from redis.exceptions import RedisError

from gateway.containers.boost import Boost
from gateway.containers.commands import CommandChannel, ContainerError
from gateway.containers.reserved import ReservedPool
from gateway.observability.counters import Counters, decision
from shared import keys
from shared.messages import Command, Heartbeat
from shared.redis_types import record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

RESET_TIMEOUT = 60.0

# Share of a container's disk bound past which the disk rule acts (the kernel refuses
# writes at the bound itself): caches cleaned, then recycled; not pooled again.
DISK_FULL = 0.85


def disk_bound(settings: Settings, heartbeat: Heartbeat) -> int:
    """Bytes a container may write: what its heartbeat reports as its bound (the kernel's,
    less what the filesystem spends on the image), else PREVIEW_CONTAINER_DISK_MB; 0 when
    that is 0 (unbounded: the disk rule does not apply)."""
    budget = settings.container_disk_mb * 1024 * 1024
    return min(budget, heartbeat.disk_total) if heartbeat.disk_total else budget


class Releases(CommandChannel):
    """``Containers.release`` and what it judges by; the rest comes from ``Containers``."""

    settings: Settings
    counters: Counters
    reserved: ReservedPool
    boost: Boost

    async def image_id(self) -> str:
        raise NotImplementedError

    async def heartbeat(self, cid: str) -> Heartbeat | None:
        raise NotImplementedError

    async def destroy(self, cid: str, reason: str, code: str = "other") -> None:
        raise NotImplementedError

    async def retire_reason(self, found: Mapping[str, str]) -> tuple[str, str] | None:
        """(code, reason) when a container must not serve again, judged before its reset."""
        s = self.settings
        served = int(found.get("served") or 0) + 1
        age = time.time() - float(found.get("created_at") or 0)
        host = text(await self.redis.hget(keys.docker_host(found.get("host", "")), "state"))
        if host == "down":
            return "host_down", f"its Docker host {found.get('host')} is down"
        if found.get("image") != await self.image_id():
            return "image_rebuilt", "image was rebuilt"
        if served >= s.container_max_sessions:
            return "served_too_long", f"served {served} sessions"
        if age >= s.container_max_age:
            return "served_too_long", f"served for {age / 3600:.1f} h"
        heartbeat = await self.heartbeat(found["cid"])
        if heartbeat is None:
            return "unhealthy", "stopped heartbeating"
        bound = disk_bound(s, heartbeat)
        if bound and heartbeat.disk_used > DISK_FULL * bound:
            used = heartbeat.disk_used >> 20
            return "disk_budget", f"it used {used} of its {bound >> 20} MiB of disk"
        return None

    async def release(
        self,
        cid: str,
        user: str,
        owner: str = "",
        budget_bytes: int | None = None,
        session: str | None = None,
    ) -> bool:
        """Reset the container and reserve it for `user` (the one its record says had it;
        `owner`: the affinity key of the project whose node_modules it keeps); destroy it
        if that fails, it is over its disk budget, has served too long, or reservations
        are off (the pool keeper replaces it). `session`: the one it served, which the
        reset must name (supervisor/fence.py; a supervisor serving a session nobody names
        refuses, and is destroyed). True when it was reserved."""
        found = record(await self.redis.hgetall(keys.container(cid)))
        if not found:
            return False
        found.setdefault("cid", cid)
        if found.get("host"):  # a pooled container runs at PREVIEW_CONTAINER_CPUS
            await self.boost.drop(found["host"], cid)
        if budget_bytes is None:
            budget_bytes = self.settings.container_disk_mb * 1024 * 1024 // 2
        recorded = found.get("user", "")
        had = recorded or user
        retire = await self.retire_reason(found)
        if retire is None and (not had or (user and recorded and user != recorded)):
            retire = ("owner_unknown", f"released for {user!r}, its record says {recorded!r}")
        if retire is None and self.settings.pool_affinity_ttl <= 0:
            retire = ("not_reserved", "PREVIEW_POOL_AFFINITY_TTL is 0")
        if retire is None:
            await self.redis.hset(
                keys.container(cid),
                mapping={"state": "releasing", "releasing_at": repr(time.time()), "user": had},
            )
            retire = await self._reset(cid, budget_bytes, session)
        served = int(found.get("served") or 0) + 1
        if retire is None:
            await self.redis.hset(keys.container(cid), "served", str(served))
            if not await self.reserved.reserve(cid, had, owner):
                retire = ("release_lost", "its record changed while it was reset")
        if retire is not None:
            await self.destroy(cid, retire[1], retire[0])
            return False
        decision(
            log,
            "container_released",
            "reserved",
            "reset cleanly",
            counters=self.counters,
            cid=cid,
            owner=owner,
            served=served,
        )
        return True

    async def _reset(
        self, cid: str, budget_bytes: int, session: str | None = None
    ) -> tuple[str, str] | None:
        args = {"keep_node_modules": True, "node_modules_budget_bytes": budget_bytes}
        command = Command("reset", args, session_id=session)
        try:
            result = await self.send(cid, command, timeout=RESET_TIMEOUT)
        except (ContainerError, RedisError) as exc:
            return "reset_failed", f"reset failed: {exc}"
        if not result.ok:
            return "reset_failed", f"reset failed: {result.error}"
        if await self.heartbeat(cid) is None:
            return "unhealthy", "stopped heartbeating during its reset"
        return None
