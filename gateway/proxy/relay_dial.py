"""Connecting to a user's other port through its container's port relay (shared/relay.py),
when the gateway does not reach the container's own address.

The upstream address of such a port is ``relay+{cid}@{host}:{relay port}/{port}``: the
relay's published port, the port wanted behind it and whose relay it is (its secret is
derived from the container's id; no secret is ever in an address, which may be logged).
``dial`` returns a connected socket with the handshake done, for the HTTP pool and the
WebSocket relay alike; a refusal is a ConnectionRefusedError (the caller's 502).
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass

from shared import relay

PREFIX = "relay+"
_ADDRESS = re.compile(r"relay\+([A-Za-z0-9_.-]+)@(.+):([0-9]{1,5})/([0-9]{1,5})")


@dataclass(frozen=True)
class RelayTarget:
    cid: str
    host: str
    relay_port: int
    port: int


def relay_address(cid: str, published: str, port: int) -> str:
    return f"{PREFIX}{cid}@{published}/{port}"


def parse(address: str) -> RelayTarget | None:
    if not address.startswith(PREFIX):
        return None
    found = _ADDRESS.fullmatch(address)
    if found is None:
        return None
    host = found[2].strip("[]")
    return RelayTarget(found[1], host, int(found[3]), int(found[4]))


class RelayDialer:
    def __init__(self, signing_secret: str, timeout: float = relay.HANDSHAKE_TIMEOUT) -> None:
        self.signing_secret = signing_secret
        self.timeout = timeout

    async def dial(self, target: RelayTarget) -> socket.socket:
        """A socket to `target.port` in the container, past the relay's handshake.
        ConnectionRefusedError when the relay says no; OSError or TimeoutError as a
        connection would."""
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(self._handshake(sock, target), self.timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _handshake(self, sock: socket.socket, target: RelayTarget) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (target.host, target.relay_port))
        nonce = relay.read_greeting(await _line(loop, sock))
        if nonce is None:
            raise ConnectionRefusedError("not a port relay")
        secret = relay.container_secret(self.signing_secret, target.cid)
        await loop.sock_sendall(sock, relay.answer(secret, nonce, target.port))
        if await _line(loop, sock) != relay.OK:
            raise ConnectionRefusedError("the port relay refused the port")


async def _line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """One handshake line, a byte at a time: what follows it belongs to the dev server's
    protocol and must stay in the socket."""
    line = b""
    while not line.endswith(b"\n") and len(line) < relay.MAX_LINE:
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            break
        line += byte
    return line
