"""Writes preview records from the lifecycle hooks, and never loses one.

Hooks call :meth:`Recorder.start_seen` (after events were folded), :meth:`start_refused`
(no container could be had) and :meth:`stopped`. Records go to Redis; when Redis fails,
to this process's spool file (gateway/observability/spool.py), and from then on every new
record goes to the spool too, behind the older ones, until :meth:`flush` has replayed it all: the
spool keeps their order and Redis keeps them once (ids are idempotent). ``flush`` runs
from a loop of the process that owns the recorder (gateway lifespan, controller tick).
Metrics count a record when Redis first stores it, so several gateways seeing the same
start count it once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.observability import alerts
from gateway.observability.instruments import (
    RECORDS_REPLAYED,
    RECORDS_SPOOLED,
    REDIS_ERRORS,
    START_PHASE,
    STARTS,
    STOPS,
)
from gateway.observability.record_store import RecordStore
from gateway.observability.records import (
    PHASES,
    Record,
    record_id,
    start_outcome,
    start_record,
    stop_record,
)
from gateway.observability.spool import Spool
from gateway.sessions.store import Session
from shared.settings import Settings

log = logging.getLogger(__name__)

TERMINAL = frozenset({"ready", "failed"})
# How long after a start ended its prepare result (the phase timings) is waited for before
# the record is written without them.
RESULT_GRACE = 15.0
MEMORY = 20_000  # record ids remembered as written by this process


def spool_dir(settings: Settings) -> Path:
    return Path(settings.state_dir) / "spool"


class Recorder:
    def __init__(
        self, settings: Settings, redis: Redis, alerter: alerts.Alerts | None = None
    ) -> None:
        self.store = RecordStore(redis, settings.records_retention_days, settings.records_max)
        self.spool = Spool(spool_dir(settings))
        self.alerts = alerter
        self._written: OrderedDict[str, None] = OrderedDict()
        self._spooling = False  # our own spool has records: new ones queue behind them

    # --- lifecycle hooks ------------------------------------------------------------------

    async def start_seen(self, session: Session, result_known: bool) -> None:
        """After a refresh: record the start once it ended (ready or failed) and its phase
        timings are in (or RESULT_GRACE passed without them)."""
        if session.state not in TERMINAL or record_id(session, "start") in self._written:
            return
        if not result_known and time.time() - session.updated_at < RESULT_GRACE:
            return
        await self.add(self._start(session, start_outcome(session)))

    async def start_refused(self, session: Session, outcome: str, reason: str) -> None:
        """A start that failed before its container took over (it answered 503):
        `outcome` no_capacity (no container could be had) or failed."""
        await self.add(self._start(session, outcome, reason))

    async def pool_missed(self, project: str, host: str) -> None:
        """A start had to create a container (on `host`): the warm pool was empty."""
        if self.alerts is not None:
            await self.alerts.fire(
                alerts.POOL_DEPLETED,
                "the warm pool was empty: a start had to create a container",
                project=project,
                host=host,
            )

    async def stopped(self, session: Session, code: str = "user", reason: str = "") -> None:
        """The session was stopped (`code`: user, idle, max_lifetime, failed...). Also
        closes its start record if none was written yet (cancelled while starting). A
        hibernated preview's period was closed by its hibernation: nothing to add."""
        if session.state == "hibernated":
            return
        found = []
        if record_id(session, "start") not in self._written:
            found.append(self._start(session, start_outcome(session)))
        found.append(stop_record(session, code, reason))
        self._remember(found[-1].id)
        await self.add(*found)

    async def failed(self, session: Session, code: str, reason: str) -> None:
        """The controller failed the session (`code`: heartbeat_lost, host_down...). A start
        still under way failed with it; the stop record says why it ended."""
        found = []
        if record_id(session, "start") not in self._written:
            outcome = "ready" if session.state == "ready" else "failed"
            found.append(self._start(session, outcome, reason if outcome == "failed" else ""))
        found.append(stop_record(session, code, reason))
        self._remember(found[-1].id)
        await self.add(*found)

    def _start(self, session: Session, outcome: str, reason: str = "") -> Record:
        found = start_record(session, outcome, reason)
        self._remember(found.id)
        if outcome == "ready":
            log.info(
                "preview ready sid=%s user=%s project=%s host=%s from_pool=%s "
                "dependencies=%s total_ms=%s",
                session.id,
                session.user,
                session.project_id,
                session.host,
                session.from_pool,
                session.dependencies or "-",
                found.timings.get("total", "?"),
            )
        elif outcome != "cancelled":
            log.warning(
                "preview start failed sid=%s user=%s project=%s host=%s outcome=%s reason=%r",
                session.id,
                session.user,
                session.project_id,
                session.host,
                outcome,
                found.reason,
            )
        return found

    def _remember(self, rid: str) -> None:
        self._written[rid] = None
        if len(self._written) > MEMORY:
            self._written.popitem(last=False)

    # --- storage --------------------------------------------------------------------------

    async def add(self, *records: Record) -> None:
        """Store records in Redis, or spool them durably when it cannot take them."""
        if not self._spooling:
            try:
                added = await self.store.insert(records)
            except (RedisError, OSError) as exc:
                await self._redis_failed(exc)
            else:
                self._count(records, added)
                return
        try:
            await self.spool.append([r.to_json() for r in records])
        except OSError as exc:
            # Neither Redis nor the disk: nothing left to keep them in.
            log.error("preview records lost count=%d: spool failed: %s", len(records), exc)
            return
        self._spooling = True
        RECORDS_SPOOLED.inc(len(records))
        log.warning("preview records spooled count=%d file=%s", len(records), self.spool.path)

    async def flush(self) -> int:
        """Replay spooled records (ours and dead processes') into Redis, in order; how
        many were sent. Redis still down: 0, and they stay spooled."""
        if not self._spooling and not self.spool.pending():
            return 0
        try:
            sent = await self.spool.replay(self._replay)
        except (RedisError, OSError) as exc:
            REDIS_ERRORS.inc()
            log.debug("spool replay postponed: %s", exc)
            return 0
        finally:
            self._spooling = self.spool.path in self.spool.files()
        RECORDS_REPLAYED.inc(sent)
        return sent

    async def _replay(self, lines: Sequence[str]) -> None:
        records = []
        for line in lines:
            try:
                records.append(Record.from_json(line))
            except (ValueError, TypeError):
                log.warning("unreadable spooled record skipped (a torn write?)")
        if records:
            self._count(records, await self.store.insert(records))

    async def _redis_failed(self, exc: Exception) -> None:
        REDIS_ERRORS.inc()
        if self.alerts is not None:
            await self.alerts.fire(
                alerts.REDIS_UNREACHABLE,
                f"Redis is unreachable: {exc}; preview records are spooled locally",
                shared=False,
            )

    @staticmethod
    def _count(records: Sequence[Record], added: Sequence[bool]) -> None:
        for found, new in zip(records, added, strict=True):
            if not new:
                continue
            if found.kind == "stop":
                STOPS.labels(found.outcome).inc()
                continue
            STARTS.labels(found.outcome).inc()
            if found.outcome != "ready":
                continue
            pool = "unknown" if found.from_pool is None else str(found.from_pool).lower()
            deps = found.dependencies or "none"
            for phase in PHASES:
                if phase in found.timings:
                    START_PHASE.labels(phase, pool, deps).observe(found.timings[phase] / 1000)
