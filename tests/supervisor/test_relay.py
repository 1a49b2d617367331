"""The port relay (supervisor/relay.py) with the gateway's dialer (gateway/proxy/relay_dial.py)
over real sockets, to a real Node server standing in for the user's API port.

Plays the user's own code and a stranger on the network (THREATS.md): without the
container's secret, with a recorded answer, for a port the heartbeat does not report, for
the relay's own port or the supervisor's, the relay connects nowhere.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.proxy.relay_dial import RelayDialer, parse, relay_address
from shared import relay
from supervisor.relay import PortRelay
from tests.utils import free_port, wait_until

SIGNING = "test-signing-secret"
CID = "pvc-test-relay"
API = (
    'require("node:http").createServer((q, s) => s.end("api:" + q.url))'
    '.listen(+process.argv[1], "127.0.0.1")'
)


@pytest.fixture
def api_port() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(["node", "-e", API, str(port)])
    try:
        wait_until(lambda: _answers(port), 10, "node API server")
        yield port
    finally:
        process.kill()
        process.wait()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
async def relay_on(
    api_port: int,
) -> AsyncIterator[tuple[PortRelay, dict[int, tuple[str, ...]]]]:
    targets = {api_port: ("::1", "127.0.0.1")}  # the first fails: the server is IPv4 only
    server = PortRelay(relay.container_secret(SIGNING, CID), lambda: targets, "127.0.0.1", 0)
    server.port = free_port()
    await server.start()
    try:
        yield server, targets
    finally:
        await server.close()


async def request(sock: object, path: str = "/x") -> bytes:
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    body = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return body


async def test_a_gateway_with_the_secret_reaches_a_reported_port(
    relay_on: tuple[PortRelay, dict[int, tuple[str, ...]]], api_port: int
) -> None:
    server, _ = relay_on
    address = relay_address(CID, f"127.0.0.1:{server.port}", api_port)
    target = parse(address)
    assert target is not None and target.port == api_port
    sock = await RelayDialer(SIGNING).dial(target)
    assert (await request(sock, "/hello")).endswith(b"api:/hello")


async def test_hostile_connections_reach_nothing(
    relay_on: tuple[PortRelay, dict[int, tuple[str, ...]]], api_port: int
) -> None:
    server, targets = relay_on
    at = f"127.0.0.1:{server.port}"
    # Another container's secret (or another deployment's signing secret).
    for dialer, cid in ((RelayDialer("another-secret"), CID), (RelayDialer(SIGNING), "pvc-x")):
        target = parse(relay_address(cid, at, api_port))
        assert target is not None
        with pytest.raises(ConnectionRefusedError):
            await dialer.dial(target)
    # Ports the heartbeat does not report: a closed one, the supervisor's or the relay's own
    # (even were it listed), the dev server's main port.
    targets[server.port] = ("127.0.0.1",)
    for port in (free_port(), server.port, 3000):
        target = parse(relay_address(CID, at, port))
        assert target is not None
        with pytest.raises(ConnectionRefusedError):
            await RelayDialer(SIGNING).dial(target)
    # The user's own code, or a stranger, speaking HTTP at it: a greeting, then NO.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\n\r\n".encode())
    greeting = await reader.readline()
    assert relay.read_greeting(greeting) is not None
    assert await asyncio.wait_for(reader.read(), 5) == relay.REFUSED
    writer.close()
    # A genuine answer recorded from one connection opens nothing on the next.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    nonce = relay.read_greeting(await reader.readline())
    assert nonce is not None
    recorded = relay.answer(relay.container_secret(SIGNING, CID), nonce, api_port)
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await reader.readline()
    writer.write(recorded)
    assert await asyncio.wait_for(reader.read(), 5) == relay.REFUSED
    writer.close()
    # An endless line is cut, never buffered without bound.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await reader.readline()
    writer.write(b"9" * 200_000)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # A port that closed since the heartbeat: refused, not a hang.
    targets.clear()
    target = parse(relay_address(CID, at, api_port))
    assert target is not None
    with pytest.raises(ConnectionRefusedError):
        await RelayDialer(SIGNING).dial(target)


def test_addresses_that_are_no_relay_are_not_parsed() -> None:
    for address in ("127.0.0.1:3000", "relay+@1.2.3.4:5/6", "relay+a b@h:1/2", "relay+c@h:1"):
        assert parse(address) is None, address
    assert parse("relay+pvc-a@[::1]:7/8") == parse("relay+pvc-a@::1:7/8")
