"""Whether the proxy reaches a Docker host's containers at their own address.

A port Docker publishes is served by docker-proxy, a userland copy on every proxied
request (on this machine it halved what a dev server could be sent: 23k against 46k
requests/s, bench/bench_proxy.py). When the gateway can reach the container's address
on our network (same machine: the bridge is local; or a routed container network), the
route is that address and the container's port instead; otherwise the published port,
as before. Decided once per Docker host and process by connecting to the first new
container's address: an answer, or a refusal (nothing listens yet, but its kernel
answered), means reachable; a timeout or an unreachable network means not. A refusal can
also come from a firewall on the way, so for engines on this machine the address must
also be on a directly attached network (the bridge), never one reached through a router.

PREVIEW_DIRECT_UPSTREAM: ``auto`` tries this for engines on this machine (a unix socket)
only. A remote engine's bridge addresses (172.18.0.x) may also exist on the gateway's own
machine, where they would reach a different container: ``on`` is for operators whose
container networks are routed and unique; ``off`` always uses the published port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0
MODES = ("auto", "on", "off")


def allowed(mode: str, engine_url: str) -> bool:
    """May this engine's containers be reached directly at all (before any probe)?"""
    if mode == "off":
        return False
    return mode == "on" or engine_url.startswith("unix://")


def on_local_link(ip: str, routes: Path = Path("/proc/net/route")) -> bool:
    """Is `ip` on a network attached to this machine (a route without a gateway)?"""
    try:
        address = int(ipaddress.IPv4Address(ip))
        lines = routes.read_text().splitlines()[1:]
    except (ValueError, OSError):
        return False
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        # Destination, Gateway and Mask are little-endian hex.
        dest, gateway, mask = (
            int.from_bytes(bytes.fromhex(f), "little") for f in (fields[1], fields[2], fields[7])
        )
        if gateway == 0 and mask != 0 and address & mask == dest:
            return True
    return False


async def reachable(ip: str, port: int, local: bool = True, timeout: float = PROBE_TIMEOUT) -> bool:
    """Can the proxy reach `ip`? With `local`, only on a directly attached network."""
    if local and not on_local_link(ip):
        log.info("container address %s is not on this machine: using published ports", ip)
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except ConnectionRefusedError:
        return True  # the container's kernel answered: the address is routed to it
    except (OSError, TimeoutError) as exc:
        log.info("container address %s not reachable (%s): using published ports", ip, exc)
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
