"""Preview containers as the gateway and controller see them: launch, pool, command, release.

A container is launched with its own Redis ACL user (limited to ``pv:c:{cid}:*``) whose
password only its supervisor receives. Warm containers wait in a per-image Redis list;
acquiring one is a single Lua script (no Docker call), so no two gateways can hand out the
same container and a start costs one Redis round trip when the pool has one.

A container never serves two users: the general pool holds only containers that never ran
user code, and a released one is reset and reserved for its last user
(gateway/containers/reserved.py) until PREVIEW_POOL_AFFINITY_TTL, then destroyed; the pool
upkeep replaces the capacity with fresh containers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.containers.create_gate import CreateGate
from gateway.containers.docker_runtime import (
    LABEL_ROLE,
    ContainerInfo,
    ContainerSpec,
    DockerHost,
    DockerRuntime,
    DockerRuntimeError,
)
from gateway.containers.placement import HostState, Placement
from gateway.containers.reserved import ReservedPool
from gateway.controller.outage import ACL_FIELD, password_digest
from gateway.observability.counters import COUNTERS, Counters, decision
from shared import keys
from shared.acl import container_acl_rules
from shared.messages import Command, CommandResult, Heartbeat, MessageError
from shared.redis_client import supervisor_sentinel_env
from shared.redis_types import raw_command, record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

IMAGE_ID_TTL = 30.0  # seconds: how soon a rebuilt image retires the warm pool
RESET_TIMEOUT = 60.0

# Acquire for a user: first one of that user's reserved containers (see
# gateway/containers/reserved.py; the one that last served this project first, its
# node_modules are kept, else the most recently released), else the oldest container of the
# general pool. Skipped: entries whose heartbeat is gone (dead while pooled), reserved ones
# past their time or of another image, and any general-pool entry whose record says a user
# had it or it served a session (one pooled by older code): never handed to another user.
# Only general-pool draws count as demand (autoscaling): a reserved hit takes nothing there.
# KEYS[1] = the image's current content id, KEYS[2] = demand, KEYS[3] = pool stats,
# KEYS[4] = the user's reserved set, KEYS[5] = every reserved container.
# ARGV[1] = the affinity key (``affinity``); ARGV[2], ARGV[3], ARGV[4] = the container
# record, heartbeat and pool keys with "{cid}"/"{image}" placeholders (built by
# shared/keys.py); ARGV[5] = now; ARGV[6] = this caller's image id if the first key is
# unset; ARGV[7] = a demand token; ARGV[8] = forget demand before this time; ARGV[9] =
# demand entries kept at most; ARGV[10] = the user.
# -> nil | {cid, host, address, "reserved"|"pool"}
_ACQUIRE = """
local function key(template, name, value) return (string.gsub(template, name, value)) end
local image = redis.call('GET', KEYS[1]) or ARGV[6]
local function alive(cid) return redis.call('EXISTS', key(ARGV[3], '{cid}', cid)) == 1 end
local function take(cid, how)
  local ctr = key(ARGV[2], '{cid}', cid)
  redis.call('HSET', ctr, 'state', 'assigned', 'assigned_at', ARGV[5], 'user', ARGV[10])
  local found = redis.call('HMGET', ctr, 'host', 'address')
  return {cid, found[1] or '', found[2] or '', how}
end
local reserved = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. ARGV[5], '+inf')
local mine, newest = nil, nil
for i = #reserved, 1, -1 do
  local cid = reserved[i]
  local found = redis.call('HMGET', key(ARGV[2], '{cid}', cid), 'state', 'user', 'image', 'project')
  if found[1] == 'reserved' and found[2] == ARGV[10] and found[3] == image and alive(cid) then
    newest = newest or cid
    if ARGV[1] ~= '' and found[4] == ARGV[1] then
      mine = cid
      break
    end
  end
end
local chosen = mine or newest
if chosen then
  redis.call('ZREM', KEYS[4], chosen)
  redis.call('ZREM', KEYS[5], chosen)
  redis.call('HINCRBY', KEYS[3], 'reserved_hits', 1)
  return take(chosen, 'reserved')
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[8])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[9]) - 1)
if image == '' then
  redis.call('HINCRBY', KEYS[3], 'misses', 1)
  return nil
end
local pool = key(ARGV[4], '{image}', image)
local entries = redis.call('LRANGE', pool, 0, -1)
for i = #entries, 1, -1 do
  local cid = entries[i]
  local used = redis.call('HMGET', key(ARGV[2], '{cid}', cid), 'user', 'served')
  if alive(cid) and (not used[1] or used[1] == '') and (not used[2] or used[2] == '0') then
    chosen = cid
    break
  end
end
if not chosen then
  redis.call('HINCRBY', KEYS[3], 'misses', 1)
  return nil
end
redis.call('HINCRBY', KEYS[3], 'hits', 1)
redis.call('LREM', pool, 1, chosen)
return take(chosen, 'pool')
"""


# KEYS[1] = container record. ARGV: cid, now, pool key with "{image}". Only a container
# still warming that no user ever had: the general pool never holds a used one.
_ADD = """
if redis.call('HGET', KEYS[1], 'state') ~= 'warming' then return 0 end
local used = redis.call('HMGET', KEYS[1], 'user', 'served')
if (used[1] and used[1] ~= '') or (used[2] and used[2] ~= '0') then return 0 end
local image = redis.call('HGET', KEYS[1], 'image')
local pool = string.gsub(ARGV[3], '{image}', image)
redis.call('HSET', KEYS[1], 'state', 'pooled', 'project', '', 'session', '',
  'pooled_at', ARGV[2])
redis.call('LREM', pool, 0, ARGV[1])
redis.call('LPUSH', pool, ARGV[1])
return 1
"""


# Share of a container's disk bound past which the disk rule acts (the kernel refuses
# writes at the bound itself): caches cleaned, then recycled; not pooled again.
DISK_FULL = 0.85


def disk_bound(settings: Settings, heartbeat: Heartbeat) -> int:
    """Bytes a container may write: what its heartbeat reports as its bound (the kernel's,
    less what the filesystem spends on the image), else PREVIEW_CONTAINER_DISK_MB; 0 when
    that is 0 (unbounded: the disk rule does not apply)."""
    budget = settings.container_disk_mb * 1024 * 1024
    return min(budget, heartbeat.disk_total) if heartbeat.disk_total else budget


class ContainerError(Exception):
    """A container could not be had or did not do what it was told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def new_cid(deployment: str) -> str:
    """Container name and Redis ACL user name. The deployment is in it because ACL users
    are per Redis server, not per database: a sweep deletes only its own (orphans.py)."""
    return f"pvc-{deployment}-{secrets.token_hex(6)}"


def supervisor_redis_url(settings: Settings, user: str, password: str) -> str:
    """The Redis URL a container's supervisor uses: its own ACL user, the host as seen
    from inside the container."""
    base = urlsplit(settings.container_redis_url or settings.redis_url)
    host = base.hostname or "127.0.0.1"
    if not settings.container_redis_url and host in {"127.0.0.1", "localhost", "::1"}:
        host = "host.docker.internal"
    netloc = f"{user}:{password}@{host}" + (f":{base.port}" if base.port else "")
    return urlunsplit((base.scheme, netloc, base.path or "/0", "", ""))


class Containers:
    """Launch, pool, command and release preview containers."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        runtime: DockerRuntime,
        labels: Mapping[str, str] | None = None,
        counters: Counters = COUNTERS,
    ) -> None:
        self.settings = settings
        self.labels = dict(labels or {})  # extra labels on every container (tests mark theirs)
        self.redis = redis
        self.runtime = runtime
        self.counters = counters
        self.placement = Placement(settings, redis, runtime)
        self.gate = CreateGate(redis, settings.host_create_concurrency)
        self.reserved = ReservedPool(settings, redis)
        self._acquire = redis.register_script(_ACQUIRE)
        self._add = redis.register_script(_ADD)
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
                        key=lambda s: -s.free,
                    )
                if not chosen:
                    if error is not None:
                        raise error
                    raise ContainerError(_no_room(states))
                target, cid = chosen[0], new_cid(self.settings.deployment)
                # Registered before Docker knows it: the orphan sweep never mistakes it
                # for a stranger, and the host's accounting counts it while it is created.
                registered = await self.placement.register(
                    target, cid, _record(cid, target.name, image_id, role)
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
        s = self.settings
        env = {
            "PREVIEW_CONTAINER_ID": cid,
            "PREVIEW_SUPERVISOR_REDIS_URL": supervisor_redis_url(s, cid, password),
            "PREVIEW_HEARTBEAT_INTERVAL": str(s.heartbeat_interval),
            "PREVIEW_HEARTBEAT_TTL": str(s.heartbeat_ttl),
            "PREVIEW_DEV_PORT": str(s.dev_port),
            "PREVIEW_MAX_PORTS": str(s.max_ports),
            "PREVIEW_CACHE_MAX_BYTES": str(s.cache_max_bytes),
            "PREVIEW_CACHE_ZSTD_LEVEL": str(s.cache_zstd_level),
            "PREVIEW_CACHE_ZSTD_THREADS": str(s.cache_zstd_threads),
            "PREVIEW_CONTAINER_DISK_MB": str(s.container_disk_mb),
            **supervisor_sentinel_env(s),
        }
        if s.sentry_dsn:
            env["PREVIEW_SENTRY_DSN"] = s.sentry_dsn
            env["PREVIEW_SENTRY_ENVIRONMENT"] = s.sentry_environment
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

    async def pop_pooled(self, user: str, owner: str = "") -> Assigned | None:
        """Take a warm container atomically: one of `user`'s reserved ones (that of the
        project of affinity key `owner` first), else a never-used one of the general
        pool; None when there is neither. One Redis round trip, no Docker call."""
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
            ],
        )
        if popped is None:
            return None
        cid, host, address, how = (text(v) for v in popped)
        return Assigned(cid, host, address, from_pool=True, reserved=how == "reserved")

    async def acquire(self, user: str, owner: str = "") -> Assigned:
        """A warm container for `user` (see ``pop_pooled``), or a new one when there is
        none. When the hosts are full, another user's reserved container is destroyed to
        make room: reserved ones only save a reset user a start, a fresh start needs one."""
        pooled = await self.pop_pooled(user, owner)
        if pooled is not None:
            return pooled
        log.info("pool empty: creating a container for a start")  # alerted as pool_depleted
        try:
            try:
                info = await self.launch(role="session")
            except (DockerRuntimeError, ContainerError) as exc:
                if not await self.hosts_full() or not await self.evict_reserved(
                    1, f"room for a start: {exc}"
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

    # --- commands -----------------------------------------------------------------------

    async def submit(self, cid: str, command: Command, blob: bytes | None = None) -> None:
        """Queue a command; the supervisor picks it up even if it is still starting."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if blob is not None:
                pipe.set(keys.command_blob(cid, command.id), blob, ex=keys.COMMAND_BLOB_TTL)
            pipe.xadd(
                keys.commands(cid),
                cast("dict[Any, Any]", command.to_fields()),
                maxlen=keys.COMMANDS_MAXLEN,
                approximate=True,
            )
            await pipe.execute()

    async def send(
        self, cid: str, command: Command, blob: bytes | None = None, timeout: float = 30.0
    ) -> CommandResult:
        """Queue a command and wait for its acknowledgement."""
        await self.submit(cid, command, blob)
        return await self.result(cid, command.id, timeout)

    async def result(self, cid: str, command_id: str, timeout: float = 30.0) -> CommandResult:
        # A dedicated connection: BLPOP holds it for the whole wait.
        reply = await self.redis.blpop([keys.command_result(cid, command_id)], timeout=timeout)
        if reply is None:
            raise ContainerError(f"container {cid} did not answer within {timeout:.0f}s")
        try:
            return CommandResult.from_json(reply[1])
        except MessageError as exc:
            raise ContainerError(f"container {cid} sent a bad result: {exc}") from None

    async def events_cursor(self, cid: str) -> str:
        """The stream id after which events of a session starting now will appear."""
        last = await self.redis.xrevrange(keys.events(cid), count=1)
        return text(last[0][0]) if last else "0-0"

    # --- release ------------------------------------------------------------------------

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


def _record(cid: str, host: str, image_id: str, role: str) -> dict[str, str]:
    return {
        "cid": cid,
        "host": host,
        "image": image_id,
        "state": "creating",
        "role": role,
        "created_at": repr(time.time()),
        "project": "",
        "served": "0",
    }


def _no_room(states: list[HostState]) -> str:
    if not states or not any(s.up and not s.drained for s in states):
        down = ", ".join(f"{s.name} ({s.reason or 'down'})" for s in states)
        return f"no Docker host is up (or all are drained): {down}"
    return "every Docker host is full: " + ", ".join(
        f"{s.name} {s.used}/{s.capacity}" for s in states if s.up and not s.drained
    )
