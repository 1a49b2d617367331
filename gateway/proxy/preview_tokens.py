"""The token in `open_url` that opens a preview in an iframe: short-lived and single-use.

`{nonce}.{user}.{exp}.{mac}`: an HMAC bound to the preview, the user and a random nonce,
valid for PREVIEW_PREVIEW_TOKEN_TTL seconds and traded for a cookie once: the first use
marks the nonce in Redis (`SET NX`), so a copy replayed from a log, a history or a
`Referer` opens nothing, on whichever replica it lands. A user's JWT is never accepted in
a URL (URLs end up in logs and histories; it would open the whole API).
"""

from __future__ import annotations

import re
import secrets

from redis.asyncio import Redis

from gateway.proxy.signed import sign, verify
from shared import keys
from shared.settings import Settings

OPEN_PURPOSE = "open"
_NONCE = re.compile(r"[A-Za-z0-9_-]{16}")


def open_token(settings: Settings, sid: str, user: str) -> str:
    """A fresh token for `open_url` (two minted in the same second still differ)."""
    nonce = secrets.token_urlsafe(12)
    return (
        nonce
        + "."
        + sign(
            settings.signing_secret,
            OPEN_PURPOSE,
            _bound(sid, nonce),
            user,
            settings.preview_token_ttl,
        )
    )


def token_user(settings: Settings, sid: str, token: str) -> tuple[str, str] | None:
    """(user, nonce) when the token is genuine, unexpired and for this preview."""
    nonce, _, signed = token.partition(".")
    if not _NONCE.fullmatch(nonce):
        return None
    user = verify(settings.signing_secret, OPEN_PURPOSE, _bound(sid, nonce), signed)
    return None if user is None else (user, nonce)


async def spend(redis: Redis, settings: Settings, nonce: str) -> bool:
    """Mark the token used; False when it had been used already."""
    ttl = settings.preview_token_ttl + 5  # outlives the token, whatever the clocks say
    return bool(await redis.set(keys.open_token_used(nonce), b"1", nx=True, ex=ttl))


def _bound(sid: str, nonce: str) -> str:
    return f"{sid}/{nonce}"
