"""Alerts: Sentry events with one fingerprint per condition, sent at most once per
PREVIEW_ALERT_REPEAT however many processes see the condition.

Conditions (``CONDITIONS``): the pool was empty when a start needed a container, the start
error rate is above PREVIEW_ALERT_ERROR_RATE, a Docker host is down, sessions are dying
(heartbeat lost, container gone, host down) faster than PREVIEW_ALERT_DEAD_SESSIONS per
window, Redis is unreachable, the day's cost is over PREVIEW_COST_BUDGET_DAILY.
Deduplication is two-level: in this process (always works, even without Redis) and across
processes with a ``SET NX EX`` key (skipped when Redis is the thing that is down). Sentry
then groups every repeat into one issue per fingerprint. Without a DSN an alert is only a
log line (and a metric).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import sentry_sdk
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.observability.instruments import ALERTS
from shared import keys

log = logging.getLogger(__name__)

POOL_DEPLETED = "pool_depleted"
START_ERROR_RATE = "start_error_rate"
DOCKER_HOST_DOWN = "docker_host_down"
DEAD_SESSIONS = "dead_sessions"
REDIS_UNREACHABLE = "redis_unreachable"
COST_BUDGET = "cost_budget_exceeded"
CONDITIONS = (
    POOL_DEPLETED,
    START_ERROR_RATE,
    DOCKER_HOST_DOWN,
    DEAD_SESSIONS,
    REDIS_UNREACHABLE,
    COST_BUDGET,
)


class Alerts:
    def __init__(self, redis: Redis | None, repeat: float, source: str) -> None:
        self.redis = redis
        self.repeat = max(1.0, repeat)
        self.source = source
        self._sent: dict[str, float] = {}  # fingerprint id -> monotonic time sent

    async def fire(
        self,
        condition: str,
        message: str,
        *,
        subject: str = "",
        level: str = "error",
        shared: bool = True,
        **context: Any,
    ) -> bool:
        """Raise `condition` (for `subject`, e.g. a host name, when it has several); False
        when it was already raised within the repeat window. `shared=False` skips the
        cross-process check (when Redis itself is down)."""
        ident = f"{condition}:{subject}" if subject else condition
        now = time.monotonic()
        if now - self._sent.get(ident, -self.repeat) < self.repeat:
            return False
        self._sent[ident] = now
        if shared and self.redis is not None:
            try:
                fresh = await self.redis.set(
                    keys.alert_sent(ident), self.source, nx=True, ex=int(self.repeat)
                )
            except (RedisError, OSError):
                fresh = True  # better a duplicate than a missed alert
            if not fresh:
                return False
        ALERTS.labels(condition).inc()
        # WARNING, not ERROR: the Sentry logging integration would make an ERROR line a
        # second event without the fingerprint.
        log.warning("alert condition=%s subject=%s %s", condition, subject or "-", message)
        send(condition, message, subject, level, {**context, "source": self.source})
        return True

    def clear(self, condition: str, subject: str = "") -> None:
        """The condition ended: the next occurrence alerts at once (in this process)."""
        self._sent.pop(f"{condition}:{subject}" if subject else condition, None)


def send(condition: str, message: str, subject: str, level: str, context: dict[str, Any]) -> None:
    """One Sentry event for an alert (a no-op when Sentry is not initialised)."""
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["preview-alert", condition, subject]
        scope.set_tag("alert", condition)
        if subject:
            scope.set_tag("alert.subject", subject)
        scope.set_context("alert", context)
        sentry_sdk.capture_message(f"[alert] {message}", level=level)  # type: ignore[arg-type]
