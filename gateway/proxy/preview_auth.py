"""Who may see a preview: the single-use link token traded for a per-host cookie, the
cookie on every later request, and the limit on failures.

Failures are counted per (preview, client address) and only after the credential was
checked: a valid token or cookie is never refused because of anyone's failures, and a
stranger's bad cookies behind a shared address (a TLS proxy, a NAT) lock nobody out. They
are counted by the API's limiter (every rule of PREVIEW_RATE_LIMIT_AUTH_FAILURES, one
moving window), so a hostile client meets the same limit on both.
"""

from __future__ import annotations

import time
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.asgi_types import Scope, header
from gateway.proxy import cookies
from gateway.proxy.preview_tokens import spend, token_user
from gateway.proxy.signed import sign, verify
from shared import keys
from shared.settings import Settings

COOKIE_PURPOSE = "cookie"
EXPIRED = "the preview link has expired or is not yours: open it again"
USED = "this preview link was used already: open the preview again"
# Bytes a location may keep as they are; anything else (a backslash, which browsers read as
# a slash, controls, spaces) is percent-encoded.
_LOCATION_SAFE = "/%:@!$&'()*+,;=-._~"
# Query parameters that carry a way in (the owner's token, a share link, a signed-in
# viewer's token): dropped from every redirect after they were traded for a cookie.
CREDENTIAL_PARAMS = frozenset({"preview_token", "preview_share", "share_token"})
# Cookie headers checked already (a page's hundreds of modules carry the same one): each
# remembered with the user its valid cookie is for, until that cookie expires or at most
# VERIFIED_FOR seconds. Only valid ones, only short headers, at most VERIFIED_MAX of them.
VERIFIED_FOR = 60.0
VERIFIED_MAX = 10_000
VERIFIED_HEADER_MAX = 4096  # bytes of Cookie headers a remembered check may hold


def same_host_location(scope: Scope) -> str:
    """The request's path and query, without the token, as a Location on this host.

    `//evil/x`, `/\\evil/x` or an absolute-form target would send the browser off-site
    once the token is dropped: leading slashes collapse to one, backslashes and anything
    unusual are percent-encoded, and only the path of an absolute target is kept."""
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    if not path.startswith("/"):
        path = urlsplit(path).path
    location = "/" + quote(path, safe=_LOCATION_SAFE, encoding="latin-1").lstrip("/")
    query = [
        (k, v)
        for k, v in parse_qsl(
            scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
        )
        if k not in CREDENTIAL_PARAMS
    ]
    return location + "?" + urlencode(query) if query else location


def client_address(scope: Scope) -> str:
    """The client's address, as resolved from trusted proxies (gateway/proxy/clients.py)."""
    return str((scope.get("client") or ("?",))[0])


class FailureLimits(Protocol):
    """The API's rate limits (gateway/api/ratelimit.py), shared for failed authentications."""

    async def over(self, kind: str, key: str) -> tuple[object, int] | None: ...


class PreviewAuth:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._verified: dict[tuple[str, tuple[bytes, ...]], tuple[str, float]] = {}

    async def token_user(self, redis: Redis, sid: str, token: str) -> tuple[str | None, str]:
        """(user, "") for a genuine, unused token, which is now spent; else (None, why).
        RedisError when the token cannot be spent (single use needs the shared store)."""
        found = token_user(self.settings, sid, token)
        if found is None:
            return None, EXPIRED
        if not await spend(redis, self.settings, found[1]):
            return None, USED
        return found[0], ""

    def cookie_ok(self, sid: str, user: str, scope: Scope) -> bool:
        """Any of the request's cookies named as this preview's is valid for `user`: junk
        of the same name planted by another page (it comes first when older) never hides
        the real one."""
        raw = tuple(bytes(v) for k, v in scope["headers"] if k == b"cookie")
        key = (sid, raw)
        now = time.time()
        known = self._verified.get(key)
        if known is not None and known[0] == user and known[1] > now:
            return True
        for value in cookies.candidates(scope["headers"], sid):
            if verify(self.settings.signing_secret, COOKIE_PURPOSE, sid, value) == user:
                if sum(map(len, raw)) <= VERIFIED_HEADER_MAX:
                    if len(self._verified) >= VERIFIED_MAX:
                        self._verified.clear()
                    expires = int(value.split(".")[1])  # verified: the signed expiry
                    self._verified[key] = (user, min(expires, now + VERIFIED_FOR))
                return True
        return False

    def redirect_headers(
        self, sid: str, user: str | None, scope: Scope
    ) -> list[tuple[bytes, bytes]]:
        """The login's 302 to the same path without the token; a fresh cookie for `user`."""
        headers = [(b"location", same_host_location(scope).encode("latin-1"))]
        if user is not None:
            # Whatever another page planted for the parent domain goes (a junk pv_{sid},
            # kilobytes of cookies): opening the preview again always gets it back.
            headers += cookies.expire_parent_cookies(
                scope["headers"], self.settings.domain, self.secure_context(scope)
            )
            headers.append((b"set-cookie", self.auth_cookie(sid, user, scope).encode()))
        return headers

    def auth_cookie(self, sid: str, user: str, scope: Scope) -> str:
        ttl = self.settings.cookie_ttl
        value = sign(self.settings.signing_secret, COOKIE_PURPOSE, sid, user, ttl)
        # On https `__Host-`: the browser then refuses that name from any other host and
        # with any Domain, so no other preview can set or shadow it.
        return self.set_cookie(cookies.cookie_name(sid, self.https(scope)), value, ttl, scope)

    def set_cookie(self, name: str, value: str, ttl: int, scope: Scope) -> str:
        """A Set-Cookie value for this host only (no Domain), as an iframe needs it."""
        cookie = f"{name}={value}; Path=/; Max-Age={ttl}; HttpOnly"
        if self.secure_context(scope):
            # What an iframe needs: sent in third-party context, partitioned by top site.
            cookie += "; Secure; SameSite=None; Partitioned"
        else:
            # Browsers drop SameSite=None without Secure; on plain http (not localhost) the
            # preview then works top-level but not inside a cross-site iframe.
            cookie += "; SameSite=Lax"
        return cookie

    def https(self, scope: Scope) -> bool:
        return self.settings.preview_scheme == "https" or scope.get("scheme") in ("https", "wss")

    def secure_context(self, scope: Scope) -> bool:
        """https, or a *.localhost host, which browsers treat as secure even over http."""
        if self.https(scope):
            return True
        host = (header(scope, b"host") or b"").decode("latin-1").lower().rsplit(":", 1)[0]
        return host == "localhost" or host.endswith(".localhost")

    async def over_limit(self, limits: FailureLimits, sid: str, scope: Scope) -> int | None:
        """Count one failure of this client on this preview; once over the limit, the
        seconds until it has room again."""
        key = keys.auth_failures(sid, client_address(scope))
        try:
            over = await limits.over("auth_failures", key)
        except (RedisError, OSError):
            return None  # the limit is a guard, not a dependency
        return None if over is None else over[1]


def query_token(scope: Scope) -> str | None:
    """The `preview_token` query parameter of an `open_url`, if any."""
    query: bytes = scope.get("query_string", b"")
    if b"preview_token=" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == "preview_token":
            return value
    return None


def same_origin(scope: Scope) -> bool:
    """A preview's WebSockets come from its own pages (the HMR client), nowhere else."""
    raw = header(scope, b"origin")
    if raw is None:
        return True  # non-browser clients send no Origin; the cookie still had to match
    origin = raw.decode("latin-1").lower().split("://", 1)[-1]
    return origin == (header(scope, b"host") or b"").decode("latin-1").lower()
