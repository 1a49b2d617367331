"""Preview containers as the gateway and controller see them: launch, pool, command, release.

A container is launched with its own Redis ACL user (limited to ``pv:c:{cid}:*``) whose
password only its supervisor receives. Warm containers wait in a per-image Redis list;
acquiring one is a single Lua script, so no two gateways can hand out the same container.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.docker_runtime import ContainerInfo, ContainerSpec, DockerHost, DockerRuntime
from shared import keys
from shared.acl import container_acl_rules
from shared.messages import Command, CommandResult, Heartbeat, MessageError
from shared.redis_types import raw_command, record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

IMAGE_ID_TTL = 30.0  # seconds: how soon a rebuilt image retires the warm pool
MAX_SESSIONS_PER_CONTAINER = 50  # then it is destroyed rather than reused

# Pop a warm container: the newest one that last served this project (its node_modules
# are kept), else the oldest; skip entries whose heartbeat is gone (dead while pooled).
# KEYS[1] = pool list; ARGV[1] = project id; ARGV[2], ARGV[3] = the container record and
# heartbeat keys with "{cid}" in place of the id (built by shared/keys.py); ARGV[4] = now.
_ACQUIRE = """
local function key(template, cid) return (string.gsub(template, '{cid}', cid)) end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local chosen = nil
for i = 1, #entries do
  local cid = entries[i]
  if redis.call('EXISTS', key(ARGV[3], cid)) == 1 then
    if ARGV[1] ~= '' and redis.call('HGET', key(ARGV[2], cid), 'project') == ARGV[1] then
      chosen = cid
      break
    end
  end
end
if not chosen then
  for i = #entries, 1, -1 do
    local cid = entries[i]
    if redis.call('EXISTS', key(ARGV[3], cid)) == 1 then
      chosen = cid
      break
    end
  end
end
if not chosen then return nil end
redis.call('LREM', KEYS[1], 1, chosen)
redis.call('HSET', key(ARGV[2], chosen), 'state', 'assigned', 'assigned_at', ARGV[4])
return chosen
"""


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


def new_cid() -> str:
    return "pvc-" + secrets.token_hex(6)


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
    ) -> None:
        self.settings = settings
        self.labels = dict(labels or {})  # extra labels on every container (tests mark theirs)
        self.redis = redis
        self.runtime = runtime
        self._acquire = redis.register_script(_ACQUIRE)
        self._image_id: tuple[float, str] | None = None

    # --- images and hosts ---------------------------------------------------------------

    async def image_id(self) -> str:
        """The current image's content id, cached briefly (it keys the pool)."""
        now = time.monotonic()
        if self._image_id is None or now - self._image_id[0] > IMAGE_ID_TTL:
            image_id = await self.runtime.default.image_id(self.settings.image)
            self._image_id = (now, image_id)
        return self._image_id[1]

    def pick_host(self) -> DockerHost:
        return self.runtime.default

    # --- launch and destroy -------------------------------------------------------------

    async def launch(self, host: DockerHost | None = None, role: str = "pool") -> ContainerInfo:
        """Create a container with its own Redis user and register it (state `warming`)."""
        host = host or self.pick_host()
        cid = new_cid()
        password = secrets.token_urlsafe(24)
        image_id = await self.image_id()
        await raw_command(
            self.redis, "ACL", "SETUSER", cid, "reset", *container_acl_rules(cid), f">{password}"
        )
        s = self.settings
        env = {
            "PREVIEW_CONTAINER_ID": cid,
            "PREVIEW_SUPERVISOR_REDIS_URL": supervisor_redis_url(s, cid, password),
            "PREVIEW_HEARTBEAT_INTERVAL": str(s.heartbeat_interval),
            "PREVIEW_HEARTBEAT_TTL": str(s.heartbeat_ttl),
            "PREVIEW_DEV_PORT": str(s.dev_port),
        }
        spec = ContainerSpec(
            cid=cid, image=image_id, env=env, labels={**self.labels, "preview-gateway.role": role}
        )
        try:
            info = await host.create(spec)
        except BaseException:
            await raw_command(self.redis, "ACL", "DELUSER", cid)
            raise
        await self.redis.hset(
            keys.container(cid),
            mapping={
                "cid": cid,
                "host": host.name,
                "docker_id": info.docker_id,
                "address": info.address or "",
                "image": image_id,
                "state": "warming",
                "created_at": repr(time.time()),
                "project": "",
                "served": "0",
            },
        )
        await self.redis.sadd(keys.CONTAINERS, cid)
        return info

    async def destroy(self, cid: str, reason: str) -> None:
        """Remove the container, its Redis user and every key it had."""
        host_name = text(await self.redis.hget(keys.container(cid), "host"))
        host = self.runtime.hosts.get(host_name) if host_name else self.pick_host()
        if host is not None:
            await host.remove(cid)
        async for key in self.redis.scan_iter(match=keys.container_pattern(cid), count=200):
            await self.redis.delete(key)
        await self.redis.delete(keys.container(cid))
        await self.redis.srem(keys.CONTAINERS, cid)
        await raw_command(self.redis, "ACL", "DELUSER", cid)
        log.info("container destroyed cid=%s reason=%s", cid, reason)

    # --- the warm pool ------------------------------------------------------------------

    async def heartbeat(self, cid: str) -> Heartbeat | None:
        raw = await self.redis.get(keys.heartbeat(cid))
        if raw is None:
            return None
        try:
            return Heartbeat.from_json(raw)
        except MessageError:
            return None

    async def wait_idle(self, cid: str, timeout: float = 60.0) -> Heartbeat:
        """Wait until the container's supervisor reports `idle`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heartbeat = await self.heartbeat(cid)
            if heartbeat is not None and heartbeat.state == "idle":
                return heartbeat
            await asyncio.sleep(0.1)
        raise ContainerError(f"container {cid} did not report idle within {timeout:.0f}s")

    async def add_to_pool(self, cid: str, project_id: str = "") -> None:
        image = text(await self.redis.hget(keys.container(cid), "image"))
        await self.redis.hset(
            keys.container(cid), mapping={"state": "pooled", "project": project_id}
        )
        await self.redis.lpush(keys.pool(image), cid)

    async def pool_size(self) -> int:
        return int(await self.redis.llen(keys.pool(await self.image_id())))

    async def pop_pooled(self, project_id: str) -> Assigned | None:
        """Take a warm container atomically (same project first); None when none is left."""
        image_id = await self.image_id()
        popped = await self._acquire(
            keys=[keys.pool(image_id)],
            args=[project_id, keys.container("{cid}"), keys.heartbeat("{cid}"), repr(time.time())],
        )
        if popped is None:
            return None
        cid = text(popped)
        found = record(await self.redis.hgetall(keys.container(cid)))
        return Assigned(cid, found.get("host", ""), found.get("address", ""), from_pool=True)

    async def acquire(self, project_id: str) -> Assigned:
        """A warm container (same project first), or a new one when the pool is empty."""
        pooled = await self.pop_pooled(project_id)
        if pooled is not None:
            return pooled
        image_id = await self.image_id()
        log.warning("pool empty image=%s: creating a container for a start", image_id[:19])
        try:
            info = await self.launch(role="session")
        except Exception as exc:
            raise ContainerError(f"no container available: {exc}") from exc
        await self.redis.hset(keys.container(info.cid), "state", "assigned")
        return Assigned(info.cid, info.host, info.address or "", from_pool=False)

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

    async def release(self, cid: str, project_id: str | None, budget_bytes: int = 1 << 30) -> bool:
        """Reset the container and return it to the pool; destroy it if that fails.
        True when it went back to the pool."""
        found = record(await self.redis.hgetall(keys.container(cid)))
        if not found:
            return False
        served = int(found.get("served", "0")) + 1
        image_id = await self.image_id()
        reason = ""
        if found.get("image") != image_id:
            reason = "image was rebuilt"
        elif served >= MAX_SESSIONS_PER_CONTAINER:
            reason = f"served {served} sessions"
        else:
            try:
                result = await self.send(
                    cid,
                    Command(
                        "reset",
                        {"keep_node_modules": True, "node_modules_budget_bytes": budget_bytes},
                    ),
                    timeout=60,
                )
                if not result.ok:
                    reason = f"reset failed: {result.error}"
            except (ContainerError, RedisError) as exc:
                reason = f"reset failed: {exc}"
        if reason:
            await self.destroy(cid, reason)
            return False
        await self.redis.hset(keys.container(cid), "served", str(served))
        await self.add_to_pool(cid, project_id or "")
        log.info("container released cid=%s project=%s", cid, project_id)
        return True
