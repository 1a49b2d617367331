"""Operator endpoints (scope ``admin``): records, statistics, costs, live state; and the
unauthenticated ``/metrics`` (it carries no user data: labels are fixed words).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.api.auth import User
from gateway.api.endpoints import guarded
from gateway.api.validation import query_int
from gateway.observability import collect, live
from gateway.observability.costs import CostMeter
from gateway.observability.metrics import CONTENT_TYPE
from gateway.observability.ops import GatewayOps
from gateway.observability.record_store import RecordStore
from gateway.observability.records import ERROR_OUTCOMES
from gateway.observability.stats import csv_header, csv_rows, stats
from gateway.sessions.store import live_sessions
from shared import keys
from shared.redis_types import text

MAX_DAYS = 366
RECENT_FAILURES = 20
LISTED_SESSIONS = 200


def _store(request: Request) -> RecordStore:
    ops: GatewayOps = request.app.state.ops
    return ops.records.store


def _days(request: Request, default: int = 7) -> int:
    return query_int(request, "days", default, 1, MAX_DAYS)


@guarded("reads", admin=True)
async def admin_stats(request: Request, user: User) -> Response:
    """Start-time percentiles per phase, pool hit rate, install-skip rate, success and
    error rates over the last `days` (and per hour/day for charts)."""
    days = _days(request)
    now = time.time()
    found = await _store(request).between(now - days * 86400)
    return JSONResponse(stats(found, days, now))


@guarded("reads", admin=True)
async def admin_records_csv(request: Request, user: User) -> Response:
    """Every record of the last `days` as CSV, oldest first, streamed."""
    days = _days(request, 30)
    store = _store(request)
    since = time.time() - days * 86400

    async def rows() -> AsyncIterator[str]:
        yield csv_header()
        async for batch in store.scan(since):
            yield csv_rows(batch)

    name = time.strftime("preview-records-%Y%m%d.csv", time.gmtime())
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@guarded("reads", admin=True)
async def admin_overview(request: Request, user: User) -> Response:
    """Live sessions, sleeping and hibernated previews with the recent wakes and resumes,
    the pool, the hosts with their load and the recent failures."""
    settings = request.app.state.settings
    redis = request.app.state.redis
    sessions = await live_sessions(redis, live.MAX_SESSIONS)
    pool = await live.pool(redis, settings)
    hosts = await live.hosts(redis, settings, sessions, pool.per_host, pool.reserved_per_host)
    recent = await _store(request).recent(500)
    failures = [r for r in recent if r.kind == "start" and r.outcome in ERROR_OUTCOMES]
    now = time.time()
    by_state: dict[str, int] = {}
    for session in sessions:
        by_state[session.state] = by_state.get(session.state, 0) + 1
    listed = sessions[-LISTED_SESSIONS:]
    lifecycle = await live.transitions(redis, now)
    routes = await _routes(redis, [s.container for s in listed])
    return JSONResponse(
        {
            "now": now,
            "sessions": {
                "active": len(sessions),
                "by_state": by_state,
                "items": [
                    {
                        "id": s.id,
                        "user": s.user,
                        "project_id": s.project_id,
                        "state": s.state,
                        "host": s.host,
                        "from_pool": s.from_pool,
                        "age_s": round(now - s.created_at) if s.created_at else None,
                        # Where the proxy sends its traffic, and whether that is the
                        # container's own address or its Docker-published port.
                        "upstream": s.address,
                        "upstream_via": route,
                        "shares": s.shares,
                        "share_views": s.share_views,
                    }
                    for s, route in zip(listed, routes, strict=True)
                ],
            },
            # Asleep previews are live sessions (by_state); hibernated ones are not.
            "lifecycle": {"sleeping": by_state.get("sleeping", 0), **lifecycle},
            "pool": pool.summary(),
            "hosts": [
                {
                    "name": h.name,
                    "up": h.up,
                    "reason": h.reason,
                    "drained": h.drained,
                    "capacity": h.capacity,
                    "containers": h.containers,
                    "pooled": h.pooled,
                    "reserved": h.reserved,
                    "sessions": h.sessions,
                    "load": round(h.load, 3),
                }
                for h in hosts
            ],
            "failures": [
                {
                    "ts": r.ts,
                    "session": r.sid,
                    "user": r.user,
                    "project": r.project,
                    "host": r.host,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "detail": r.detail,
                }
                for r in failures[:RECENT_FAILURES]
            ],
            "records": await _store(request).count(),
        }
    )


async def _routes(redis: Redis, cids: list[str]) -> list[str]:
    """Each container's route ("container" or "published"; "" unknown), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for cid in cids:
            pipe.hget(keys.container(cid), "route")
        found = await pipe.execute()
    return [text(value) if value else "" for value in found]


@guarded("reads", admin=True)
async def admin_costs(request: Request, user: User) -> Response:
    """Container-seconds and cost per user and project over the last `days`."""
    costs: CostMeter = request.app.state.costs
    return JSONResponse(await costs.report(_days(request)))


async def metrics(request: Request) -> Response:
    text = await collect.exposition(request.app.state.redis, request.app.state.settings)
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


routes = [
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/admin/stats", admin_stats, methods=["GET"]),
    Route("/v1/admin/records.csv", admin_records_csv, methods=["GET"]),
    Route("/v1/admin/overview", admin_overview, methods=["GET"]),
    Route("/v1/admin/costs", admin_costs, methods=["GET"]),
]
