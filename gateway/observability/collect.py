"""What ``/metrics`` shows besides this process's own counts: the shared state in Redis
(sessions, pool, hosts) and the controller decisions counted by gateway/observability/counters.py.

Shared-state gauges are the same on every replica that serves them; aggregate them with
``max``, not ``sum``. A scrape during a Redis outage says ``preview_redis_up 0`` and
still serves the in-process counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.observability import live
from gateway.observability.counters import COUNTERS, Counters
from gateway.observability.instruments import REDIS_ERRORS, REGISTRY
from gateway.observability.metrics import Family, Registry, render
from gateway.sessions.store import live_sessions
from shared import keys
from shared.settings import Settings

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 5.0
# Controller decisions that end a session, as reaps.
REAPS = {"session_failed": "failed", "session_stopped": "stopped", "session_dropped": "dropped"}


def decision_families(counters: Counters) -> list[Family]:
    events = Family(
        "preview_controller_events_total",
        "Controller and container decisions (reap, release, destroy, scale, host), by event "
        "and reason code.",
        "counter",
    )
    reaps = Family(
        "preview_reaps_total", "Sessions ended by the controller, by outcome and reason.", "counter"
    )
    for (event, code), count in sorted(counters.snapshot().items()):
        events.add(count, event=event, code=code)
        if event in REAPS:
            reaps.add(count, outcome=REAPS[event], reason=code)
    return [events, reaps]


async def state_families(redis: Redis, settings: Settings) -> list[Family]:
    sessions = await live_sessions(redis, live.MAX_SESSIONS)
    pool = await live.pool(redis, settings)
    hosts = await live.hosts(redis, settings, sessions, pool.per_host, pool.reserved_per_host)
    stored = await redis.zcard(keys.RECORDS_INDEX)
    by_state = Tally(s.state for s in sessions)
    found = [
        Family("preview_redis_up", "1 when Redis answered this scrape.", "gauge"),
        Family("preview_sessions_active", "Live preview sessions.", "gauge"),
        Family(
            "preview_sessions",
            "Live preview sessions by state, and the hibernated previews.",
            "gauge",
        ),
        Family(
            "preview_pool_size",
            "Warm containers that never ran user code (the general pool), per Docker host.",
            "gauge",
        ),
        Family("preview_pool_target", "The warm pool's current target size.", "gauge"),
        Family(
            "preview_pool_acquisitions_total",
            "Starts that found a warm container (hit), their user's own reserved one "
            "(reserved), or had to create one (miss).",
            "counter",
        ),
        Family(
            "preview_pool_reserved",
            "Released containers reset and kept for their last user only, per Docker host.",
            "gauge",
        ),
        Family("preview_host_up", "1 when the controller sees the Docker host up.", "gauge"),
        Family("preview_host_drained", "1 when the host takes no new containers.", "gauge"),
        Family("preview_host_capacity", "Containers the host can hold.", "gauge"),
        Family("preview_host_containers", "Our containers on the host.", "gauge"),
        Family("preview_host_sessions", "Live sessions on the host.", "gauge"),
        Family("preview_records_stored", "Preview records kept in Redis.", "gauge"),
    ]
    up, active, states, size, target, acquired, reserved = found[:7]
    host_up, drained, capacity, containers, on_host, records = found[7:]
    up.add(1)
    active.add(len(sessions))
    # Hibernated previews are not live sessions (no slot, no container): counted apart.
    by_state["hibernated"] = await live.hibernated(redis, time.time())
    for state, count in sorted(by_state.items()):
        states.add(count, state=state)
    target.add(pool.target)
    acquired.add(pool.hits, result="hit")
    acquired.add(pool.reserved_hits, result="reserved")
    acquired.add(pool.misses, result="miss")
    for host in hosts:
        size.add(host.pooled, host=host.name)
        reserved.add(host.reserved, host=host.name)
        host_up.add(int(host.up), host=host.name)
        drained.add(int(host.drained), host=host.name)
        capacity.add(host.capacity, host=host.name)
        containers.add(host.containers, host=host.name)
        on_host.add(host.sessions, host=host.name)
    records.add(int(stored))
    return found


async def exposition(
    redis: Redis,
    settings: Settings,
    registry: Registry = REGISTRY,
    counters: Counters = COUNTERS,
) -> str:
    """The whole ``/metrics`` text for this process."""
    try:
        shared = await asyncio.wait_for(state_families(redis, settings), SCRAPE_TIMEOUT)
    except (RedisError, OSError, TimeoutError) as exc:
        REDIS_ERRORS.inc()
        log.warning("metrics: Redis state not collected: %s", exc)
        down = Family("preview_redis_up", "1 when Redis answered this scrape.", "gauge")
        down.add(0)
        shared = [down]
    return render([*registry.families(), *decision_families(counters), *shared])
