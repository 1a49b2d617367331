"""Tokens that open a preview in an iframe: the short-lived one in `open_url`, or a JWT."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.signed import sign, verify
from shared.settings import Settings

OPEN_PURPOSE = "open"

# A JWT check: token → user id (sub) or None; provided by the API's auth module.
JwtCheck = Callable[[str], Awaitable[str | None]]


def open_token(settings: Settings, sid: str, user: str) -> str:
    """The ~60 s token for `open_url`: valid for this preview only, no state kept."""
    return sign(settings.signing_secret, OPEN_PURPOSE, sid, user, settings.preview_token_ttl)


def token_checker(
    settings: Settings, check_jwt: JwtCheck | None
) -> Callable[[str, str], Awaitable[str | None]]:
    async def check(token: str, sid: str) -> str | None:
        user = verify(settings.signing_secret, OPEN_PURPOSE, sid, token)
        if user is None and check_jwt is not None and token.count(".") == 2:
            user = await check_jwt(token)
        return user

    return check
