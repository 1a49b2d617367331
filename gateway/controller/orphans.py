"""Orphans both ways, swept by the leading controller every PREVIEW_ORPHAN_INTERVAL and
on a Docker host's return.

- A container with our labels that Redis does not know (its launcher died, or its host
  was down and its record was dropped) is removed. A container is registered in Redis
  before Docker creates it, so "not registered" never means "still being created".
- A container record whose container no longer exists on its (reachable) host is
  dropped, and a session using it fails ("container is gone").
- A Redis ACL user named like a container without a record is deleted.
- A container stuck `assigned` with no session using it (a start died between taking it
  and attaching it), or stuck `releasing` (a release died), is released or destroyed.

Only containers carrying every label this deployment adds (PREVIEW_DEPLOYMENT,
PREVIEW_CONTAINER_LABELS, a test run's label) are candidates, and only ACL users named
for this deployment (``pvc-{deployment}-{hex}``): several deployments may share an
engine, and Redis servers hold users of every database.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import (
    LABEL_CID,
    LABEL_DEPLOYMENT,
    ContainerInfo,
    DockerRuntimeError,
)
from gateway.observability.counters import decision
from gateway.sessions.endings import Endings
from gateway.sessions.store import Session
from shared import keys
from shared.redis_types import raw_command, record, text

log = logging.getLogger(__name__)


class OrphanSweeper:
    def __init__(self, redis: Redis, containers: Containers, endings: Endings) -> None:
        self.redis = redis
        self.containers = containers
        self.endings = endings
        self.settings = containers.settings
        labels = dict(label.split("=", 1) for label in self.settings.container_labels)
        self.labels = {**labels, **containers.labels, LABEL_DEPLOYMENT: self.settings.deployment}
        # Exactly gateway.containers.launch.new_cid's names: a prefix would also match
        # deployment "a-b"'s users for deployment "a".
        self.own_user = re.compile(rf"pvc-{re.escape(self.settings.deployment)}-[0-9a-f]{{12}}")

    def ours(self, info: ContainerInfo) -> bool:
        return all(info.labels.get(k) == v for k, v in self.labels.items())

    async def sweep(self, hosts: Iterable[str] | None = None) -> int:
        """One sweep of `hosts` (default: every host that is up); the number cleaned."""
        states = await self.containers.placement.states()
        wanted = set(hosts) if hosts is not None else {s.name for s in states if s.up}
        cleaned = 0
        for name in sorted(wanted):
            try:
                listed = await self.containers.runtime.get(name).list_containers()
            except DockerRuntimeError as exc:
                log.warning("orphan sweep skipped host %s: %s", name, exc)
                continue
            cleaned += await self._strangers(name, listed)
            cleaned += await self._vanished(name, {i.labels.get(LABEL_CID, i.cid) for i in listed})
        cleaned += await self._acl_users()
        cleaned += await self._stuck()
        return cleaned

    async def _strangers(self, host: str, listed: list[ContainerInfo]) -> int:
        """Our containers on `host` that Redis does not know."""
        candidates = [i for i in listed if self.ours(i)]
        if not candidates:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for info in candidates:
                pipe.sismember(keys.CONTAINERS, info.cid)
            known = await pipe.execute()
        removed = 0
        for info, is_known in zip(candidates, known, strict=True):
            if is_known:
                continue
            try:
                await self.containers.runtime.get(host).remove(info.cid)
            except DockerRuntimeError as exc:
                log.warning("orphan %s not removed: %s", info.cid, exc)
                continue
            await raw_command(self.redis, "ACL", "DELUSER", info.cid)
            decision(
                log, "container_destroyed", "orphan", "unknown to Redis", cid=info.cid, host=host
            )
            removed += 1
        return removed

    async def _vanished(self, host: str, present: set[str]) -> int:
        """Records of containers on `host` that Docker no longer has."""
        cids = [text(c) for c in await self.redis.smembers(keys.host_containers(host))]
        now = time.time()
        dropped = 0
        for cid in cids:
            if cid in present:
                continue
            found = record(await self.redis.hgetall(keys.container(cid)))
            created = float(found.get("created_at") or 0)
            # A record is written just before Docker creates the container.
            if found.get("state") == "creating" and now - created < self.settings.pool_warm_timeout:
                continue
            if not await self._still_missing(host, cid):
                continue
            sid = found.get("session", "")
            session = await self.endings.previews.load(sid) if sid else None
            if session is not None and session.container == cid and session.state != "stopping":
                await self.endings.fail(
                    session, "container_gone", "the preview's container is gone", container="forget"
                )
            await self.containers.forget(cid)
            decision(
                log, "container_forgotten", "vanished", "gone from its host", cid=cid, host=host
            )
            dropped += 1
        return dropped

    async def _still_missing(self, host: str, cid: str) -> bool:
        try:
            return await self.containers.runtime.get(host).inspect(cid) is None
        except DockerRuntimeError:
            return False

    async def _acl_users(self) -> int:
        users = [text(u) for u in await raw_command(self.redis, "ACL", "USERS")]
        cids = [u for u in users if self.own_user.fullmatch(u)]
        if not cids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.sismember(keys.CONTAINERS, cid)
            known = await pipe.execute()
        # Registration comes before the user is created and its removal after the user's,
        # so a user without a registered container is left over.
        stale = [cid for cid, is_known in zip(cids, known, strict=True) if not is_known]
        for cid in stale:
            await raw_command(self.redis, "ACL", "DELUSER", cid)
        if stale:
            decision(log, "acl_users_deleted", "orphan", "no container", count=len(stale))
        return len(stale)

    async def _stuck(self) -> int:
        """Containers `assigned` that no session uses, or `releasing` for too long."""
        now = time.time()
        grace = self.settings.pool_warm_timeout
        fixed = 0
        for cid, found in (await self.containers.records()).items():
            state = found.get("state")
            if state == "releasing" and now - float(found.get("releasing_at") or 0) > grace:
                await self.containers.destroy(cid, "its release never finished", "stuck")
                fixed += 1
            elif state == "assigned" and now - float(found.get("assigned_at") or 0) > grace:
                sid = found.get("session", "")
                session = await self._session(sid)
                if session is None or session.container != cid:
                    fixed += 1
                    decision(log, "container_reclaimed", "abandoned", "no session uses it", cid=cid)
                    # Reserved for the user the acquisition recorded (no user: destroyed);
                    # the session it was given to, if any: its reset must name it.
                    await self.containers.release(cid, found.get("user", ""), session=sid or None)
        return fixed

    async def _session(self, sid: str) -> Session | None:
        if not sid:
            return None
        found = record(await self.redis.hgetall(keys.session(sid)))
        return Session.from_record(found) if found.get("id") == sid else None
