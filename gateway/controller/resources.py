"""Resource rules from the supervisor's numbers, for containers serving a session.

Memory over 90% of the limit: restart the dev server (leaks and runaway watchers are
the usual cause); still over PREVIEW_RESOURCE_GRACE later: recycle (the session fails
saying why, the container is destroyed). Disk over 85% of the container's bound (as the
supervisor reports it: all the preview wrote, anywhere; the kernel refuses writes at the
bound itself): clean build and package-manager caches; still over later: recycle. When a
number is back under, the rule starts afresh. What was done and when is kept on the
container record (``mem_action_at``, ``disk_action_at``), so a new leader continues, not
restarts.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import DockerRuntimeError
from gateway.containers.release import DISK_FULL, disk_bound
from gateway.observability.counters import decision
from gateway.sessions.endings import Endings
from gateway.sessions.store import Session
from shared import keys
from shared.messages import Command, Heartbeat
from shared.settings import Settings

log = logging.getLogger(__name__)

MEMORY_LIMIT = 0.90
# Safe to delete under a running dev server: tools rebuild them. Not node_modules/.vite:
# Vite serves its pre-bundled dependencies from there.
CACHE_DIRS = (
    "/workspace/node_modules/.cache",
    "/workspace/.next/cache",
    "/workspace/.parcel-cache",
    "/workspace/.turbo",
    "/workspace/.angular/cache",
    "/workspace/.nuxt/cache",
    "/home/app/.npm/_cacache",
    "/home/app/.cache",
    "/home/app/.local/share/pnpm/store",
)
CLEAN_TIMEOUT = 60.0
MIB = 1 << 20


class ResourceRules:
    def __init__(
        self, settings: Settings, redis: Redis, containers: Containers, endings: Endings
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.containers = containers
        self.endings = endings

    async def check(
        self, session: Session, heartbeat: Heartbeat, found: dict[str, str], now: float
    ) -> None:
        """Apply both rules to one session's container (its heartbeat is for the session)."""
        if heartbeat.memory_limit:
            used, limit = heartbeat.memory_used, heartbeat.memory_limit
            summary = f"{used // MIB} of {limit // MIB} MiB memory"
            if await self._rule(session, found, now, "mem", used > MEMORY_LIMIT * limit, summary):
                return
        bound = disk_bound(self.settings, heartbeat)
        if not bound:
            return
        summary = f"{heartbeat.disk_used // MIB} of {bound // MIB} MiB disk"
        over = heartbeat.disk_used > DISK_FULL * bound
        await self._rule(session, found, now, "disk", over, summary)

    async def _rule(
        self,
        session: Session,
        found: dict[str, str],
        now: float,
        kind: str,
        over: bool,
        summary: str,
    ) -> bool:
        """One rule's step; True when the container was recycled."""
        cid = session.container
        field = f"{kind}_action_at"
        acted = float(found.get(field) or 0)
        if not over:
            if acted and now - acted > self.settings.resource_grace:
                await self.redis.hdel(keys.container(cid), field)
                decision(log, "resource_recovered", kind, summary, cid=cid, sid=session.id)
            return False
        if not acted:
            await self.redis.hset(keys.container(cid), field, repr(now))
            if kind == "mem":
                await self.containers.submit(cid, Command("restart", {}, session_id=session.id))
                decision(log, "resource_action", "memory_restart", summary, cid=cid, sid=session.id)
            else:
                await self.clean_caches(cid, found.get("host", ""))
                decision(log, "resource_action", "disk_clean", summary, cid=cid, sid=session.id)
            return False
        if now - acted <= self.settings.resource_grace:
            return False
        if kind == "mem":
            code = "memory"
            reason = (
                f"the preview kept using over {MEMORY_LIMIT:.0%} of its memory limit "
                f"({summary}) after its dev server was restarted"
            )
        else:
            code = "disk"
            reason = (
                f"the preview kept using over {DISK_FULL:.0%} of its disk ({summary}, "
                "counting files written anywhere: /workspace, /tmp, /var/tmp, the home "
                "directory) after caches were cleaned; make the project write less"
            )
        await self.endings.fail(session, code, reason)
        return True

    async def clean_caches(self, cid: str, host_name: str) -> None:
        """Delete build and package-manager caches, as the app user (whose files they are;
        root would follow nothing more, but there is no reason to be root)."""
        host = self.containers.runtime.hosts.get(host_name)
        if host is None:
            return
        try:
            code, output = await host.exec(
                cid, ["rm", "-rf", "--", *CACHE_DIRS], user="app", timeout=CLEAN_TIMEOUT
            )
        except DockerRuntimeError as exc:
            log.warning("cache clean-up failed cid=%s: %s", cid, exc)
            return
        if code != 0:
            log.warning("cache clean-up cid=%s exited %d: %s", cid, code, output[-500:])
