"""The owner's (or a port-including share viewer's) cookie on a preview's port hosts,
without the app opening each port's own link.

Cookies stay host-only: a parent-domain cookie would reach every other user's preview
hosts (and a PREVIEW_DOMAIN on the Public Suffix List refuses them anyway). So each port
host ``{id}-{port}`` gets a cookie of its own through redirects, made only for a browser
navigation (a page or a frame, never fetch(), scripts or WebSockets):

- **main host first**: an authenticated navigation on ``{id}``, while the heartbeat lists
  ports this browser was not given yet (a signed mark on the main host, ``pv_g_{id}``,
  lists those it was), is redirected to ``{id}-{port}/__preview/hop?t=…&b=main&r=PATH``;
  the port host trades the token for its cookie and redirects back to PATH on the main
  host. One port per round trip until the mark lists them all, then the page itself.
- **port host first**: a navigation to ``{id}-{port}`` without a cookie is redirected to
  the main host's ``/__preview/hop?port=P&r=PATH``, which, when the main host's cookie (or
  a share admitting ports) is valid, mints a token and sends the browser back to the port
  host, which sets its cookie and redirects to PATH on itself.

A token is ``{nonce}.{signed}``: an HMAC over the port host's label, the nonce, the return
kind and path, for a grantee (``owner:{user}`` or ``share:{id}``), valid for
PREVIEW_PREVIEW_TOKEN_TTL; the grantee waits in Redis under the nonce, deleted when the
token is traded (used once, on any replica). The URL holds no JWT, no share id;
the return is a path on the preview's own main or port host, fixed by the token, never a
URL from the query. Mints are counted per grantee and port host (``keys.port_hops``): a
browser that keeps no cookie gets a 429 page, not an endless loop.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.asgi_types import Scope, header
from gateway.observability import instruments
from gateway.proxy import cookies
from gateway.proxy.ports import PortTable
from gateway.proxy.preview_auth import PreviewAuth, same_host_location
from gateway.proxy.routes import Route
from gateway.proxy.share_access import GONE, Opened, ShareAccess, is_navigation
from gateway.proxy.shares import Share, cookie_ttl
from gateway.proxy.signed import sign, verify
from gateway.proxy.vhosts import Destination
from shared import keys
from shared.redis_types import text
from shared.settings import Settings

HOP_PATH = "/__preview/hop"
GRANTED = "pv_g_"
HOP_PURPOSE = "port-hop"
GRANTED_PURPOSE = "ports-granted"
HOP_WINDOW = 60  # seconds over which mints per grantee and port host are counted
# Mints per port host and grantee in a window: one per cookie lifetime is the norm; a few
# more for cleared jars and several tabs.
HOPS_PER_WINDOW = 8
MAX_MARKED = 64
_NONCE = re.compile(r"[A-Za-z0-9_-]{16}")
_BACK = ("main", "port")
_NO_STORE = [(b"referrer-policy", b"no-referrer")]  # send_body adds no-store
NO_PORTS = "this share link does not include the preview's other ports"
EXPIRED_HOP = "this link has expired, was used already or is for another host"
LOOPING = "this browser keeps no cookie for the preview's port host (are cookies blocked?)"


@dataclass(frozen=True)
class Grantee:
    """Whose cookie a port host gets: the preview's owner, or a viewer of `share`."""

    owner: str
    share: Share | None = None

    @property
    def key(self) -> str:
        return f"share:{self.share.id}" if self.share else f"owner:{self.owner}"


Hop = Opened  # the same outcome as opening a share link: a redirect or a refusal


def return_path(raw: str) -> str | None:
    """A path on the same host as ``same_host_location`` writes one, else None: no
    scheme, no ``//`` or backslash (another host to a browser), nothing unprintable."""
    if not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return None
    return raw if all(33 <= ord(c) < 127 for c in raw) else None


async def hop_token(
    redis: Redis, settings: Settings, label: str, grantee: str, back: str, path: str
) -> str:
    """A fresh token: the grantee is kept in Redis under the nonce (not in the URL), the
    signature binds the nonce to the port host, the return kind and the path."""
    nonce = secrets.token_urlsafe(12)
    ttl = settings.preview_token_ttl
    await redis.set(keys.port_hop(nonce), grantee.encode(), ex=ttl)
    bound = _bound(label, nonce, back, path)
    return f"{nonce}.{sign(settings.signing_secret, HOP_PURPOSE, bound, 'hop', ttl)}"


async def hop_grantee(
    redis: Redis, settings: Settings, label: str, token: str, back: str, path: str
) -> str | None:
    """The grantee of a genuine, unexpired, unused token for this host, return and path;
    the token is spent."""
    nonce, _, signed = token.partition(".")
    if not _NONCE.fullmatch(nonce):
        return None
    if verify(settings.signing_secret, HOP_PURPOSE, _bound(label, nonce, back, path), signed):
        grantee = await redis.getdel(keys.port_hop(nonce))
        return None if grantee is None else text(grantee)
    return None


def _bound(label: str, nonce: str, back: str, path: str) -> str:
    return f"{label}/{nonce}/{back}/{path}"


def _query(scope: Scope) -> dict[str, str]:
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


class PortGrants:
    def __init__(self, settings: Settings, auth: PreviewAuth, shares: ShareAccess) -> None:
        self.settings = settings
        self.auth = auth
        self.shares = shares

    def url(self, scope: Scope, label: str, path: str) -> str:
        """`path` on another host of the same preview, as this request reached this one
        (scheme, and the listener's port in the Host header)."""
        host = (header(scope, b"host") or b"").decode("latin-1").strip()
        rest = host.partition(".")[2]
        scheme = "https" if self.auth.https(scope) else "http"
        return f"{scheme}://{label}.{rest}{path}"

    # --- the router's entry points ---------------------------------------------------

    async def first_hop(
        self, redis: Redis, ports: PortTable | None, route: Route, grantee: Grantee, scope: Scope
    ) -> list[tuple[bytes, bytes]] | None:
        """A main-host navigation's detour through an open port it has no cookie for."""
        if ports is None or not is_navigation(scope):
            return None
        try:
            found = await ports.open_ports(route)
            return await self.next_hop(redis, route.sid, grantee, found, scope)
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            return None  # the page itself; the ports' cookies can wait

    async def hop(
        self,
        redis: Redis,
        ports: PortTable,
        where: Destination,
        route: Route,
        grantee: Grantee | None,
        scope: Scope,
    ) -> Hop:
        """``/__preview/hop``: on a port host, trade a token for its cookie (`grantee`
        None: the request has none yet); on the main host, mint one for `grantee`."""
        try:
            if grantee is None:
                return await self.trade(redis, where, route.user, scope)
            found = await ports.open_ports(route)
            return await self.mint(redis, where.sid, grantee, found, scope)
        except (RedisError, OSError):
            instruments.REDIS_ERRORS.inc()  # observability hook
            return Hop(503, "unavailable", "state store unreachable")

    # --- main host first --------------------------------------------------------------

    async def next_hop(
        self, redis: Redis, sid: str, grantee: Grantee, ports: frozenset[int], scope: Scope
    ) -> list[tuple[bytes, bytes]] | None:
        """The redirect of an authenticated navigation on the main host to the first open
        port this browser has no cookie for; None: serve the page."""
        if not ports or not is_navigation(scope) or not self._admits_ports(sid, grantee):
            return None
        granted = self.marked(scope, sid, grantee)
        missing = sorted(ports - granted)
        if not missing:
            return None
        label = f"{sid}-{missing[0]}"
        if await self._over(redis, label, grantee):
            return None  # the browser drops the cookies: the page, without the ports
        path = same_host_location(scope)
        token = await hop_token(redis, self.settings, label, grantee.key, "main", path)
        query = urlencode({"t": token, "b": "main", "r": path})
        marked = ",".join(str(p) for p in sorted(granted | {missing[0]})[:MAX_MARKED])
        ttl = self._ttl(grantee)
        secret = self.settings.signing_secret
        value = sign(secret, GRANTED_PURPOSE, _mark(sid, grantee), marked, ttl)
        name = cookies.cookie_name(sid, self.auth.https(scope), GRANTED)
        mark = self.auth.set_cookie(name, value, ttl, scope)
        location = self.url(scope, label, f"{HOP_PATH}?{query}")
        return [(b"location", location.encode()), (b"set-cookie", mark.encode()), *_NO_STORE]

    def marked(self, scope: Scope, sid: str, grantee: Grantee) -> frozenset[int]:
        """The ports this browser was sent to for `grantee`, by the main host's mark."""
        for value in cookies.candidates(scope["headers"], sid, GRANTED):
            listed = verify(
                self.settings.signing_secret, GRANTED_PURPOSE, _mark(sid, grantee), value
            )
            if listed is not None:
                return frozenset(int(p) for p in listed.split(",") if p.isdigit())
        return frozenset()

    # --- port host first --------------------------------------------------------------

    def to_main(self, where: Destination, scope: Scope) -> list[tuple[bytes, bytes]]:
        """A cookieless navigation on a port host: ask the main host for a token."""
        query = urlencode({"port": str(where.port), "r": same_host_location(scope)})
        location = self.url(scope, where.sid, f"{HOP_PATH}?{query}")
        return [(b"location", location.encode()), *_NO_STORE]

    async def mint(
        self, redis: Redis, sid: str, grantee: Grantee, ports: frozenset[int], scope: Scope
    ) -> Hop:
        """The main host's hop: a token for the asked port host, for an authenticated
        browser (the caller checked the cookie), back to the asked path there."""
        asked = _query(scope)
        raw_port = asked.get("port", "")
        port = int(raw_port) if raw_port.isdigit() and len(raw_port) <= 5 else 0
        path = return_path(asked.get("r", "/"))
        if not 0 < port <= 65535 or path is None:
            return Hop(400, "bad_request", "port must be a port number and r a path")
        if not self._admits_ports(sid, grantee):
            return Hop(403, "forbidden", NO_PORTS)
        if port not in ports:
            return Hop(404, "not_found", f"nothing of this preview listens on port {port}")
        label = f"{sid}-{port}"
        if await self._over(redis, label, grantee):
            return Hop(429, "rate_limited", LOOPING)
        token = await hop_token(redis, self.settings, label, grantee.key, "port", path)
        query = urlencode({"t": token, "b": "port", "r": path})
        location = self.url(scope, label, f"{HOP_PATH}?{query}")
        return Hop(302, headers=[(b"location", location.encode()), *_NO_STORE])

    # --- on the port host: the token for its cookie ---------------------------------------

    async def trade(self, redis: Redis, where: Destination, owner: str, scope: Scope) -> Hop:
        """A port host's hop: spend the token, set this host's cookie, go back."""
        asked = _query(scope)
        back, path = asked.get("b", ""), return_path(asked.get("r", ""))
        if back not in _BACK or path is None:
            return Hop(400, "bad_request", "not a hop this gateway made")
        token = asked.get("t", "")
        grantee = await hop_grantee(redis, self.settings, where.label, token, back, path)
        if grantee is None:
            return Hop(401, "invalid_token", EXPIRED_HOP)
        kind, _, ident = grantee.partition(":")
        share: Share | None = None
        if kind == "share":
            share = await self.shares.records(redis).get(ident)
            if share is None or not share.admits(where.sid, owner, where.port):
                return Hop(404, "not_found", GONE)
        elif kind != "owner" or ident != owner:
            return Hop(401, "invalid_token", "this link is not for this preview's owner")
        if share is not None:
            cookie = self.shares.viewer_cookie(where.label, share, scope)
        else:
            cookie = self.auth.auth_cookie(where.label, owner, scope)
        location = self.url(scope, where.sid, path) if back == "main" else path
        headers = [(b"location", location.encode()), (b"set-cookie", cookie.encode())]
        return Hop(302, headers=headers + _NO_STORE)

    # --- helpers ----------------------------------------------------------------------------

    def _admits_ports(self, sid: str, grantee: Grantee) -> bool:
        return grantee.share is None or grantee.share.admits(sid, grantee.owner, 1)

    def _ttl(self, grantee: Grantee) -> int:
        """The mark lives no longer than the cookies it stands for (made just after it)."""
        if grantee.share is None:
            return self.settings.cookie_ttl
        return cookie_ttl(self.settings, grantee.share)

    async def _over(self, redis: Redis, label: str, grantee: Grantee) -> bool:
        key = keys.port_hops(label, grantee.key)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, HOP_WINDOW, nx=True)
            count, _ = await pipe.execute()
        return int(count) > HOPS_PER_WINDOW


def _mark(sid: str, grantee: Grantee) -> str:
    return f"{sid}/{grantee.key}"
