"""Share links: what a share is, where it is kept, and the values that prove one.

A share lets people other than the owner view one preview, until it expires or is
revoked. Its id is the capability of a ``public`` link (22 random url-safe characters in
the URL); a ``signed_in`` link needs, besides, a single-use token that the API mints for a
signed-in viewer (``POST /v1/shares/{id}/open``; a JWT never travels in a URL). Either is
traded on the preview's host for a cookie of its own (never the owner's: another name and
another HMAC purpose), bound to that one host, which only ever admits viewing: the API
takes bearer JWTs only, and the cookie verifies for no other preview or port.

The record (``keys.share``) expires with the link, so gone means revoked or expired on
every replica. Replicas cache records briefly and forget one at once when its revocation
is published on ``keys.ROUTE_CHANGES`` (``keys.SHARE_CHANGE_PREFIX`` + id).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.proxy.signed import sign, verify
from shared import keys
from shared.redis_types import text
from shared.settings import Settings

ACCESS = ("public", "signed_in")
SHARE_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16}")
COOKIE_PURPOSE = "share-cookie"
OPEN_PURPOSE = "share-open"
LINK_PARAM = "preview_share"  # a public link: ?preview_share={share id}
TOKEN_PARAM = "share_token"  # a signed-in viewer's single-use URL: ?share_token=...
CACHE_TTL = 5.0  # seconds a record is trusted without hearing of a revocation
MISS_TTL = 1.0


def new_share_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits, 22 characters


@dataclass(frozen=True)
class Share:
    id: str
    sid: str
    owner: str
    access: str
    ports: bool
    created_at: float
    expires_at: float

    def to_record(self) -> dict[str, str]:
        return {
            "sid": self.sid,
            "owner": self.owner,
            "access": self.access,
            "ports": "1" if self.ports else "",
            "created_at": repr(self.created_at),
            "expires_at": repr(self.expires_at),
        }

    @classmethod
    def from_record(cls, share_id: str, record: dict[str, str]) -> Share:
        return cls(
            id=share_id,
            sid=record.get("sid", ""),
            owner=record.get("owner", ""),
            access=record.get("access", ""),
            ports=bool(record.get("ports")),
            created_at=float(record.get("created_at") or 0),
            expires_at=float(record.get("expires_at") or 0),
        )

    def admits(self, sid: str, owner: str, port: int | None, now: float | None = None) -> bool:
        """Unexpired, for this preview of this owner, and for this port (None: the main one)."""
        now = time.time() if now is None else now
        return (
            self.sid == sid
            and self.owner == owner
            and self.expires_at > now
            and (port is None or self.ports)
        )


async def load(redis: Redis, share_id: str) -> Share | None:
    if not SHARE_ID.fullmatch(share_id):
        return None
    raw = await redis.hgetall(keys.share(share_id))
    if not raw:
        return None
    return Share.from_record(share_id, {text(k): text(v) for k, v in raw.items()})


class ShareCache:
    """Share records by id, cached for CACHE_TTL; the router calls `invalidate` on a
    published revocation (expiry needs none: `Share.admits` checks the clock)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._entries: dict[str, tuple[float, Share | None]] = {}

    async def get(self, share_id: str) -> Share | None:
        now = time.monotonic()
        cached = self._entries.get(share_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        share = await load(self.redis, share_id)
        self._entries[share_id] = (now + (CACHE_TTL if share else MISS_TTL), share)
        if len(self._entries) > 50_000:
            for key in [k for k, (until, _) in self._entries.items() if until <= now]:
                del self._entries[key]
        return share

    def invalidate(self, share_id: str) -> None:
        self._entries.pop(share_id, None)

    def clear(self) -> None:
        self._entries.clear()


# --- values: the viewer's cookie and the signed-in viewer's single-use token ------------


def cookie_value(settings: Settings, host_label: str, share: Share) -> tuple[str, int]:
    """(value, max-age): the share's id signed for this one host (``{id}`` or
    ``{id}-{port}``), living no longer than the share."""
    ttl = cookie_ttl(settings, share)
    return sign(settings.signing_secret, COOKIE_PURPOSE, host_label, share.id, ttl), ttl


def cookie_ttl(settings: Settings, share: Share) -> int:
    """A viewer's cookie's lifetime: PREVIEW_COOKIE_TTL, never beyond the share's end."""
    return max(1, min(settings.cookie_ttl, int(share.expires_at - time.time())))


def cookie_share_id(settings: Settings, host_label: str, value: str) -> str | None:
    return verify(settings.signing_secret, COOKIE_PURPOSE, host_label, value)


def open_token(settings: Settings, share: Share, viewer: str) -> str:
    """`{share id}.{nonce}.{signed}`: one signed-in viewer's way in, once, within
    PREVIEW_PREVIEW_TOKEN_TTL seconds."""
    nonce = secrets.token_urlsafe(12)
    signed = sign(
        settings.signing_secret,
        OPEN_PURPOSE,
        f"{share.id}/{nonce}",
        viewer,
        settings.preview_token_ttl,
    )
    return f"{share.id}.{nonce}.{signed}"


def open_token_parts(settings: Settings, token: str) -> tuple[str, str, str] | None:
    """(share id, viewer, nonce) of a genuine, unexpired token; None otherwise."""
    share_id, _, rest = token.partition(".")
    nonce, _, signed = rest.partition(".")
    if not SHARE_ID.fullmatch(share_id) or not _NONCE.fullmatch(nonce):
        return None
    viewer = verify(settings.signing_secret, OPEN_PURPOSE, f"{share_id}/{nonce}", signed)
    return None if viewer is None else (share_id, viewer, nonce)
