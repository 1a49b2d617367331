"""Observability upkeep, one object per process kind.

- :class:`GatewayOps`, owned by the gateway's lifespan: the preview recorder and a loop
  that replays spooled records and raises "Redis unreachable".
- :class:`ControllerOps`, owned by the controller: the recorder, ``/metrics`` on
  PREVIEW_CONTROLLER_METRICS_BIND, and :meth:`ControllerOps.tick`, called by the leader
  every pass: replay spooled records, accrue container time, check the alert conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from gateway.observability import alerts, collect, live
from gateway.observability.costs import CostMeter, over_budget
from gateway.observability.counters import COUNTERS, Counters
from gateway.observability.instruments import REDIS_ERRORS
from gateway.observability.metrics import Collect, serve_metrics
from gateway.observability.recorder import Recorder
from gateway.observability.records import ERROR_OUTCOMES
from shared.periodic import ticks
from shared.redis_client import unreachable
from shared.settings import Settings

log = logging.getLogger(__name__)

UPKEEP_INTERVAL = 2.0  # seconds between the gateway's spool/Redis checks
RATE_CHECK_EVERY = 30.0  # seconds between error-rate checks (they read the window's records)
# Reap codes (gateway/observability/counters.py) that mean a session died rather than was ended.
DEAD_CODES = frozenset({"heartbeat_lost", "container_gone", "host_down", "crashed"})


class GatewayOps:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.alerts = alerts.Alerts(redis, settings.alert_repeat, "gateway")
        self.records = Recorder(settings, redis, self.alerts)
        self._task: asyncio.Task[None] | None = None
        self._redis_error: str | None = None

    def start(self, background: Background) -> None:
        self._task = background.forever(self._run(), "observability upkeep")

    async def _run(self) -> None:
        async for _ in ticks(UPKEEP_INTERVAL, first_now=True):
            await self.upkeep()

    async def upkeep(self) -> None:
        """Check Redis; replay the spool once it answers."""
        error = await unreachable(self.redis)
        if error is not None:
            REDIS_ERRORS.inc()
            if self._redis_error is None:
                log.warning("redis unreachable: %s", error)  # the alert is the Sentry event
            self._redis_error = error
            await self.alerts.fire(alerts.REDIS_UNREACHABLE, error, shared=False)
            return
        if self._redis_error is not None:
            log.info("redis reachable again")
            self.alerts.clear(alerts.REDIS_UNREACHABLE)
            self._redis_error = None
        await self.records.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.records.flush()
        self.records.spool.close()


class AlertChecks:
    """The alert conditions the leading controller evaluates each pass."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        sender: alerts.Alerts,
        recorder: Recorder,
        costs: CostMeter,
        counters: Counters = COUNTERS,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.alerts = sender
        self.recorder = recorder
        self.costs = costs
        self.counters = counters
        self._deaths: deque[tuple[float, int]] = deque()
        self._rate_checked = 0.0

    async def check(self) -> None:
        await self.hosts()
        await self.dead_sessions()
        if time.monotonic() - self._rate_checked >= RATE_CHECK_EVERY:
            self._rate_checked = time.monotonic()
            await self.error_rate()
            await self.budget()

    async def hosts(self) -> None:
        for host in await live.hosts(self.redis, self.settings):
            if host.up:
                self.alerts.clear(alerts.DOCKER_HOST_DOWN, host.name)
                continue
            await self.alerts.fire(
                alerts.DOCKER_HOST_DOWN,
                f"Docker host {host.name} is down: {host.reason or 'not answering'}",
                subject=host.name,
                host=host.name,
                since=host.since,
            )

    async def dead_sessions(self, now: float | None = None) -> int:
        """Sessions that died within the window (from this controller's decisions)."""
        now = now if now is not None else time.monotonic()
        dead = sum(
            n
            for (event, code), n in self.counters.snapshot().items()
            if event == "session_failed" and code in DEAD_CODES
        )
        self._deaths.append((now, dead))
        while self._deaths and self._deaths[0][0] < now - self.settings.alert_window:
            self._deaths.popleft()
        died = dead - self._deaths[0][1]
        if died > self.settings.alert_dead_sessions:
            minutes = self.settings.alert_window / 60
            await self.alerts.fire(
                alerts.DEAD_SESSIONS,
                f"{died} sessions died in the last {minutes:g} min "
                f"(threshold {self.settings.alert_dead_sessions})",
                died=died,
            )
        return died

    async def error_rate(self) -> float | None:
        since = time.time() - self.settings.alert_window
        starts = await self.recorder.store.between(since, kind="start")
        finished = [s for s in starts if s.outcome != "cancelled"]
        if len(finished) < max(1, self.settings.alert_min_starts):
            return None
        errors = [s for s in finished if s.outcome in ERROR_OUTCOMES]
        rate = len(errors) / len(finished)
        if rate > self.settings.alert_error_rate:
            reasons = sorted({s.reason or s.outcome for s in errors})[:5]
            await self.alerts.fire(
                alerts.START_ERROR_RATE,
                f"{rate:.0%} of {len(finished)} starts failed in the last "
                f"{self.settings.alert_window / 60:g} min (threshold "
                f"{self.settings.alert_error_rate:.0%}): {'; '.join(reasons)}",
                rate=round(rate, 3),
                starts=len(finished),
                errors=len(errors),
            )
        return rate

    async def budget(self) -> None:
        spent = await self.costs.today()
        if over_budget(self.settings, spent):
            await self.alerts.fire(
                alerts.COST_BUDGET,
                f"today's container cost {spent:.2f} is over the daily budget "
                f"{self.settings.cost_budget_daily:.2f}",
                spent=spent,
                budget=self.settings.cost_budget_daily,
            )


class ControllerOps:
    def __init__(self, settings: Settings, redis: Redis, counters: Counters = COUNTERS) -> None:
        self.settings = settings
        self.redis = redis
        self.alerts = alerts.Alerts(redis, settings.alert_repeat, "controller")
        self.records = Recorder(settings, redis, self.alerts)
        self.costs = CostMeter(settings, redis)
        self.checks = AlertChecks(settings, redis, self.alerts, self.records, self.costs, counters)
        self.counters = counters
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Serve /metrics (when PREVIEW_CONTROLLER_METRICS_BIND is set)."""
        if self.settings.controller_metrics_bind and self._server is None:

            async def exposition() -> str:
                return await collect.exposition(self.redis, self.settings, counters=self.counters)

            self._server = await serve_metrics_safely(
                self.settings.controller_metrics_bind, exposition
            )

    async def tick(self) -> None:
        """One leader pass: records, costs, alerts. Raises RedisError like other steps."""
        await self.records.flush()
        await self.costs.accrue()
        await self.checks.check()

    async def redis_state(self, error: str | None) -> None:
        """Called each pass with shared.redis_client.unreachable's answer (None: reachable)."""
        if error is None:
            self.alerts.clear(alerts.REDIS_UNREACHABLE)
            return
        REDIS_ERRORS.inc()
        await self.alerts.fire(alerts.REDIS_UNREACHABLE, error, shared=False)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(RedisError, OSError):
            await self.records.flush()
        self.records.spool.close()


async def serve_metrics_safely(bind: str, exposition: Collect) -> asyncio.Server | None:
    try:
        return await serve_metrics(bind, exposition)
    except OSError as exc:
        # Another controller on this machine has the port: it serves the shared state too.
        log.warning("controller metrics not served on %s: %s", bind, exc)
        return None
