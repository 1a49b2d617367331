"""The gateway's listeners: hypercorn's configuration, and TLS on PREVIEW_TLS_BIND.

With PREVIEW_TLS_CERT/_KEY the gateway listens twice: plain http on PREVIEW_BIND (as
before) and TLS on PREVIEW_TLS_BIND, where ALPN picks HTTP/2 or HTTP/1.1 (browsers open
one HTTP/2 connection per host and multiplex a dev server's hundreds of modules on it,
instead of queueing them on six HTTP/1.1 connections). Previews and the API share both.

The certificate and key are loaded before anything is bound: a file that is missing,
unreadable, not PEM, or a key that does not match the certificate stops the start with a
message naming the file. A browser that speaks plain http to the TLS port gets a short
400 in plain http saying so (OpenSSL alone would drop the connection without a word):
each accepted TLS connection's first byte is peeked before the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypercorn.config import Config

from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)
MAX_REQUEST_HEAD = 64 * 1024  # bytes; what hypercorn reads at once
TLS_HANDSHAKE = 0x16  # the first byte of every TLS record that opens a connection
FIRST_BYTE_TIMEOUT = 10.0  # a connection that sends nothing is not waited for longer
PLAIN_HTTP_DETAIL = "this port speaks HTTPS (TLS): use an https:// URL"
# Streams one HTTP/2 connection may have open: hypercorn's 100 (nginx: 128). 256 was
# tried and not kept: no faster at 40 ms RTT in bench_pageload, and more unfinished loads
# on the loaded machine. Each open stream holds an upstream connection and at most
# 256 KiB of its body (gateway/proxy/upstream.py).
H2_MAX_STREAMS = 100


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.accesslog = None
    config.graceful_timeout = settings.drain_timeout
    config.keep_alive_timeout = 75  # longer than browsers' idle keep-alive
    config.include_server_header = False  # no need to advertise the server software
    # Above our own relay limit, so the relay closes oversized messages cleanly (1009).
    config.websocket_max_message_size = settings.ws_max_message_bytes + 1024 * 1024
    # Messages received ahead of the app, per connection (default 10): a WebSocket's may
    # each be max-size, so a client sending faster than its dev server reads would hold
    # ten of them here. HTTP bodies arrive in 64 KiB pieces and do not need more.
    config.max_app_queue_size = 2
    # h11 refuses a request head with 431 once more than this is buffered incomplete
    # (hypercorn: 16 KiB) but it reads 64 KiB at a time, so a 20-60 KiB head was answered
    # or refused depending on how the client's packets arrived. Now heads up to 64 KiB
    # are always read; one that stays incomplete past 64 KiB is refused (so surely one
    # over 128 KiB: h11 checks only what it could not parse yet).
    config.h11_max_incomplete_size = MAX_REQUEST_HEAD
    config.h2_max_concurrent_streams = H2_MAX_STREAMS
    config.workers = settings.workers  # SO_REUSEPORT on the sockets when more than one
    if settings.tls_cert:
        # Hypercorn binds `bind` with TLS and `insecure_bind` without when a certificate
        # is set; the default ALPN list is h2 then http/1.1.
        config.certfile, config.keyfile = settings.tls_cert, settings.tls_key
        config.bind = [settings.tls_bind]
        config.insecure_bind = [settings.bind]
    else:
        config.bind = [settings.bind]
    return config


def all_binds(config: Config) -> list[str]:
    """Every address this configuration listens on (TLS and plain)."""
    return [*config.bind, *config.insecure_bind] if config.ssl_enabled else list(config.bind)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS listener's context, or None without TLS; SettingsError naming the file
    when the certificate or key cannot be used."""
    if not config.ssl_enabled:
        return None
    assert config.certfile is not None and config.keyfile is not None
    checks = (
        ("PREVIEW_TLS_CERT", config.certfile, "CERTIFICATE", "certificate"),
        ("PREVIEW_TLS_KEY", config.keyfile, "PRIVATE KEY", "private key"),
    )
    for name, path, marker, what in checks:
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None
        if f"{marker}-----" not in text or "-----BEGIN " not in text:
            raise SettingsError(f"{name}: {path} holds no PEM {what}")
    try:
        context = config.create_ssl_context()
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in reason.upper():
            detail = f"the key {config.keyfile} does not match the certificate {config.certfile}"
        else:
            detail = f"{config.certfile} or {config.keyfile} is not a usable PEM file ({reason})"
        raise SettingsError(f"PREVIEW_TLS_CERT/PREVIEW_TLS_KEY: {detail}") from None
    return context


Callback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


async def serve_tls(
    sock: socket.socket,
    context: ssl.SSLContext,
    callback: Callback,
    handshake_timeout: float,
    tasks: set[asyncio.Task[Any]],
) -> None:
    """Accept on a TLS listening socket until cancelled: TLS connections go to `callback`
    (as `asyncio.start_server(ssl=...)` would), plain http gets PLAIN_HTTP_DETAIL."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as exc:  # EMFILE and the like: the listener itself stays
            log.warning("TLS accept failed: %s", exc)
            await asyncio.sleep(0.1)
            continue
        task = loop.create_task(_connection(conn, context, callback, handshake_timeout))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _connection(
    conn: socket.socket, context: ssl.SSLContext, callback: Callback, handshake_timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        first = await asyncio.wait_for(_peek(conn), FIRST_BYTE_TIMEOUT)
        if first and first[0] == TLS_HANDSHAKE:

            def factory() -> asyncio.StreamReaderProtocol:
                reader = asyncio.StreamReader(limit=2**16)
                return asyncio.StreamReaderProtocol(reader, callback)

            await loop.connect_accepted_socket(
                factory, conn, ssl=context, ssl_handshake_timeout=handshake_timeout
            )
            return  # the protocol owns the socket now
        if first:
            await _plain_http_answer(conn)
    except (OSError, TimeoutError, ssl.SSLError):
        pass  # a failed handshake or a silent client: nothing to tell it
    conn.close()


async def _peek(conn: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), ready)
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(1, socket.MSG_PEEK)


async def _plain_http_answer(conn: socket.socket) -> None:
    """Read the request head (so closing does not reset the connection under the answer),
    answer 400 with JSON, close. Nothing of the request is echoed."""
    loop = asyncio.get_running_loop()
    head = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST_HEAD:
                chunk = await loop.sock_recv(conn, 16384)
                if not chunk:
                    break
                head += chunk
    body = json.dumps({"error": "https_required", "detail": PLAIN_HTTP_DETAIL}).encode()
    answer = (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
    )
    await loop.sock_sendall(conn, answer)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
