"""Warm pool upkeep, run by the leading controller: keep enough idle containers ready.

Acquiring is the gateway's job (`Containers.pop_pooled`, one Lua script). Here, each
tick: retire pools of older image builds, health-check the pooled (heartbeat fresh and
`idle`, every PREVIEW_POOL_HEALTH_INTERVAL; a general-pool entry that a user ever had is
dropped too), destroy reserved containers (gateway/containers/reserved.py) past their
PREVIEW_POOL_AFFINITY_TTL, of an older image or unhealthy, adopt or drop warming
containers nobody waits for, compute the autoscaled target, launch what is missing in
parallel (the per-host creation gate caps them and lets user starts go first; reserved
containers are evicted, oldest first, when the hosts have no room for them), and trim a
surplus. The general pool is only ever refilled with fresh containers.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from gateway.background import Background
from gateway.containers.containers import ContainerError, Containers
from gateway.containers.docker_runtime import DockerRuntimeError
from gateway.controller.autoscale import Autoscaler
from gateway.controller.outage import OutageWatch
from gateway.observability.counters import decision
from shared import keys
from shared.messages import Heartbeat
from shared.redis_types import record, text

log = logging.getLogger(__name__)

SURPLUS_KEEP = 300.0  # seconds a pooled container may sit above the target
WARMING = ("creating", "warming")


class PoolKeeper:
    def __init__(
        self,
        containers: Containers,
        autoscaler: Autoscaler | None = None,
        outage: OutageWatch | None = None,
    ) -> None:
        self.containers = containers
        self.outage = outage  # the reaper's: no heartbeat verdicts just after an outage
        self.settings = containers.settings
        self.redis = containers.redis
        self.autoscaler = autoscaler or Autoscaler(self.settings, self.redis)
        self.target = self.settings.pool_min
        self.launching = 0  # launches under way whose container may not be registered yet
        self._mine: set[str] = set()  # warming containers our own tasks wait for
        self.background = Background()  # launches under way
        self._checked = 0.0  # monotonic time of the last health check
        self._no_room = False

    async def tick(self) -> None:
        """One upkeep pass."""
        image_id = await self.containers.image_id()
        await self._retire_old_images(image_id)
        records = await self.containers.records()
        now = time.monotonic()
        full = now - self._checked >= self.settings.pool_health_interval
        if full:
            self._checked = now
        await self.check_health(image_id, records, full)
        await self.check_reserved(image_id, records, full)
        warming = await self._adopt_warming(image_id, records)
        await self._scale(image_id, warming)
        await self._trim(image_id, records)

    # --- health -------------------------------------------------------------------------

    async def _retire_old_images(self, image_id: str) -> None:
        async for key in self.redis.scan_iter(match=keys.pool("*"), count=100):
            if text(key) == keys.pool(image_id):
                continue
            for raw in await self.redis.lrange(key, 0, -1):
                await self._drop(key, text(raw), "image_rebuilt", "image was rebuilt")

    async def check_health(
        self, image_id: str, records: dict[str, dict[str, str]], full: bool = True
    ) -> None:
        """Drop pooled containers that do not heartbeat fresh and `idle`, or whose record
        or host is gone: the pool never holds one it thinks is alive but is not.

        Not `full` (every pass between full checks): only those whose heartbeat key has
        expired, the ones acquisitions already skip as dead. Counted as pooled until the
        next full check, they held back their replacement for up to
        PREVIEW_POOL_HEALTH_INTERVAL (40 s, 2.7 x TTL, with the defaults in
        bench/bench_pool.py)."""
        key = keys.pool(image_id)
        cids = [text(c) for c in await self.redis.lrange(key, 0, -1)]
        for cid, reason in (await self._unhealthy(cids, records, full)).items():
            await self._drop(key, cid, "unhealthy", f"pooled container {reason}")

    async def check_reserved(
        self, image_id: str, records: dict[str, dict[str, str]], full: bool = True
    ) -> None:
        """Destroy reserved containers past their time, of an older image, or unhealthy
        (the same rules as the general pool's)."""
        doomed: dict[str, tuple[str, str]] = {}
        for cid in await self.containers.reserved.expired():
            doomed[cid] = ("reserved_expired", "its reservation for its last user expired")
        cids = await self.containers.reserved.all()
        # Read again: releases reserve containers all the time, many since `records`.
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hgetall(keys.container(cid))
            replies = await pipe.execute()
        records = {cid: record(r) for cid, r in zip(cids, replies, strict=True) if r}
        for cid in cids:
            found = records.get(cid)
            if found is not None and found.get("image") != image_id:
                doomed.setdefault(cid, ("image_rebuilt", "image was rebuilt"))
        for cid, reason in (await self._unhealthy(cids, records, full)).items():
            doomed.setdefault(cid, ("unhealthy", f"reserved container {reason}"))
        for cid, (code, reason) in doomed.items():
            # Only the one who takes it out of the sets destroys it: an acquirer may be first.
            if await self.containers.reserved.take(cid):
                await self.containers.destroy(cid, reason, code)

    async def _unhealthy(
        self, cids: list[str], records: dict[str, dict[str, str]], full: bool
    ) -> dict[str, str]:
        """Why each of these idle containers (general pool or reserved) must go, if so."""
        if not cids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.get(keys.heartbeat(cid))
            beats = await pipe.execute()
        now = time.time()
        trusted = self.outage is None or self.outage.heartbeats_trusted
        found_reasons: dict[str, str] = {}
        for cid, raw in zip(cids, beats, strict=True):
            reason = ""
            found = records.get(cid)
            if not trusted and found is not None:
                continue  # Redis was away: their supervisors are only now writing again
            if not full:
                # A container pooled since `records` was read has no record there yet.
                reason = "stopped heartbeating" if raw is None else ""
            elif found is None:
                reason = "its record is gone"
            elif found.get("state") == "pooled" and (
                found.get("user") or found.get("served", "0") != "0"
            ):
                # Pooled by older code after a session: never for anyone else.
                reason = f"ran user code (user {found.get('user') or 'unknown'})"
            elif raw is None:
                reason = "stopped heartbeating"
            else:
                heartbeat = Heartbeat.read(raw)
                if heartbeat is None or now - heartbeat.ts > self.settings.heartbeat_ttl:
                    reason = "heartbeat is stale"
                elif heartbeat.ts < float(found.get("pooled_at") or 0):
                    pass  # from before its reset: the next one tells
                elif heartbeat.state != "idle" or heartbeat.session_id:
                    reason = f"reports {heartbeat.state} for session {heartbeat.session_id}"
            if reason:
                found_reasons[cid] = reason
        return found_reasons

    async def _drop(self, pool_key: bytes | str, cid: str, code: str, reason: str) -> None:
        # Only the one who takes it out of the list destroys it: an acquirer may be first.
        if await self.redis.lrem(pool_key, 1, cid):
            await self.containers.destroy(cid, reason, code)

    async def _adopt_warming(self, image_id: str, records: dict[str, dict[str, str]]) -> int:
        """Pool containers warming for a previous leader: pooled once idle, destroyed
        when they never get there. Returns how many of the current image are warming."""
        warming = 0
        now = time.time()
        for cid, found in records.items():
            if found.get("state") not in WARMING or found.get("role", "pool") != "pool":
                continue
            if cid in self._mine:
                warming += found.get("image") == image_id
                continue
            heartbeat = await self.containers.heartbeat(cid)
            age = now - float(found.get("created_at") or 0)
            idle = heartbeat is not None and heartbeat.state == "idle"
            # "warming" is written as our own launch returns, so it is ours by then (_mine);
            # in "creating" it may still be one of our launches, so it is not adopted.
            if idle and found.get("state") == "warming" and found.get("image") == image_id:
                if await self.containers.add_to_pool(cid):
                    decision(log, "container_pooled", "adopted", "warmed by another", cid=cid)
            elif age > self.settings.pool_warm_timeout:
                await self.containers.destroy(cid, "never became idle", "never_idle")
            else:
                warming += found.get("image") == image_id
        return warming

    # --- size ---------------------------------------------------------------------------

    async def _scale(self, image_id: str, warming: int) -> None:
        target, demand = await self.autoscaler.target()
        if target != self.target:
            decision(
                log,
                "pool_scaled",
                "up" if target > self.target else "down",
                f"busiest burst {demand.peak} starts within {demand.replenish:.1f}s "
                f"(replenish time), recent rate {demand.rate * 60:.2f}/min",
                previous=self.target,
                target=target,
            )
            self.target = target
        pooled = int(await self.redis.llen(keys.pool(image_id)))
        # Our launches count twice for a moment (launching, then registered as warming):
        # that only delays a refill by a tick, where missing them would overshoot.
        missing = self.target - pooled - warming - self.launching
        if missing <= 0:
            return
        states = await self.containers.placement.states()
        room = sum(max(0, s.free) for s in states if s.up and not s.drained)
        if room < missing and any(s.up and not s.drained for s in states):
            # A fresh container serves anyone; a reserved one only its user's next start.
            reason = f"room for the general pool ({pooled} pooled < target {self.target})"
            if await self.containers.evict_reserved(missing - room, reason):
                states = await self.containers.placement.states()
                room = sum(max(0, s.free) for s in states if s.up and not s.drained)
        if room < missing and not self._no_room:
            log.warning("pool refill limited by host capacity: missing=%d room=%d", missing, room)
        self._no_room = room < missing
        launches = min(missing, room)
        if launches <= 0:
            return
        decision(
            log,
            "pool_refill",
            "launch",
            f"{pooled} pooled + {warming} warming < target {self.target}",
            launching=launches,
        )
        for _ in range(launches):
            self.launching += 1
            self.background.spawn(self._warm_one(), "warm pool container")

    async def _trim(self, image_id: str, records: dict[str, dict[str, str]]) -> None:
        """Above the max: the surplus goes. Above the target: what sat unused longer than
        SURPLUS_KEEP goes (demand that just ebbed may come back soon), oldest first."""
        key = keys.pool(image_id)
        cids = [text(c) for c in await self.redis.lrange(key, 0, -1)]
        over_max = len(cids) - self.settings.pool_max
        over_target = len(cids) - self.target
        if over_target <= 0:
            return
        now = time.time()

        def pooled_at(cid: str) -> float:
            return float(records.get(cid, {}).get("pooled_at") or 0)

        order = sorted(cids, key=pooled_at)
        stale = [c for c in order if now - pooled_at(c) > SURPLUS_KEEP]
        doomed = stale[:over_target]
        for cid in order:
            if len(doomed) >= over_max:
                break
            if cid not in doomed:
                doomed.append(cid)
        for cid in doomed:
            await self._drop(key, cid, "scale_down", f"pool above its target {self.target}")

    async def _warm_one(self) -> None:
        began = time.monotonic()
        cid = ""
        try:
            info = await self.containers.launch()
            cid = info.cid
            self._mine.add(cid)
            self.launching -= 1
            try:
                await self.containers.wait_idle(cid, timeout=self.settings.pool_warm_timeout)
            except ContainerError:
                await self.containers.destroy(cid, "never became idle", "never_idle")
                return
            state = text(await self.redis.hget(keys.container(cid), "state"))
            if state != "warming":  # destroyed meanwhile (host down, image retired)
                return
            await self.containers.add_to_pool(cid)
            await self.autoscaler.record_replenish(time.monotonic() - began)
            log.info("container pooled cid=%s in %.1fs", cid, time.monotonic() - began)
        except (DockerRuntimeError, ContainerError, RedisError, OSError) as exc:
            log.error("pool launch failed: %s", exc)  # (a Redis restart closes connections)
        finally:
            if not cid:
                self.launching -= 1
            self._mine.discard(cid)

    async def close(self) -> None:
        await self.background.close(0)  # a launch is not waited for: cancelled
