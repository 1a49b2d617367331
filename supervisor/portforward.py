"""Forward the container's external address to a dev server that bound only loopback.

Docker delivers the published port to the container's eth0 address. A dev server that
listens on 127.0.0.1:P (``localhost`` in its config) never sees that traffic. Linux lets
us bind eth0's address on the same port P while the server holds 127.0.0.1:P, so we relay
``external:P -> 127.0.0.1:P`` (what E2B's in-sandbox daemon does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

log = logging.getLogger(__name__)

CHUNK = 65536


def external_address() -> str:
    """The container's own address (eth0), as Docker's /etc/hosts entry says."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


async def copy_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction of a relayed connection until its end."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be talking
    except OSError:
        writer.close()


class PortForwarder:
    """A TCP relay from ``listen_host:port`` to ``target_host:target_port``."""

    def __init__(self, listen_host: str, port: int, target_host: str, target_port: int) -> None:
        self.listen_host = listen_host
        self.port = port
        self.target_host = target_host
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; raises OSError when the address is taken (the server listens there
        itself, so no forwarding is needed)."""
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self.port, reuse_address=True
        )
        log.info(
            "forwarding %s:%d -> %s:%d",
            self.listen_host,
            self.port,
            self.target_host,
            self.target_port,
        )

    async def open_upstream(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection a client is relayed to (OSError: none, the client is closed)."""
        return await asyncio.open_connection(self.target_host, self.target_port)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            upstream_r, upstream_w = await self.open_upstream(client_r, client_w)
            await asyncio.gather(
                copy_stream(client_r, upstream_w), copy_stream(upstream_r, client_w)
            )
        except OSError as exc:
            log.debug("forwarded connection ended: %s", exc)
        finally:
            self._connections.discard(task)
            for w in (client_w, upstream_w):
                if w is not None:
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
