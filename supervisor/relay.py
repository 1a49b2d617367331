"""The port relay: the gateway's way to the user's other ports when it cannot route to the
container's own address (the handshake: shared/relay.py).

One listener on ``RELAY_PORT`` (published at the container's creation, the only port
besides the dev server's), run as root by the supervisor, so no process of the user can
take the port or read the secret. Each connection is greeted with a fresh challenge; an
answer that does not prove the container's relay secret, or names a port the heartbeat
does not report now (the user's own listening ports: never the dev server's main port,
the relay's own or any root-owned socket), is refused (``NO``) and closed. Otherwise the
relay connects to that port where the user's server listens (loopback, or the address
it bound), says ``OK`` and copies bytes both ways. It never connects anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from shared import relay
from supervisor.portforward import PortForwarder

log = logging.getLogger(__name__)


class RelayRefused(OSError):
    """A connection to the relay that gets nowhere (logged without the client's bytes)."""


class PortRelay(PortForwarder):
    """``0.0.0.0:RELAY_PORT`` → the reported port a gateway names and proves."""

    def __init__(
        self,
        secret: str,
        targets: Callable[[], Mapping[int, tuple[str, ...]]],
        host: str = "0.0.0.0",
        port: int = relay.RELAY_PORT,
    ) -> None:
        super().__init__(host, port, "", 0)
        self.secret = secret
        self.targets = targets  # reported port -> the addresses to connect to for it

    async def open_upstream(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonce = relay.challenge()
        client_w.write(relay.greeting(nonce))
        try:
            line = await asyncio.wait_for(client_r.readline(), relay.HANDSHAKE_TIMEOUT)
        except (TimeoutError, ValueError) as exc:  # ValueError: 64 KiB without a newline
            raise RelayRefused("no answer to the relay's challenge") from exc
        port = relay.check(self.secret, nonce, line) if len(line) <= relay.MAX_LINE else None
        addresses = self.targets().get(port, ()) if port is not None else ()
        if port is None or not addresses or port == self.port:
            client_w.write(relay.REFUSED)
            log.info("relay refused a connection (port %s)", port if port else "unproven")
            raise RelayRefused("refused")
        failure: OSError = RelayRefused("no address")
        for address in addresses:
            try:
                upstream = await asyncio.open_connection(address, port)
            except OSError as exc:
                failure = exc
                continue
            client_w.write(relay.OK)
            return upstream
        client_w.write(relay.REFUSED)
        raise failure

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self.port, reuse_address=True
        )
        log.info("port relay on %s:%d", self.listen_host, self.port)
