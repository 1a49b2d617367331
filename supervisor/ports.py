"""The TCP ports the user's processes listen on, besides the dev server's main one.

A full-stack project serves more than one port (Vite on 5173 and an API on 3001). The
kernel lists the container's listening sockets in ``/proc/net/tcp`` and ``tcp6`` (state
``0A``) with the uid that opened each. Only the app user's count (the user's code: the
dev server and whatever it spawned, detached or not), never the supervisor's own (its
port forwarders run as root). (Not the processes' ``/proc/{pid}/fd``: reading another
user's needs CAP_SYS_PTRACE, which the container does not have, and should not.) The
gateway serves each port the heartbeat lists at ``{id}-{port}.{PREVIEW_DOMAIN}`` and no
other, so the set is what user code opened, bounded by PREVIEW_MAX_PORTS (the lowest
ports first), and a port that closes drops out at the next heartbeat.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from supervisor.portforward import PortForwarder

log = logging.getLogger(__name__)

LISTEN = "0A"
LOOPBACK = ("127.", "::1", "::ffff:127.")


@dataclass(frozen=True)
class Listener:
    port: int
    address: str  # what it bound: "0.0.0.0", "::", "127.0.0.1", "::1", ...

    @property
    def loopback_only(self) -> bool:
        return self.address.startswith(LOOPBACK)


def _address(hex_address: str) -> str:
    """`0100007F` → `127.0.0.1`; 32 hex digits (tcp6, four little-endian words) → IPv6."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))


def listening_sockets(uid: int, proc: Path = Path("/proc")) -> list[Listener]:
    """Every listening TCP socket of this network namespace that `uid` owns."""
    found: list[Listener] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN or fields[7] != str(uid):
                continue
            local, _, port = fields[1].partition(":")
            try:
                found.append(Listener(int(port, 16), _address(local)))
            except ValueError:
                continue
    return found


def user_ports(uid: int, exclude: set[int], limit: int) -> list[Listener]:
    """The ports the user's processes listen on, minus `exclude`, lowest first, at most
    `limit` (one listener per port: an IPv4 and an IPv6 socket on it count once)."""
    by_port: dict[int, Listener] = {}
    for listener in listening_sockets(uid):
        if listener.port in exclude:
            continue
        known = by_port.get(listener.port)
        # Any socket reachable from outside wins over a loopback-only one.
        if known is None or (known.loopback_only and not listener.loopback_only):
            by_port[listener.port] = listener
    return [by_port[p] for p in sorted(by_port)[: max(0, limit)]]


def inside(bound: str) -> tuple[str, ...]:
    """Where a server that bound `bound` is reached from inside the container, in the
    order to try: `::` is dual-stack unless the server asked otherwise (Node's default),
    and a container without IPv6 has no ::1."""
    if bound in ("0.0.0.0", ""):
        return ("127.0.0.1",)
    return ("127.0.0.1", "::1") if bound == "::" else (bound,)


class PortWatch:
    """The user's extra ports as the gateway can reach them: one bound to loopback only
    (``localhost`` in its config) is relayed from the container's address, as the main
    port is (supervisor/portforward.py); the relay goes when the port closes."""

    def __init__(self, external: str) -> None:
        self.external = external
        self.forwarders: dict[int, PortForwarder] = {}
        # The reported ports and where, in here, each one's server is reached (the port
        # relay's only targets: supervisor/relay.py).
        self.targets: dict[int, tuple[str, ...]] = {}

    async def update(self, listeners: list[Listener]) -> list[int]:
        """The reachable ports among `listeners`, after starting or stopping relays."""
        wanted = {x.port: x for x in listeners if x.loopback_only}
        for port in [p for p in self.forwarders if p not in wanted]:
            await self.forwarders.pop(port).close()
        reachable = [x.port for x in listeners if not x.loopback_only]
        for port, listener in wanted.items():
            if port not in self.forwarders:
                target = "::1" if ":" in listener.address else "127.0.0.1"
                forwarder = PortForwarder(self.external, port, target, port)
                try:
                    await forwarder.start()
                except OSError as exc:
                    log.info("port %d not forwarded: %s", port, exc)
                    continue
                self.forwarders[port] = forwarder
            reachable.append(port)
        by_port = {x.port: x for x in listeners}
        self.targets = {port: inside(by_port[port].address) for port in reachable}
        return sorted(reachable)

    async def close(self) -> None:
        self.targets = {}
        for forwarder in self.forwarders.values():
            with contextlib.suppress(Exception):
                await forwarder.close()
        self.forwarders.clear()
