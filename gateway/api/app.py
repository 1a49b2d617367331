"""The Starlette application: one lifespan owns every client and background task."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api import admin, auth, dashboard, endpoints, shares
from gateway.api.events import Followers
from gateway.api.health import healthz, readyz
from gateway.api.openapi import openapi_document
from gateway.api.ratelimit import RateLimited, RateLimits
from gateway.background import Background
from gateway.containers.containers import ContainerError, Containers
from gateway.containers.docker_runtime import DockerRuntime, DockerRuntimeError
from gateway.errors import (
    ApiError,
    api_error_handler,
    error_response,
    http_exception_handler,
    unexpected_error_handler,
)
from gateway.observability.costs import CostMeter
from gateway.observability.instruments import DOCKER_ERRORS, RATE_LIMITED, REDIS_ERRORS
from gateway.observability.ops import GatewayOps
from gateway.observability.sentry_setup import SentryUser, init_sentry
from gateway.sessions.following import Follower
from gateway.sessions.hibernation import Hibernator
from gateway.sessions.previews import Previews
from gateway.sessions.sleeping import Sleeper
from gateway.sessions.start import Starter
from gateway.sessions.tracker import Tracker
from shared.redis_client import redis_client
from shared.settings import Settings

# Longest wait on a container's acknowledgement (an archive upload), plus a margin: the
# client used for blocking reads (BLPOP, XREAD BLOCK) must not time out before Redis does.
BLOCKING_SOCKET_TIMEOUT = 150.0
SHUTDOWN_DEADLINE = 10.0

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Starlette:
    """Build the gateway for these settings; clients are opened by the lifespan. Bad auth
    or rate-limit settings fail here, at start-up."""
    authenticator = auth.Authenticator(settings)
    RateLimits.check_settings(settings)
    sentry = init_sentry(settings, "gateway")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = app.state
        state.redis = redis_client(settings, socket_connect_timeout=2, socket_timeout=5)
        state.blocking_redis = redis_client(
            settings, socket_connect_timeout=2, socket_timeout=BLOCKING_SOCKET_TIMEOUT
        )
        state.runtime = DockerRuntime(settings)
        state.background = Background()
        state.containers = Containers(
            settings, state.blocking_redis, state.runtime, background=state.background
        )
        state.ops = GatewayOps(settings, state.redis)
        state.costs = CostMeter(settings, state.redis)
        state.previews = Previews(
            settings, state.redis, state.containers, state.background, records=state.ops.records
        )
        state.starter = Starter(state.previews)
        state.sleeper = Sleeper(state.previews)
        state.hibernator = Hibernator(state.previews, state.starter, state.sleeper)
        state.resumer = state.hibernator  # the proxy's hook (gateway/proxy/waking.py)
        # The proxy's hook for requests held on a starting preview (proxy/starting.py).
        state.follower = Follower(state.previews, state.blocking_redis)
        state.starter.make_room = state.hibernator.hibernate_lru
        state.rate_limits = RateLimits(settings)
        tracker = Tracker(state.previews, interval=1.0)
        state.background.forever(tracker.run(), "session tracker")
        state.ops.start(state.background)
        log.info(
            "gateway started redis=%s docker_hosts=%d auth=%s",
            _safe_url(settings.redis_url),
            len(settings.docker_hosts),
            auth.describe(settings),
        )
        try:
            yield
        finally:
            await state.background.close(SHUTDOWN_DEADLINE)  # the tracker first
            await state.ops.close()
            await state.runtime.close()
            await state.blocking_redis.aclose()
            await state.redis.aclose()

    app = Starlette(
        debug=settings.debug,
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/openapi.json", openapi),
            *endpoints.routes,
            *shares.routes,
            *admin.routes,
            *dashboard.routes,
        ],
        middleware=[Middleware(SentryUser)] if sentry else [],
        exception_handlers={
            ApiError: counted_api_error_handler,
            HTTPException: http_exception_handler,
            ContainerError: container_error_handler,
            DockerRuntimeError: dependency_error_handler,
            RedisError: dependency_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.followers = Followers()
    return app


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.state.settings))


async def counted_api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status == 429:
        # A request rate: the limit the route's guard counted it against; any other 429
        # (the slot limit) names itself.
        RATE_LIMITED.labels(exc.kind if isinstance(exc, RateLimited) else exc.error).inc()
    return await api_error_handler(request, exc)


async def container_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ContainerError)
    log.error("container error on %s %s: %s", request.method, request.url.path, exc.reason)
    return error_response(502, "container_error", "the preview container did not respond")


async def dependency_error_handler(request: Request, exc: Exception) -> Response:
    # Redis or Docker down: the client can only retry; the details are for the log. A
    # warning, not an error: an outage is one alert (redis_unreachable, docker_host_down),
    # not one Sentry event per request.
    (REDIS_ERRORS if isinstance(exc, RedisError) else DOCKER_ERRORS).inc()
    log.warning("dependency error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503, "unavailable", "a backing service is unreachable; retry shortly", {"Retry-After": "5"}
    )


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
