"""The heartbeat: every interval a ``Heartbeat`` goes to a key with a TTL (gone when we
are) and to a capped stream for history, in one transaction. While the dev server sleeps
the interval is PREVIEW_SLEEP_HEARTBEAT_INTERVAL and the TTL three of those (the reaper
judges a sleeping heartbeat's age by that TTL too); falling asleep or waking beats at once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path

from redis.exceptions import RedisError

from shared import keys
from shared.messages import Heartbeat
from shared.periodic import next_due
from supervisor.cgroup import CgroupSample, CpuMeter, disk_total, tree_size
from supervisor.context import Context
from supervisor.diskquota import BtrfsQuota, DiskSample, statvfs_sample
from supervisor.ports import PortWatch, user_ports
from supervisor.relay import PortRelay

log = logging.getLogger(__name__)

# Where the kernel counts the container's disk (btrfs qgroups), every beat reads it: a few
# sysfs files. Otherwise the fallback walks the workspace, which costs tens of
# milliseconds per 10k files of node_modules: not every beat, and not after every editor
# save either.
DISK_REFRESH = 60.0
DISK_REFRESH_CHANGED = 10.0


class DiskMeter:
    """The container's disk use and its bound, as the heartbeat reports them.

    - btrfs with quotas (the engine scripts/setup starts): the container's qgroup, which
      counts what it wrote anywhere and is the limit the kernel enforces (diskquota).
    - another driver holding the container to PREVIEW_CONTAINER_DISK_MB (overlay2 on XFS
      with project quotas, zfs): its root filesystem's own use and size.
    - no bound (PREVIEW_CONTAINER_DISK_MB=0): the workspace's size, walked now and then,
      and its filesystem's size.
    """

    def __init__(self, workspace: Path, bounded: bool, root: Path = Path("/")) -> None:
        self.workspace = workspace
        self.bounded = bounded
        self.root = root
        self.quota = BtrfsQuota.find(root)
        self.sample = DiskSample(0, 0)
        self._measured = -DISK_REFRESH
        self._consistent = True

    def _check_consistent(self, quota: BtrfsQuota) -> None:
        consistent = quota.consistent()
        if not consistent and self._consistent:
            log.error(
                "btrfs quotas on this host are inconsistent: the kernel enforces no "
                "PREVIEW_CONTAINER_DISK_MB bound (run scripts/btrfs-quota on the engine's "
                "data root for simple quotas)"
            )
        self._consistent = consistent

    async def read(self, ctx: Context) -> DiskSample:
        if self.quota is not None:
            try:
                self.sample = self.quota.sample()
                self._check_consistent(self.quota)
                return self.sample
            except OSError as exc:
                log.warning("disk quota not readable any more, falling back: %s", exc)
                self.quota = None
        if self.bounded:
            self.sample = statvfs_sample(self.root)
            return self.sample
        now = time.monotonic()
        due = DISK_REFRESH_CHANGED if ctx.disk_dirty else DISK_REFRESH
        if now - self._measured >= due:
            ctx.disk_dirty = False
            self._measured = now
            used = await asyncio.to_thread(tree_size, self.workspace)
            self.sample = DiskSample(used, disk_total(self.workspace))
        return self.sample


async def extra_ports(ctx: Context, watch: PortWatch) -> list[int]:
    """The user's other listening ports the gateway can reach (none between sessions)."""
    uid = ctx.user.uid
    if uid is None or ctx.devserver.pid is None or ctx.config.max_ports <= 0:
        return await watch.update([])
    main = {ctx.devserver.port or ctx.config.dev_port}
    found = await asyncio.to_thread(user_ports, uid, main, ctx.config.max_ports)
    return await watch.update(found)


def sample(
    ctx: Context,
    cpu: CpuMeter,
    disk: DiskSample,
    ports: list[int] | None = None,
    cg: CgroupSample | None = None,
) -> Heartbeat:
    cg = cg or ctx.cgroup.sample()
    now = time.time()
    dev = ctx.devserver
    return Heartbeat(
        container_id=ctx.config.container_id,
        ts=now,
        session_id=ctx.session.session_id,
        state=dev.state,
        cpu_percent=cpu.update(cg.cpu_usage_ns, time.monotonic()),
        memory_used=cg.memory_used,
        memory_limit=cg.memory_limit,
        disk_used=disk.used,
        disk_total=disk.total,
        pid=dev.pid,
        port=dev.port,
        restarts=dev.restarts,
        last_error=dev.last_error,
        project_id=ctx.session.project_id,
        node_modules_key=ctx.session.node_modules_key,
        cpu_limit=cg.cpu_limit,
        ports=ports or [],
        address=ctx.devserver.external_address if ports else None,
    )


async def publish(ctx: Context, heartbeat: Heartbeat, ttl: float) -> None:
    cid = ctx.config.container_id
    payload = heartbeat.to_json()
    px = int(ttl * 1000)
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.heartbeat(cid), payload, px=px)
        pipe.xadd(
            keys.heartbeat_history(cid),
            {keys.HEARTBEAT_HISTORY_FIELD: payload},
            maxlen=keys.HEARTBEAT_HISTORY_LEN,
            approximate=True,
        )
        await pipe.execute()


async def run(ctx: Context) -> None:
    """Beat until cancelled; a Redis outage is logged once and then waited out."""
    config = ctx.config
    cpu, disk = CpuMeter(), DiskMeter(config.workspace, config.container_disk_mb > 0)
    watch = PortWatch(ctx.devserver.external_address)
    relay = PortRelay(config.relay_secret, lambda: watch.targets) if config.relay_secret else None
    try:
        if relay is not None:
            try:
                await relay.start()
            except OSError as exc:  # the other ports then work only where routed directly
                log.warning("port relay not started: %s", exc)
        await _beat(ctx, cpu, disk, watch)
    finally:
        if relay is not None:
            await relay.close()
        await watch.close()


async def _beat(ctx: Context, cpu: CpuMeter, disk: DiskMeter, watch: PortWatch) -> None:
    config = ctx.config
    failing = False
    ports: list[int] = []
    cg: CgroupSample | None = None
    loop = asyncio.get_running_loop()
    changed = ctx.devserver.sleep_changed
    due = loop.time()
    while True:
        await _until(changed, due - loop.time())
        if changed.is_set():
            # Fell asleep or woke: beat now, so the key's TTL and the state it reports
            # follow at once (a woken preview beats at the normal pace from here on).
            changed.clear()
            due = loop.time()
        asleep = ctx.devserver.state == "sleeping"
        try:
            # While the dev server is frozen nothing of it can open a port, write a file
            # or change its memory: the last scan and samples still hold, and a sleeping
            # preview's container costs only this beat (the reaper and the controller
            # need it) and one read of its CPU time.
            if not asleep or cg is None:
                ports = await extra_ports(ctx, watch)
                await disk.read(ctx)
                cg = ctx.cgroup.sample()
            else:
                cg = dataclasses.replace(cg, cpu_usage_ns=ctx.cgroup.cpu_usage_ns())
            ttl = config.sleep_heartbeat_ttl if asleep else config.heartbeat_ttl
            await publish(ctx, sample(ctx, cpu, disk.sample, ports, cg), ttl)
            if failing:
                log.info("heartbeat written again")
            failing = False
        except (RedisError, OSError) as exc:
            if not failing:
                log.warning("heartbeat not written: %s", exc)
            failing = True
        # Each beat while asleep is most of what a frozen preview costs: few of them. A
        # failed one is tried again at the normal pace (after an outage the reaper waits
        # only about two normal TTLs for heartbeats to come back).
        slow = asleep and not failing
        interval = config.sleep_heartbeat_interval if slow else config.heartbeat_interval
        due = next_due(due, loop.time(), interval)


async def _until(event: asyncio.Event, delay: float) -> None:
    """Wait `delay` seconds, or less if `event` is set."""
    if delay <= 0 or event.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await event.wait()


async def clear(ctx: Context) -> None:
    """Delete the heartbeat key: we are going away on purpose."""
    await ctx.redis.delete(keys.heartbeat(ctx.config.container_id))
