"""The readiness probe and the port forwarder, against real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from supervisor.portforward import PortForwarder
from supervisor.readiness import backoff, probe
from tests.utils import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, host, port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def http(status: int, seen: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return handler


async def test_probe_status_and_host_header() -> None:
    seen: list[bytes] = []
    async with serve(http(404, seen)) as port:
        result = await probe("127.0.0.1", port, "abc.preview.localhost:8080")
    assert result.status == 404 and result.ready  # any answer below 500 is ready
    assert b"Host: abc.preview.localhost:8080\r\n" in seen[0]
    async with serve(http(502)) as port:
        result = await probe("127.0.0.1", port, "x")
    assert result.status == 502 and not result.ready


async def test_probe_refused_and_silent() -> None:
    refused = await probe("127.0.0.1", free_port(), "x")
    assert not refused.connected and not refused.ready

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    async with serve(silent) as port:
        result = await probe("127.0.0.1", port, "x", response_timeout=0.2)
    assert result.connected and result.status is None and not result.ready


def test_backoff_doubles_up_to_the_cap() -> None:
    assert list(itertools.islice(backoff(), 7)) == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Reads to EOF first: only works if the forwarder passes the half-close on.
    data = await reader.read()
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()


async def test_forwarder_reaches_a_loopback_only_server() -> None:
    port = free_port()
    async with serve(echo, "127.0.0.1", port):
        with pytest.raises(OSError):  # nothing on the "external" address yet
            await asyncio.open_connection("127.0.0.2", port)
        forwarder = PortForwarder("127.0.0.2", port, "127.0.0.1", port)
        await forwarder.start()  # same port, other address: Linux allows it
        try:
            for i in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.2", port)
                writer.write(b"hello %d" % i)
                writer.write_eof()
                assert await reader.read() == b"echo:hello %d" % i
                writer.close()
                await writer.wait_closed()
        finally:
            await forwarder.close()
        with pytest.raises(OSError):  # closed means closed
            await asyncio.open_connection("127.0.0.2", port)


async def test_forwarder_refuses_an_address_the_server_holds() -> None:
    port = free_port()
    async with serve(echo, "0.0.0.0", port):
        with pytest.raises(OSError):
            await PortForwarder("127.0.0.2", port, "127.0.0.1", port).start()
