"""The 429 metric's kind is the limit the route's guard declares, not a handler's name."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.api.app import counted_api_error_handler
from gateway.api.auth import Authenticator, User
from gateway.api.endpoints import guarded
from gateway.api.ratelimit import RateLimits
from gateway.errors import ApiError
from gateway.observability.instruments import RATE_LIMITED
from shared import keys
from shared.settings import Settings
from tests.gateway.api_helpers import AUDIENCE, SECRET, bearer


# Names chosen to look like neither route: the label must not depend on them.
@guarded("starts")
async def renamed_start(request: object, user: User) -> Response:
    return PlainTextResponse("started")


@guarded("reads")
async def start_preview(request: object, user: User) -> Response:
    return PlainTextResponse("read")


@pytest_asyncio.fixture
async def client(settings: Settings, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    limited = dataclasses.replace(
        settings,
        jwt_secret=SECRET,
        jwt_audience=AUDIENCE,
        rate_limit_starts="1/minute",
        rate_limit_reads="1/minute",
    )
    app = Starlette(
        routes=[Route("/start", renamed_start, methods=["POST"]), Route("/read", start_preview)],
        exception_handlers={ApiError: counted_api_error_handler},
    )
    app.state.authenticator = Authenticator(limited)
    app.state.rate_limits = RateLimits(limited)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            yield c
    finally:
        async for key in redis.scan_iter(match=keys.RATE_LIMIT_PREFIX + "*"):
            await redis.delete(key)


async def test_the_429_label_is_the_guards_kind(client: httpx.AsyncClient) -> None:
    user = f"ratelabel-{id(client)}"
    starts, reads = RATE_LIMITED.value("starts"), RATE_LIMITED.value("reads")

    assert (await client.post("/start", headers=bearer(user))).status_code == 200
    refused = await client.post("/start", headers=bearer(user))
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert RATE_LIMITED.value("starts") == starts + 1
    assert RATE_LIMITED.value("reads") == reads

    # A handler named like the start route, guarded as a read: counted as a read.
    assert (await client.get("/read", headers=bearer(user))).status_code == 200
    assert (await client.get("/read", headers=bearer(user))).status_code == 429
    assert RATE_LIMITED.value("reads") == reads + 1
    assert RATE_LIMITED.value("starts") == starts + 1
