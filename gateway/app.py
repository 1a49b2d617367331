"""The Starlette application: one lifespan owns every client and background task."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from gateway.docker_runtime import DockerRuntime
from gateway.errors import (
    ApiError,
    api_error_handler,
    http_exception_handler,
    unexpected_error_handler,
)
from gateway.health import healthz, readyz
from shared.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Starlette:
    """Build the gateway for these settings; clients are opened by the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        app.state.runtime = DockerRuntime(settings)
        log.info(
            "gateway started redis=%s docker_hosts=%d",
            _safe_url(settings.redis_url),
            len(settings.docker_hosts),
        )
        try:
            yield
        finally:
            await app.state.runtime.close()
            await app.state.redis.aclose()

    app = Starlette(
        debug=settings.debug,
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_exception_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
