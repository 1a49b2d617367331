"""Who the client is: the TCP peer, or what a trusted proxy says it is.

Behind a TLS proxy (or a NAT) every client shares the proxy's address, so anything keyed
by address (failed authentications, WebSocket caps and budgets, API rate limits, logs)
would lump strangers together. Peers in PREVIEW_TRUSTED_PROXIES are believed: the client
is the rightmost `X-Forwarded-For` hop that is not itself a trusted proxy (hops to its
left were written by the client and prove nothing), and their `X-Forwarded-Proto` is the
scheme. The router rewrites the ASGI scope's ``client`` (and ``scheme``) once, so every
consumer downstream sees the same address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.asgi_types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) → networks; ValueError naming the bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {cidr!r}") from None
    return tuple(networks)


class ClientResolver:
    def __init__(self, trusted: Iterable[str]) -> None:
        self.trusted = parse_networks(trusted)

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def resolve(self, scope: Scope) -> None:
        """Replace ``scope["client"]`` (and ``scheme``) with what a trusted proxy reports."""
        if not self.trusted:
            return
        client = scope.get("client")
        if not client or not self.is_trusted(client[0]):
            return
        forwarded: list[str] = []
        proto = b""
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.extend(bytes(value).decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = bytes(value).split(b",")[-1].strip().lower()
        address = client[0]
        for hop in reversed(forwarded):
            hop = _bare(hop)
            try:
                hop = str(ipaddress.ip_address(hop))
            except ValueError:
                break  # garbage from a client: the last trusted hop is all we know
            address = hop
            if not self.is_trusted(hop):
                break
        scope["client"] = (address, 0 if address != client[0] else client[1])
        if proto in (b"http", b"https"):
            secure = proto == b"https"
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"


def _bare(hop: str) -> str:
    """An address without brackets or port (``[::1]:80``, ``1.2.3.4:80``)."""
    hop = hop.strip()
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop
