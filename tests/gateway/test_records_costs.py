"""Container time per user and project priced into money, and the alert conditions the
controller checks each pass (error rate, dead sessions, hosts down, cost budget)."""

from __future__ import annotations

import time
from pathlib import Path

from redis.asyncio import Redis

from gateway.observability import alerts
from gateway.observability.costs import CostMeter
from gateway.observability.counters import Counters
from gateway.observability.ops import ControllerOps
from gateway.observability.record_store import RecordStore
from gateway.observability.records import Record
from gateway.sessions.store import Session, new_id
from shared import keys
from shared.settings import Settings


async def live_session(redis: Redis, user: str, project: str, age: float) -> Session:
    now = time.time()
    session = Session(new_id(), user, project, state="ready", created_at=now - age)
    await redis.hset(keys.session(session.id), mapping=session.to_record())
    await redis.sadd(keys.SESSIONS, session.id)
    return session


def priced(settings: Settings, tmp_path: Path, **overrides: object) -> Settings:
    return Settings.from_env(
        {},
        redis_url=settings.redis_url,
        state_dir=str(tmp_path),
        cost_per_host_hour=3.6,
        cost_host_capacity=2,  # 0.0005 per container-second
        **overrides,
    )


async def test_container_time_is_counted_per_user_project_and_pool(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    meter = CostMeter(priced(settings, tmp_path), redis)
    now = time.time()
    assert await meter.accrue(now - 10) == 0  # the first pass starts the clock
    await live_session(redis, "alice", "shop", age=100)
    await live_session(redis, "alice", "blog", age=100)
    await live_session(redis, "bob", "shop", age=4)  # started within the interval
    await redis.set(keys.pool_image(meter.settings.image), "sha256:x")
    await redis.rpush(keys.pool("sha256:x"), "pvc-a")
    await redis.zadd(keys.RESERVED, {"pvc-b": now + 60})  # kept for its user: warm too
    assert await meter.accrue(now) == 10

    report = await meter.report(1)
    users = {u["id"]: u for u in report["users"]}
    projects = {p["id"]: p["container_seconds"] for p in report["projects"]}
    assert round(users["alice"]["container_seconds"]) == 20
    assert round(users["bob"]["container_seconds"]) == 4
    assert users["alice"]["cost"] == 0.01
    assert {k: round(v) for k, v in projects.items()} == {"shop": 14, "blog": 10}
    assert round(report["daily"][0]["pool_seconds"]) == 20
    assert round(report["container_seconds"]) == 44  # 24 in sessions + 20 warm in the pool
    assert report["price_per_container_hour"] == 1.8
    spent = await meter.today()
    assert spent is not None and abs(spent - 44 * 0.0005) < 1e-3

    # A second controller overlapping the first counts the next interval, not this one.
    assert await CostMeter(meter.settings, redis).accrue(now) == 0


async def test_costs_unpriced_without_a_price(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    meter = CostMeter(Settings.from_env({}, redis_url=settings.redis_url), redis)
    assert await meter.price_per_second() is None
    assert (await meter.report(7))["cost"] is None


async def test_alert_conditions(redis: Redis, settings: Settings, tmp_path: Path) -> None:
    counters = Counters()
    ops = ControllerOps(
        priced(
            settings,
            tmp_path,
            cost_budget_daily=0.001,
            alert_dead_sessions=2,
            alert_min_starts=5,
            controller_metrics_bind="",
        ),
        redis,
        counters,
    )
    checks = ops.checks
    try:
        # Start error rate: 2 of 8 finished starts in the window failed (25% > 10%).
        store = RecordStore(redis, 30, 1000)
        now = time.time()
        found = [
            Record(f"{i}:start", "start", now - 60, str(i), "u", "p", outcome=outcome)
            for i, outcome in enumerate(["ready"] * 6 + ["failed", "no_capacity", "cancelled"])
        ]
        await store.insert(found)
        assert await checks.error_rate() == 0.25
        assert await redis.exists(keys.alert_sent(alerts.START_ERROR_RATE))

        # Dead sessions: over 2 within the window.
        assert await checks.dead_sessions() == 0
        counters.inc("session_failed", "heartbeat_lost", 2)
        counters.inc("session_stopped", "idle", 5)  # ended, not dead
        assert await checks.dead_sessions() == 2
        assert not await redis.exists(keys.alert_sent(alerts.DEAD_SESSIONS))
        counters.inc("session_failed", "host_down")
        assert await checks.dead_sessions() == 3
        assert await redis.exists(keys.alert_sent(alerts.DEAD_SESSIONS))

        # A Docker host down: one alert per host.
        await redis.hset(keys.docker_host("local"), mapping={"state": "down", "reason": "gone"})
        await checks.hosts()
        assert await redis.exists(keys.alert_sent(f"{alerts.DOCKER_HOST_DOWN}:local"))

        # Over the daily budget.
        await redis.hset(keys.cost_day(time.strftime("%Y-%m-%d", time.gmtime())), "total", 10)
        await checks.budget()
        assert await redis.exists(keys.alert_sent(alerts.COST_BUDGET))

        # The whole pass runs as the controller calls it.
        await ops.tick()
        await ops.redis_state("Redis not reachable: refused")
    finally:
        await ops.close()


async def test_too_few_starts_raise_no_error_rate_alert(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    ops = ControllerOps(priced(settings, tmp_path, controller_metrics_bind=""), redis)
    try:
        await RecordStore(redis, 30, 100).insert(
            [Record("x:start", "start", time.time(), "x", "u", "p", outcome="failed")]
        )
        assert await ops.checks.error_rate() is None
        assert not await redis.exists(keys.alert_sent(alerts.START_ERROR_RATE))
    finally:
        await ops.close()
