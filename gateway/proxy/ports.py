"""A preview's other ports: which are open, and where the gateway reaches them.

The supervisor lists the ports the user's processes listen on in its heartbeat
(supervisor/ports.py), with the container's address on the Docker network. The gateway
serves ``{id}-{port}`` only for a port in the heartbeat of the container serving that very
session: a port of another preview, one that closed, or any other number is a 404. No
port is published on the Docker host for them: the gateway connects to the container's
address when its engine is reached directly (gateway/containers/direct.py), else through
the container's port relay, whose published address the container's record holds
(``relay``; gateway/proxy/relay_dial.py, supervisor/relay.py).

Read per route at most every PORTS_TTL seconds (a port that closes disappears within a
heartbeat and this).
"""

from __future__ import annotations

import ipaddress
import time

from redis.asyncio import Redis

from gateway.asgi_types import Scope, header
from gateway.proxy.relay_dial import relay_address
from gateway.proxy.routes import Route
from gateway.proxy.vhosts import Destination, HostRules
from shared import keys
from shared.messages import Heartbeat
from shared.redis_types import text

PORTS_TTL = 1.0
RELAY = "relay:"  # a cached address that is the container's port relay's published one


def sibling_preflight(hosts: HostRules, where: Destination, scope: Scope) -> bool:
    """A CORS preflight from another host of the same preview (its page on the main port
    calling its API on another). Browsers send preflights without cookies, so the cookie
    check would refuse every one: the gateway answers them itself (never the dev server,
    which only authenticated requests reach), and the real request that follows carries
    the cookie and gets the app's own CORS answer."""
    if scope["method"] != "OPTIONS" or header(scope, b"access-control-request-method") is None:
        return False
    origin = (header(scope, b"origin") or b"").decode("latin-1")
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False
    source = hosts.classify_name(rest)
    return source.sid == where.sid and source.label != where.label and bool(where.sid)


def preflight_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """Allow the asking origin, its method and headers, with credentials (the cookie of
    the host it calls is what authenticates the real request)."""
    asked = header(scope, b"access-control-request-headers")
    headers = [
        (b"access-control-allow-origin", header(scope, b"origin") or b""),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", header(scope, b"access-control-request-method") or b""),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
    ]
    if asked:
        headers.append((b"access-control-allow-headers", asked))
    return headers


def reachable_address(address: str | None) -> bool:
    """A private IPv4 address (Docker's networks), never loopback, link-local or
    unspecified: the heartbeat's word is checked, so no value in it turns the gateway on
    its own host or the wider network."""
    try:
        ip = ipaddress.IPv4Address(address or "")
    except ValueError:
        return False
    return ip.is_private and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


class PortTable:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._entries: dict[str, tuple[float, str, frozenset[int]]] = {}

    async def upstream(self, route: Route, port: int) -> str | None:
        """Where this open port of the route's session is reached: `address:port` at the
        container's own address, or through its port relay; else None."""
        address, ports = await self._lookup(route)
        if port not in ports or not address:
            return None
        if address.startswith(RELAY):
            return relay_address(route.container, address[len(RELAY) :], port)
        return f"{address}:{port}"

    async def open_ports(self, route: Route) -> frozenset[int]:
        """The other ports of the route's session that the gateway serves now."""
        address, ports = await self._lookup(route)
        return ports if address else frozenset()

    async def _lookup(self, route: Route) -> tuple[str, frozenset[int]]:
        now = time.monotonic()
        cached = self._entries.get(route.sid)
        if cached is None or cached[0] <= now or not route.container:
            address, ports = await self._read(route)
            cached = (now + PORTS_TTL, address, ports)
            self._entries[route.sid] = cached
            if len(self._entries) > 50_000:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        return cached[1], cached[2]

    async def _read(self, route: Route) -> tuple[str, frozenset[int]]:
        if not route.container:
            return "", frozenset()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.heartbeat(route.container))
            pipe.hget(keys.container(route.container), "relay")
            beat, relay = await pipe.execute()
        heartbeat = Heartbeat.read(beat)
        if heartbeat is None or heartbeat.session_id != route.sid:
            return "", frozenset()
        if relay:  # not routed to the container's address: its relay's published port
            return RELAY + text(relay), frozenset(heartbeat.ports)
        address = heartbeat.address or ""
        if not reachable_address(address):
            return "", frozenset()
        return address, frozenset(heartbeat.ports)

    def invalidate(self, sid: str) -> None:
        self._entries.pop(sid, None)
