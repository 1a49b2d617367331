"""Share links of a preview (the owner's) and a signed-in viewer's way in.

``POST /v1/previews/{id}/shares`` makes one (``{"expires_in", "access", "ports"?}`` → 201
``{"id", "url", "expires_at", "access", ...}``), ``GET`` lists the unexpired ones, ``DELETE
.../shares/{share_id}`` revokes one: its record goes and the revocation is published, so
every gateway refuses its viewers at once and closes their WebSockets
(gateway/proxy/share_access.py). ``POST /v1/shares/{share_id}/open`` gives any signed-in
user a single-use URL into a share (the JWT stays in the header). What a share admits on
the preview host, and why it never becomes more than viewing: gateway/proxy/shares.py.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.auth import User
from gateway.api.endpoints import guarded, resource
from gateway.api.validation import invalid, json_body
from gateway.api.views import preview_url
from gateway.errors import ApiError
from gateway.proxy import shares
from gateway.proxy.shares import Share
from gateway.sessions.previews import Previews
from shared import keys
from shared.redis_types import text
from shared.settings import Settings

DEFAULT_EXPIRES_IN = 3600
MIN_EXPIRES_IN = 60
FIELDS = {"expires_in", "access", "ports"}
# Make a share if the preview is its owner's and live, and under the per-preview limit.
# KEYS: session, preview's shares, share. ARGV: owner, now, limit, id, expires_at, then the
# record's field/value pairs.
_CREATE = """
local found = redis.call('HMGET', KEYS[1], 'user', 'state')
if found[1] ~= ARGV[1] or not found[2] or found[2] == 'stopping' or found[2] == 'failed' then
  return 'gone'
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('HSET', KEYS[3], unpack(ARGV, 6))
redis.call('EXPIREAT', KEYS[3], math.ceil(tonumber(ARGV[5])))
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
local until_ = math.ceil(tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]))
redis.call('EXPIREAT', KEYS[2], until_)
redis.call('HINCRBY', KEYS[1], 'shares', 1)
return 'made'
"""
# Revoke: only the owner's share of this preview. KEYS: share, preview's shares, channel.
# ARGV: sid, owner, id, message.
_REVOKE = """
local found = redis.call('HMGET', KEYS[1], 'sid', 'owner')
if found[1] ~= ARGV[1] or found[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1
"""


def share_object(settings: Settings, share: Share) -> dict[str, Any]:
    return {
        "id": share.id,
        "preview_id": share.sid,
        "url": f"{preview_url(settings, share.sid)}?{shares.LINK_PARAM}={share.id}",
        "access": share.access,
        "ports": share.ports,
        "created_at": share.created_at,
        "expires_at": share.expires_at,
    }


def parse_share(data: dict[str, Any], settings: Settings) -> tuple[int, str, bool]:
    extra = sorted(set(data) - FIELDS)
    if extra:
        raise invalid(f"unknown field {extra[0]!r}", extra[0])
    expires_in = data.get("expires_in", DEFAULT_EXPIRES_IN)
    if (
        not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
        or not MIN_EXPIRES_IN <= expires_in <= settings.share_max_ttl
    ):
        raise invalid(
            f"expires_in must be whole seconds from {MIN_EXPIRES_IN} to {settings.share_max_ttl}",
            "expires_in",
        )
    access = data.get("access")
    if access not in shares.ACCESS:
        raise invalid("access is required: 'public' or 'signed_in'", "access")
    ports = data.get("ports", False)
    if not isinstance(ports, bool):
        raise invalid("ports must be true or false", "ports")
    return expires_in, str(access), ports


def _previews(request: Request) -> Previews:
    previews: Previews = request.app.state.previews
    return previews


def no_share() -> ApiError:
    return ApiError(404, "not_found", "no such share link (or it expired)")


@guarded("reads")
async def create_share(request: Request, user: User) -> Response:
    settings: Settings = request.app.state.settings
    previews = _previews(request)
    session = await previews.owned(user.id, request.path_params["id"])
    expires_in, access, ports = parse_share(await json_body(request), settings)
    now = time.time()
    share = Share(shares.new_share_id(), session.id, user.id, access, ports, now, now + expires_in)
    fields = [x for pair in share.to_record().items() for x in pair]
    made = text(
        await previews.redis.eval(
            _CREATE,
            3,
            keys.session(session.id),
            keys.preview_shares(session.id),
            keys.share(share.id),
            user.id,
            repr(now),
            str(settings.max_shares_per_preview),
            share.id,
            repr(share.expires_at),
            *fields,
        )
    )
    if made == "gone":
        raise ApiError(404, "not_found", "no such preview")
    if made == "full":
        raise ApiError(
            429,
            "too_many_shares",
            f"this preview has {settings.max_shares_per_preview} unexpired share links: "
            "revoke one first",
            limit=settings.max_shares_per_preview,
        )
    return JSONResponse(share_object(settings, share), 201)


@guarded("reads")
async def list_shares(request: Request, user: User) -> Response:
    settings: Settings = request.app.state.settings
    previews = _previews(request)
    session = await previews.owned(user.id, request.path_params["id"])
    ids = await previews.redis.zrangebyscore(keys.preview_shares(session.id), time.time(), "+inf")
    found = [await shares.load(previews.redis, text(i)) for i in ids if isinstance(i, bytes)]
    items = [share_object(settings, s) for s in found if s is not None and s.owner == user.id]
    return JSONResponse({"shares": items})


@guarded("reads")
async def revoke_share(request: Request, user: User) -> Response:
    previews = _previews(request)
    session = await previews.owned(user.id, request.path_params["id"])
    share_id = request.path_params["share_id"]
    if not shares.SHARE_ID.fullmatch(share_id):
        raise no_share()
    revoked = await previews.redis.eval(
        _REVOKE,
        3,
        keys.share(share_id),
        keys.preview_shares(session.id),
        keys.ROUTE_CHANGES,
        session.id,
        user.id,
        share_id,
        keys.SHARE_CHANGE_PREFIX + share_id,
    )
    if not revoked:
        raise no_share()
    return Response(status_code=204)


@guarded("reads")
async def open_share(request: Request, user: User) -> Response:
    """Any signed-in user: a single-use URL that opens the share in their browser."""
    settings: Settings = request.app.state.settings
    previews = _previews(request)
    share = await shares.load(previews.redis, request.path_params["share_id"])
    if share is None or share.expires_at <= time.time():
        raise no_share()
    session = await previews.load(share.sid)
    if session is None or session.user != share.owner or session.state in ("stopping", "failed"):
        raise no_share()
    token = shares.open_token(settings, share, user.id)
    url = f"{preview_url(settings, share.sid)}?{shares.TOKEN_PARAM}={token}"
    return JSONResponse(
        {"url": url, "expires_in": settings.preview_token_ttl, "access": share.access}
    )


routes = [
    resource("/v1/previews/{id}/shares", post=create_share, get=list_shares),
    resource("/v1/previews/{id}/shares/{share_id}", delete=revoke_share),
    resource("/v1/shares/{share_id}/open", post=open_share),
]
