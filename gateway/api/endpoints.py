"""The preview API routes (ARCHITECTURE "Public HTTP contract").

Every route authenticates (401), counts against the caller's rate limit (429) and checks
ownership (another user's preview is a 404, exactly like one that does not exist).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.auth import User, authenticate
from gateway.api.events import (
    Followers,
    followed,
    lifecycle_now,
    relay,
    resumed_lifecycle,
    sse_response,
    start_cursor,
)
from gateway.api.ratelimit import RateLimits, client_key
from gateway.api.validation import (
    json_body,
    parse_start,
    query_choice,
    query_int,
    read_body,
    workspace_path,
)
from gateway.api.views import preview_object
from gateway.containers import archives
from gateway.errors import ApiError
from gateway.sessions.hibernation import Hibernator
from gateway.sessions.previews import Previews
from gateway.sessions.sleeping import Sleeper
from gateway.sessions.start import Starter
from gateway.sessions.store import Session, live_sessions
from shared import keys
from shared.messages import LOG_LINES, Heartbeat
from shared.redis_types import text

Handler = Callable[[Request, User], Awaitable[Response]]
MAX_WAIT = 60
ADMIN_LIST_LIMIT = 1000  # previews listed by GET /v1/admin/previews


def guarded(
    kind: str, admin: bool = False
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Authenticate, rate-limit (`kind`: starts or reads) and, for operator routes, require
    the admin scope; then call the handler with the user."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            limits: RateLimits = request.app.state.rate_limits
            try:
                user = authenticate(request)
            except ApiError:
                await limits.hit("auth_failures", client_key(request, None))
                raise
            await limits.hit(kind, client_key(request, user.id))
            if admin and not user.admin:
                raise ApiError(403, "forbidden", "this endpoint needs the admin scope")
            return await handler(request, user)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


def _previews(request: Request) -> Previews:
    previews: Previews = request.app.state.previews
    return previews


def _render(request: Request, session: Session, heartbeat: Heartbeat | None) -> dict[str, object]:
    return preview_object(request.app.state.settings, session, heartbeat)


async def _owned(request: Request, user: User) -> Session:
    return await _previews(request).owned(user.id, request.path_params["id"])


@guarded("starts")
async def start_preview(request: Request, user: User) -> Response:
    wait = query_int(request, "wait", 0, 0, MAX_WAIT)
    start = parse_start(await json_body(request))
    starter: Starter = request.app.state.starter
    status, session = await starter.start(user.id, start, wait)
    heartbeat = await _previews(request).refresh(session) if status == 200 else None
    return JSONResponse(_render(request, session, heartbeat), status)


@guarded("reads")
async def list_previews(request: Request, user: User) -> Response:
    previews = _previews(request)
    sessions = await previews.list(user.id)
    heartbeats = [await previews.refresh(s) for s in sessions]
    items = [_render(request, s, hb) for s, hb in zip(sessions, heartbeats, strict=True)]
    return JSONResponse({"previews": items})


@guarded("reads")
async def get_preview(request: Request, user: User) -> Response:
    session = await _owned(request, user)
    heartbeat = await _previews(request).refresh(session)
    return JSONResponse(_render(request, session, heartbeat))


@guarded("reads")
async def stop_preview(request: Request, user: User) -> Response:
    session = await _owned(request, user)
    if not await _previews(request).stop(session):
        raise ApiError(404, "not_found", "no such preview")
    return Response(status_code=204)


@guarded("reads")
async def preview_events(request: Request, user: User) -> Response:
    previews = _previews(request)
    session = await _owned(request, user)
    follows = query_choice(request, "follow", "0", ("0", "1")) == "1"
    last_id = request.headers.get("last-event-id")
    blocking = request.app.state.blocking_redis
    # A follower reconnecting after a state change resumes in the lifecycle stream.
    resumed = resumed_lifecycle(last_id) if follows else None
    cursor = start_cursor(session, None if resumed else last_id)
    since = resumed or (await lifecycle_now(blocking, session.id) if follows else "")
    await previews.refresh(session)
    # Asleep or hibernated, a follower is told the state; otherwise it waits for a container.
    idle = follows and session.state in ("sleeping", "hibernated", "resuming")
    if not session.container and not idle:
        raise ApiError(409, "not_ready", "the preview has no container yet; retry shortly")

    async def alive() -> bool:
        # A session the controller failed (heartbeat lost, host down) gets no `error`
        # event from its dead container: without this its stream would ping forever.
        current = await previews.load(session.id)
        return current is not None and current.state not in ("stopping", "failed")

    if not follows:
        finished = session.state in ("ready", "failed")
        return sse_response(relay(blocking, session, cursor, alive, finished))
    followers: Followers = request.app.state.followers
    followers.take(user.id)
    body = followed(blocking, session, cursor, since, alive, replay=resumed is None)
    return sse_response(followers.held(user.id, body))


@guarded("reads")
async def put_archive(request: Request, user: User) -> Response:
    settings = request.app.state.settings
    session = await _owned(request, user)
    mode = query_choice(request, "mode", "merge", ("merge", "replace"))
    data = await read_body(request, settings.max_upload_bytes)
    summary = await asyncio.to_thread(archives.check, data, settings.max_unpacked_bytes)
    answer = {
        "format": summary.format,
        "mode": mode,
        "files": summary.files,
        "unpacked_bytes": summary.unpacked_bytes,
    }
    starter: Starter = request.app.state.starter
    if session.pending and await starter.prepare_pending(session, data):
        # The first archive of an archive-source preview: it is prepared from it now.
        return JSONResponse(answer, 202)
    args = {"blob": True, "format": summary.format, "mode": mode}
    await _previews(request).command(session, "write_files", args, blob=data, timeout=120)
    return JSONResponse(answer)


@guarded("reads")
async def put_file(request: Request, user: User) -> Response:
    settings = request.app.state.settings
    session = await _owned(request, user)
    path = workspace_path(request.path_params["path"])
    data = await read_body(request, settings.max_upload_bytes)
    files = {path: base64.b64encode(data).decode()}
    await _previews(request).command(session, "write_files", {"files": files}, timeout=60)
    return JSONResponse({"path": path, "bytes": len(data)})


@guarded("reads")
async def restart_preview(request: Request, user: User) -> Response:
    previews = _previews(request)
    session = await _owned(request, user)
    starter: Starter = request.app.state.starter
    if not (session.pending and await starter.prepare_pending(session, None)):
        await previews.command(session, "restart", {}, timeout=30)
    heartbeat = await previews.refresh(session)
    return JSONResponse(_render(request, session, heartbeat), 202)


@guarded("reads")
async def sleep_preview(request: Request, user: User) -> Response:
    sleeper: Sleeper = request.app.state.sleeper
    return await _act(request, user, lambda session: sleeper.sleep(session, "api"))


@guarded("reads")
async def wake_preview(request: Request, user: User) -> Response:
    previews = _previews(request)

    hibernator: Hibernator = request.app.state.hibernator

    async def wake(session: Session) -> None:
        if session.state == "hibernated":
            await hibernator.resume(session, "api")
            return
        await previews.used(session.id)
        await previews.wake(session, "api")

    return await _act(request, user, wake)


@guarded("reads")
async def hibernate_preview(request: Request, user: User) -> Response:
    hibernator: Hibernator = request.app.state.hibernator
    return await _act(request, user, lambda session: hibernator.hibernate(session, "api"))


async def _act(
    request: Request, user: User, action: Callable[[Session], Awaitable[None]]
) -> Response:
    """`action` on the caller's preview; 202 with the preview as it is then."""
    previews = _previews(request)
    session = await _owned(request, user)
    await action(session)
    heartbeat = await previews.refresh(session)
    return JSONResponse(_render(request, session, heartbeat), 202)


@guarded("reads")
async def preview_logs(request: Request, user: User) -> Response:
    previews = _previews(request)
    session = await _owned(request, user)
    lines = query_int(request, "lines", 200, 1, LOG_LINES)
    try:
        result = await previews.command(session, "logs", {"lines": lines}, timeout=10)
    except ApiError as exc:
        # The supervisor keeps a snapshot too: better slightly stale logs than none.
        snapshot = await previews.redis.get(keys.logs(session.container))
        if exc.status != 504 or snapshot is None:
            raise
        return JSONResponse({"lines": text(snapshot).splitlines()[-lines:], "stale": True})
    found = result.result.get("lines", [])
    return JSONResponse(
        {"lines": [str(x) for x in found] if isinstance(found, list) else [], "stale": False}
    )


@guarded("reads", admin=True)
async def pool_status(request: Request, user: User) -> Response:
    previews = _previews(request)
    redis = previews.redis
    image_id = await previews.containers.image_id()
    pooled, reserved, containers, sessions = await asyncio.gather(
        redis.llen(keys.pool(image_id)),
        redis.zcard(keys.RESERVED),
        redis.scard(keys.CONTAINERS),
        redis.scard(keys.SESSIONS),
    )
    return JSONResponse(
        {
            "image": image_id,
            "pooled": pooled,  # the general pool: never ran user code
            "reserved": reserved,  # released, kept for their last user only
            "containers": containers,
            "sessions": sessions,
        }
    )


@guarded("reads", admin=True)
async def all_previews(request: Request, user: User) -> Response:
    previews = _previews(request)
    found = await live_sessions(previews.redis, ADMIN_LIST_LIMIT)
    items = [
        {
            "id": s.id,
            "user": s.user,
            "project_id": s.project_id,
            "state": s.state,
            "container": s.container,
            "host": s.host,
            "created_at": s.created_at,
        }
        for s in found
    ]
    return JSONResponse({"previews": items})


def resource(path: str, **handlers: Callable[[Request], Awaitable[Response]]) -> Route:
    """One route for all methods of a path, so that a 405's `Allow` names every one of
    them (a route per method would answer with its own method only)."""
    by_method = {method.upper(): handler for method, handler in handlers.items()}
    if "GET" in by_method:
        by_method["HEAD"] = by_method["GET"]

    async def endpoint(request: Request) -> Response:
        handler = by_method[request.method]
        request.scope["endpoint"] = handler  # the rate-limit metric names the handler
        return await handler(request)

    endpoint.__name__ = "_".join(h.__name__ for h in handlers.values())
    return Route(path, endpoint, methods=[m.upper() for m in handlers])


routes = [
    resource("/v1/previews", post=start_preview, get=list_previews),
    resource("/v1/previews/{id}", get=get_preview, delete=stop_preview),
    resource("/v1/previews/{id}/events", get=preview_events),
    resource("/v1/previews/{id}/files", put=put_archive),
    resource("/v1/previews/{id}/files/{path:path}", put=put_file),
    resource("/v1/previews/{id}/restart", post=restart_preview),
    resource("/v1/previews/{id}/logs", get=preview_logs),
    resource("/v1/previews/{id}/sleep", post=sleep_preview),
    resource("/v1/previews/{id}/wake", post=wake_preview),
    resource("/v1/previews/{id}/hibernate", post=hibernate_preview),
    resource("/v1/pool", get=pool_status),
    resource("/v1/admin/previews", get=all_previews),
]
