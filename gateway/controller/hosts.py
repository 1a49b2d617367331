"""Docker host health, run by the leading controller: down after failing checks for
PREVIEW_HOST_DOWN_AFTER, up again as soon as one answers.

Each pass pings every host (and records its memory and CPUs for placement every
minute). A host whose engine cannot hold containers to PREVIEW_CONTAINER_DISK_MB counts
as failing too, with that reason. When a host goes down its sessions fail with a reason
naming the host, and everything Redis knows about its containers (pooled ones included)
is dropped, so the pool refills elsewhere and no acquisition hands out a container
nobody can reach. When it answers again it is marked up and swept for orphans: its old
containers, no longer known to Redis, are removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import DockerHost, DockerRuntimeError
from gateway.observability.counters import decision
from gateway.sessions.endings import Endings
from gateway.sessions.store import Session
from shared import keys
from shared.redis_types import record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

PING_TIMEOUT = 3.0
SIZE_REFRESH = 60.0  # seconds between engine size updates of a host that is up
UNREACHABLE = "unreachable"
CANNOT_LIMIT_DISK = "cannot_limit_disk"  # see docker_runtime.storage_problem


class HostMonitor:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        containers: Containers,
        endings: Endings,
        on_up: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.containers = containers
        self.endings = endings
        self.on_up = on_up
        self._failing_since: dict[str, float] = {}
        self._sized: dict[str, float] = {}

    async def check(self) -> dict[str, str | None]:
        """Check every host; name → None when up, else why it is not."""
        hosts = list(self.containers.runtime.hosts.values())
        errors = await asyncio.gather(*(self._probe(h) for h in hosts))
        for host, (error, code) in zip(hosts, errors, strict=True):
            state = text(await self.redis.hget(keys.docker_host(host.name), "state"), "up")
            if error is None:
                self._failing_since.pop(host.name, None)
                if state == "down":
                    await self.mark_up(host.name)
                continue
            since = self._failing_since.setdefault(host.name, time.monotonic())
            if state != "down" and time.monotonic() - since >= self.settings.host_down_after:
                await self.mark_down(host.name, error, code)
        return {h.name: e for h, (e, _) in zip(hosts, errors, strict=True)}

    async def _probe(self, host: DockerHost) -> tuple[str | None, str]:
        """(why the host cannot take containers or None, reason code)."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that coincides with its result, and the controller would not stop.
            async with asyncio.timeout(PING_TIMEOUT):
                await host.ping()
            # An engine that cannot bound a container's disk is refused like one that
            # does not answer, and says why (host state, logs, /readyz).
            async with asyncio.timeout(PING_TIMEOUT):
                problem = await host.storage_problem()
            if problem is not None:
                return problem, CANNOT_LIMIT_DISK
            if time.monotonic() - self._sized.get(host.name, -SIZE_REFRESH) >= SIZE_REFRESH:
                async with asyncio.timeout(PING_TIMEOUT):
                    info = await host.info()
                await self.redis.hset(
                    keys.docker_host(host.name),
                    mapping={
                        "mem_total": str(int(info.get("MemTotal") or 0)),
                        "ncpu": str(int(info.get("NCPU") or 0)),
                    },
                )
                self._sized[host.name] = time.monotonic()
        except (TimeoutError, DockerRuntimeError) as exc:
            return str(exc) or "timed out", UNREACHABLE
        await self.redis.hset(keys.docker_host(host.name), "checked_at", repr(time.time()))
        return None, ""

    async def mark_down(self, name: str, error: str, code: str = UNREACHABLE) -> None:
        await self.redis.hset(
            keys.docker_host(name),
            mapping={"state": "down", "since": repr(time.time()), "reason": error},
        )
        decision(log, "host_down", code, error, level=logging.ERROR, host=name)
        # The user sees the reason: not the host's name (an engine's name is its address)
        # nor the engine's error; both are in the decision logged above.
        if code == CANNOT_LIMIT_DISK:
            reason = "the Docker host running this preview cannot limit its disk"
        else:
            reason = "the Docker host running this preview is unreachable"
        cids = sorted(text(c) for c in await self.redis.smembers(keys.host_containers(name)))
        for cid in cids:
            found = record(await self.redis.hgetall(keys.container(cid)))
            session = await self._session(found.get("session", ""), cid)
            if session is not None:
                await self.endings.fail(session, "host_down", reason, container="forget")
            else:
                await self.containers.forget(cid)
                decision(log, "container_forgotten", "host_down", error, cid=cid, host=name)
        # Sessions whose start had not attached the container yet are caught by the
        # reaper (it fails every session placed on a host that is down).

    async def mark_up(self, name: str) -> None:
        await self.redis.hset(
            keys.docker_host(name),
            mapping={"state": "up", "since": repr(time.time()), "reason": ""},
        )
        decision(log, "host_up", "answered", "answers again", host=name)
        if self.on_up is not None:
            await self.on_up(name)

    async def _session(self, sid: str, cid: str) -> Session | None:
        if not sid:
            return None
        found = record(await self.redis.hgetall(keys.session(sid)))
        if found.get("id") != sid:
            return None
        session = Session.from_record(found)
        return session if session.container == cid and session.state != "stopping" else None
