"""Preview containers as the gateway and controller see them: launch, pool, command, release.

A container is launched with its own Redis ACL user (limited to ``pv:c:{cid}:*``) whose
password only its supervisor receives. Warm containers wait in a per-image Redis list;
acquiring one is a single Lua script (no Docker call), so no two gateways can hand out the
same container and a start costs one Redis round trip when the pool has one.

A container never serves two users: the general pool holds only containers that never ran
user code, and a released one is reset and reserved for its last user
(gateway/containers/reserved.py) until PREVIEW_POOL_AFFINITY_TTL, then destroyed; the pool
upkeep replaces the capacity with fresh containers.

Here: images and hosts, launch and destroy, the warm pool. Elsewhere in this package:
what a launch passes (``launch``), the pool's Lua scripts (``pool_scripts``), commands
(``commands.CommandChannel``) and the release path (``release.Releases``), both of which
``Containers`` inherits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.background import Background
from gateway.containers import pool_scripts
from gateway.containers.boost import Boost
from gateway.containers.commands import ContainerError as ContainerError  # its callers' import
from gateway.containers.create_gate import CreateGate
from gateway.containers.docker_runtime import (
    LABEL_ROLE,
    ContainerInfo,
    ContainerSpec,
    DockerHost,
    DockerRuntime,
    DockerRuntimeError,
)
from gateway.containers.launch import initial_record, new_cid, no_room, supervisor_env
from gateway.containers.placement import Placement
from gateway.containers.release import Releases
from gateway.containers.reserved import ReservedPool
from gateway.observability.counters import COUNTERS, Counters, decision
from shared import keys
from shared.acl import ACL_FIELD, container_acl_rules, password_digest
from shared.messages import Heartbeat
from shared.redis_types import raw_command, record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

IMAGE_ID_TTL = 30.0  # seconds: how soon a rebuilt image retires the warm pool


@dataclass(frozen=True)
class Assigned:
    cid: str
    host: str
    address: str
    from_pool: bool
    reserved: bool = False  # from the user's own reserved containers


def affinity(user: str, project_id: str | None) -> str:
    """Whose node_modules a reserved container keeps (its record's ``project`` field, and
    the supervisor's ``owner``): one user's one project, opaque. A start prefers a
    container of its user with its own key, and the supervisor drops a kept tree of any
    other key (another project's install scripts wrote it)."""
    if not project_id:
        return ""
    return hashlib.sha256(f"{user}\x00{project_id}".encode()).hexdigest()[:32]


class HostGone(ContainerError):
    """The one host a container must come from is not there any more (or is down)."""


class Containers(Releases):
    """Launch, pool, command (``CommandChannel``) and release (``Releases``) preview
    containers."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        runtime: DockerRuntime,
        labels: Mapping[str, str] | None = None,
        counters: Counters = COUNTERS,
        background: Background | None = None,
    ) -> None:
        self.settings = settings
        self.labels = dict(labels or {})  # extra labels on every container (tests mark theirs)
        self.redis = redis
        self.runtime = runtime
        self.counters = counters
        self.placement = Placement(settings, redis, runtime)
        self.gate = CreateGate(
            redis, settings.host_create_concurrency, background, settings.container_cpus
        )
        self.reserved = ReservedPool(settings, redis)
        self.boost = Boost(settings, redis, runtime, self.placement)
        self._acquire = redis.register_script(pool_scripts.ACQUIRE)
        self._add = redis.register_script(pool_scripts.ADD)
        self._placing = asyncio.Lock()
        self._image_id: tuple[float, str] | None = None
        self.image_ttl = IMAGE_ID_TTL

    # --- images and hosts ---------------------------------------------------------------

    async def image_id(self) -> str:
        """The current image's content id, cached briefly (it keys the pool), from the
        first host that answers; published in Redis for acquisitions."""
        now = time.monotonic()
        if self._image_id is None or now - self._image_id[0] > self.image_ttl:
            error: DockerRuntimeError | None = None
            for host in self.runtime.hosts.values():
                try:
                    image_id = await host.image_id(self.settings.image)
                    break
                except DockerRuntimeError as exc:
                    error = error or exc
            else:
                assert error is not None
                raise error
            await self.redis.set(keys.pool_image(self.settings.image), image_id)
            self._image_id = (now, image_id)
        return self._image_id[1]

    def pick_host(self) -> DockerHost:
        """The first configured host (placement chooses for new containers)."""
        return self.runtime.default

    # --- launch and destroy -------------------------------------------------------------

    async def launch(self, host: DockerHost | None = None, role: str = "pool") -> ContainerInfo:
        """Create a container with its own Redis user and register it (state `warming`) on
        `host`, or on the host with the most free capacity (the next one if that fails).
        A `session` launch (a user waiting) goes ahead of pool refills on that host."""
        image_id = await self.image_id()
        tried: list[str] = []
        error: DockerRuntimeError | None = None
        while True:
            # One placement at a time in this process: parallel refills then see each
            # other's registrations and spread over the hosts instead of all picking
            # the same "most free" one.
            async with self._placing:
                states = await self.placement.states()
                if host is not None:
                    chosen = [s for s in states if s.name == host.name]
                else:
                    chosen = sorted(
                        (s for s in states if s.usable and s.name not in tried),
                        key=lambda s: -s.rank,
                    )
                if not chosen:
                    if error is not None:
                        raise error
                    raise ContainerError(no_room(states))
                target, cid = chosen[0], new_cid(self.settings.deployment)
                # Registered before Docker knows it: the orphan sweep never mistakes it
                # for a stranger, and the host's accounting counts it while it is created.
                registered = await self.placement.register(
                    target, cid, initial_record(cid, target.name, image_id, role)
                )
            try:
                if not registered:
                    raise DockerRuntimeError(target.name, "host is full")
                return await self._create(target.name, cid, image_id, role)
            except DockerRuntimeError as exc:
                if host is not None:
                    raise
                log.warning("launch on %s failed, trying another host: %s", target.name, exc)
                tried.append(target.name)
                error = error or exc

    async def _create(self, host_name: str, cid: str, image_id: str, role: str) -> ContainerInfo:
        host = self.runtime.get(host_name)
        password = secrets.token_urlsafe(24)
        env = supervisor_env(self.settings, cid, password)
        spec = ContainerSpec(
            cid=cid, image=image_id, env=env, labels={**self.labels, LABEL_ROLE: role}
        )
        try:
            await raw_command(
                self.redis,
                "ACL",
                "SETUSER",
                cid,
                "reset",
                *container_acl_rules(cid),
                f">{password}",
            )
            async with self.gate.place(host.name, start=role == "session"):
                info = await host.create(spec)
        except BaseException:
            await asyncio.shield(self.forget(cid))
            raise
        await self.redis.hset(
            keys.container(cid),
            mapping={
                "docker_id": info.docker_id,
                "address": info.address or "",
                "route": info.route,  # its own address or the published port (admin view)
                "relay": info.relay or "",  # the other ports' way in when not routed directly
                "state": "warming",
                ACL_FIELD: password_digest(password),  # a restarted Redis needs it back
            },
        )
        return info

    async def destroy(self, cid: str, reason: str, code: str = "other") -> None:
        """Remove the container, its Redis user and every key it had. When its engine does
        not answer, the Redis side is dropped anyway (the container can no longer log in)
        and the orphan sweep removes the container once the host is back."""
        host_name = text(await self.redis.hget(keys.container(cid), "host"))
        host = self.runtime.hosts.get(host_name) if host_name else self.pick_host()
        if host is not None:
            try:
                await host.remove(cid)
            except DockerRuntimeError as exc:
                log.warning("container %s left on its host for the orphan sweep: %s", cid, exc)
        await self.forget(cid)
        decision(log, "container_destroyed", code, reason, counters=self.counters, cid=cid)

    async def forget(self, cid: str) -> None:
        """Drop everything Redis holds about a container (not the container itself)."""
        found = record(await self.redis.hgetall(keys.container(cid)))
        async for key in self.redis.scan_iter(match=keys.container_pattern(cid), count=500):
            await self.redis.delete(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.container(cid))
            pipe.srem(keys.CONTAINERS, cid)
            pipe.zrem(keys.RESERVED, cid)
            if found.get("user"):
                pipe.zrem(keys.user_reserved(found["user"]), cid)
            if found.get("host"):
                pipe.srem(keys.host_containers(found["host"]), cid)
                pipe.hdel(keys.host_boosts(found["host"]), cid)
            if found.get("image"):
                pipe.lrem(keys.pool(found["image"]), 0, cid)
            await pipe.execute()
        await raw_command(self.redis, "ACL", "DELUSER", cid)

    async def records(self) -> dict[str, dict[str, str]]:
        """Every registered container's record, by cid (one pipelined round trip)."""
        cids = sorted(text(c) for c in await self.redis.smembers(keys.CONTAINERS))
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hgetall(keys.container(cid))
            replies = await pipe.execute()
        return {cid: record(r) for cid, r in zip(cids, replies, strict=True) if r}

    # --- the warm pool ------------------------------------------------------------------

    async def heartbeat(self, cid: str) -> Heartbeat | None:
        return Heartbeat.read(await self.redis.get(keys.heartbeat(cid)))

    async def wait_idle(self, cid: str, timeout: float = 60.0) -> Heartbeat:
        """Wait until the container's supervisor reports `idle`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heartbeat = await self.heartbeat(cid)
            if heartbeat is not None and heartbeat.state == "idle":
                return heartbeat
            await asyncio.sleep(0.1)
        raise ContainerError(f"container {cid} did not report idle within {timeout:.0f}s")

    async def add_to_pool(self, cid: str) -> bool:
        """Put a freshly warmed container in its image's general pool, once. False when it
        is gone, was handed to a session meanwhile (two controllers warming it must not
        pool it twice) or ever was a user's: a used container never goes there."""
        pooled = await self._add(
            keys=[keys.container(cid)],
            args=[cid, repr(time.time()), keys.pool("{image}")],
        )
        return bool(pooled)

    async def pool_size(self) -> int:
        return int(await self.redis.llen(keys.pool(await self.image_id())))

    async def pop_pooled(self, user: str, owner: str = "", host: str = "") -> Assigned | None:
        """Take a warm container atomically: one of `user`'s reserved ones (that of the
        project of affinity key `owner` first), else a never-used one of the general
        pool, on `host` only if given; None when there is neither. One Redis round trip,
        no Docker call."""
        now = time.time()
        popped = await self._acquire(
            keys=[
                keys.pool_image(self.settings.image),
                keys.POOL_DEMAND,
                keys.POOL_STATS,
                keys.user_reserved(user),
                keys.RESERVED,
            ],
            args=[
                owner,
                keys.container("{cid}"),
                keys.heartbeat("{cid}"),
                keys.pool("{image}"),
                repr(now),
                self._image_id[1] if self._image_id else "",
                f"{now!r}:{secrets.token_hex(4)}",
                repr(now - self.settings.pool_scale_window),
                keys.POOL_DEMAND_MAX,
                user,
                host,
            ],
        )
        if popped is None:
            return None
        cid, host, address, how = (text(v) for v in popped)
        return Assigned(cid, host, address, from_pool=True, reserved=how == "reserved")

    async def acquire(self, user: str, owner: str = "", host: str = "") -> Assigned:
        """A warm container for `user` (see ``pop_pooled``), or a new one when there is
        none. When the hosts are full, another user's reserved container is destroyed to
        make room: reserved ones only save a reset user a start, a fresh start needs one.
        With `host` (a resume: its archive is there), only there: HostGone when that host
        is no longer configured or is down, ContainerError when it is full."""
        pooled = await self.pop_pooled(user, owner, host)
        if pooled is not None:
            return pooled
        if host:
            found = {s.name: s for s in await self.placement.states()}.get(host)
            if found is None or not found.up:
                raise HostGone(f"host {host} is {'down' if found else 'gone'}")
            if found.drained:  # being emptied: no new container there
                raise ContainerError(f"host {host} is drained")
        log.info("pool empty: creating a container for a start")  # alerted as pool_depleted
        try:
            try:
                info = await self.launch(self.runtime.get(host) if host else None, "session")
            except (DockerRuntimeError, ContainerError) as exc:
                if (
                    host
                    or not await self.hosts_full()
                    or not await self.evict_reserved(1, f"room for a start: {exc}")
                ):
                    raise
                info = await self.launch(role="session")
        except (DockerRuntimeError, ContainerError) as exc:
            raise ContainerError(f"no container available: {exc}") from exc
        await self.redis.hset(
            keys.container(info.cid),
            mapping={"state": "assigned", "assigned_at": repr(time.time()), "user": user},
        )
        return Assigned(info.cid, info.host, info.address or "", from_pool=False)

    async def hosts_full(self) -> bool:
        """Hosts are up but none has room: destroying a container would make some."""
        states = await self.placement.states()
        working = [s for s in states if s.up and not s.drained]
        return bool(working) and not any(s.usable for s in working)

    async def evict_reserved(self, count: int, reason: str) -> int:
        """Destroy up to `count` reserved containers, those released longest ago first;
        how many were."""
        evicted = 0
        # A few more than asked: concurrent evictions (other starts) may take some first.
        for cid in await self.reserved.oldest(count + 8):
            if evicted >= count:
                break
            if await self.reserved.take(cid):
                await self.destroy(cid, reason, "reserved_evicted")
                evicted += 1
        return evicted
