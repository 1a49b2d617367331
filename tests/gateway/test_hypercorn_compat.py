"""gateway.hypercorn_compat's patches, on the real gateway process (hypercorn, uvloop).

The close codes, close grace and unread-body patches are pinned by test_proxy_ws.py,
test_shutdown.py and test_proxy_http.py; this file pins the release of client-closed
connections, the one send per response, and HTTP/2 flow control under the round robin.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypercorn.config import Config
from priority import priority

from gateway import hypercorn_compat
from gateway.hypercorn_compat import RoundRobin
from gateway.server.serve import serve
from tests.gateway.tls_fixtures import TlsFiles, tls_files
from tests.utils import free_port, run_gateway, settings_env, start_redis, wait_until

__all__ = ["tls_files"]  # the fixture, for the flow-control test

CONNECTIONS = 300
REQUESTS = 100
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def keep_alive_request(sock: socket.socket) -> bytes:
    """One request on a keep-alive connection (no `Connection: close`): the response."""
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_connections_the_client_closes_release_their_fds_promptly() -> None:
    """Without the patch each one keeps its socket until keep_alive_timeout (75 s)."""
    redis = start_redis(bind_bridge=False)
    try:
        with run_gateway(settings_env(redis_url=redis.url)) as gateway:
            pid = gateway.process.pid
            address = ("127.0.0.1", gateway.port)
            live = socket.create_connection(address, timeout=10)
            try:
                assert keep_alive_request(live) == b'{"status":"ok"}'
                baseline = open_fds(pid)
                for _ in range(CONNECTIONS):
                    with socket.create_connection(address, timeout=10) as sock:
                        keep_alive_request(sock)
                counts = [open_fds(pid)]

                def released() -> bool:
                    counts.append(open_fds(pid))
                    return counts[-1] <= baseline + 10

                try:
                    wait_until(released, 5, f"gateway fds back near {baseline}")
                except AssertionError as error:
                    raise AssertionError(f"{error}: {counts[0]} -> {counts[-1]}") from None
                # The client that stayed keeps its keep-alive connection.
                assert keep_alive_request(live) == b'{"status":"ok"}'
            finally:
                live.close()
    finally:
        redis.stop()


def write_calls(pid: int) -> int:
    """The write system calls `pid` made so far (sends on its sockets among them)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/pid/io")


def test_a_response_goes_out_in_one_send() -> None:
    """Hypercorn wrote the head and the body on their own (two sends per response, a
    third of the proxy's CPU on loopback): what one turn of the loop writes is one send."""
    redis = start_redis(bind_bridge=False)
    try:
        with run_gateway(settings_env(redis_url=redis.url)) as gateway:
            pid = gateway.process.pid
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
                keep_alive_request(sock)  # the lifespan's and the first request's writes
                before = write_calls(pid)
                for _ in range(REQUESTS):
                    assert keep_alive_request(sock) == b'{"status":"ok"}'
                per_request = (write_calls(pid) - before) / REQUESTS
            assert per_request < 1.2, per_request
    finally:
        redis.stop()


def test_http2_streams_take_turns_without_a_priority_tree() -> None:
    """What hypercorn's send task asks of its scheduler: streams with data take turns;
    blocked ones are skipped; unknown ones are refused as the priority tree refuses them."""
    turns = RoundRobin()
    for stream_id in (1, 3, 5):
        turns.insert_stream(stream_id)
    with pytest.raises(priority.DuplicateStreamError):
        turns.insert_stream(3)
    assert [next(turns) for _ in range(4)] == [1, 3, 5, 1]
    turns.block(3)
    assert [next(turns) for _ in range(3)] == [5, 1, 5]
    turns.unblock(3)
    turns.remove_stream(5)
    assert [next(turns) for _ in range(3)] == [1, 3, 1]
    turns.block(1)
    turns.block(3)
    with pytest.raises(priority.DeadlockError):
        next(turns)
    for refused in (turns.block, turns.unblock, turns.remove_stream, turns.reprioritize):
        with pytest.raises(priority.MissingStreamError):
            refused(7)


async def test_idle_keep_alive_connections_close_on_time_and_at_shutdown() -> None:
    """The keep-alive timer (a timer handle, not a task per request) still closes a
    connection idle for keep_alive_timeout, and every idle one when the server stops."""
    hypercorn_compat.install()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    config = Config()
    config.bind = [f"127.0.0.1:{free_port()}"]
    config.keep_alive_timeout = 0.5
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, config.create_sockets(), stop.wait))
    host, port = config.bind[0].rsplit(":", 1)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(10):  # the listener is up once the lifespan started
            while True:
                try:
                    return await asyncio.open_connection(host, int(port))
                except ConnectionRefusedError:
                    await asyncio.sleep(0.05)

    async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")

    try:
        reader, writer = await connect()
        for _ in range(20):  # the timer restarted after each response
            await request(reader, writer)
        began = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        assert asyncio.get_running_loop().time() - began >= 0.4
        writer.close()
        config.keep_alive_timeout = 60
        reader, writer = await connect()
        await request(reader, writer)
        stop.set()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at shutdown
        writer.close()
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


STREAMS = 100  # hypercorn's h2_max_concurrent_streams, as a 400-module page asks
BODY = 100_000  # each response several times the client's windows below
WINDOW = 1024  # the client's stream window: every response waits on WINDOW_UPDATEs


async def test_http2_flow_control_over_many_streams_finishes(tls_files: TlsFiles) -> None:
    """Issue 18's suspect: our round robin and batched sends over hypercorn's flow control.
    A client with a tiny stream window (and the 64 KiB connection window it grants only as
    it reads) gets 100 concurrent large responses over TLS: every one must complete, each
    byte sent only once the client has opened its window."""
    hypercorn_compat.install()
    chunk = b"x" * 20_000

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        length = str(BODY).encode()
        headers = [(b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(BODY // len(chunk)):
            more = i < BODY // len(chunk) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    config = Config()
    config.bind = [f"127.0.0.1:{free_port()}"]
    config.certfile, config.keyfile = str(tls_files.cert), str(tls_files.key)
    config.alpn_protocols = ["h2"]
    sockets = config.create_sockets()
    (listener,) = sockets.secure_sockets
    listener.listen()  # connections queue on it before hypercorn's loop starts
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, sockets, stop.wait))
    try:
        reader, writer = await asyncio.open_connection(
            sock=socket.create_connection(listener.getsockname()),
            ssl=tls_files.context(("h2",)),
            server_hostname="x.preview.localhost",
        )
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW}
        )
        client.initiate_connection()
        streams = []
        for _ in range(STREAMS):
            stream_id = client.get_next_available_stream_id()
            headers = [(":method", "GET"), (":path", f"/{stream_id}"), (":scheme", "https")]
            client.send_headers(stream_id, [*headers, (":authority", "x")], end_stream=True)
            streams.append(stream_id)
        writer.write(client.data_to_send())
        received = dict.fromkeys(streams, 0)
        ended: set[int] = set()
        frames: list[int] = []

        async def read_all() -> None:
            while len(ended) < STREAMS:
                data = await reader.read(65536)
                assert data, "the server closed the connection"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        assert len(event.data) <= WINDOW  # the window was respected
                        received[event.stream_id] += len(event.data)
                        frames.append(len(event.data))
                        client.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    if isinstance(event, h2.events.StreamEnded):
                        ended.add(event.stream_id)
                    assert not isinstance(event, h2.events.StreamReset), event
                writer.write(client.data_to_send())

        await asyncio.wait_for(read_all(), 60)
        assert received == dict.fromkeys(streams, BODY)
        assert len(frames) >= STREAMS * BODY // WINDOW  # the window path was taken
        writer.close()
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
        listener.close()
