"""One worker's serving loop: hypercorn's ``worker_serve``, with our TLS listener.

Hypercorn hands its TLS sockets to ``asyncio.start_server(ssl=...)``, which starts the
handshake on whatever bytes arrive, so plain http on the TLS port is dropped without an
answer. This is the same loop (lifespan, one ``TCPServer`` per connection, graceful
shutdown) with the TLS sockets accepted by ``gateway.server.listen.serve_tls``. The
proxy and shutdown tests pin hypercorn's behaviour through it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config, Sockets
from hypercorn.utils import ShutdownError, raise_shutdown

from gateway.api.auth import AuthConfigError
from gateway.server.listen import serve_tls, tls_context
from shared.settings import SettingsError

log = logging.getLogger("gateway")


async def serve(
    app: Any,
    config: Config,
    sockets: Sockets,
    shutdown_trigger: Callable[[], Awaitable[None]],
) -> None:
    """Serve `app` on `sockets` until `shutdown_trigger` returns, then drain within
    config.graceful_timeout (read when the shutdown begins)."""
    loop = asyncio.get_running_loop()
    wrapped = ASGIWrapper(app)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, loop, state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and lifespan_task.exception() is not None:
        raise lifespan_task.exception()  # type: ignore[misc]

    context = WorkerContext(None)
    connections: set[asyncio.Task[Any]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        await TCPServer(wrapped, loop, config, context, state, reader, writer)

    servers = [
        await asyncio.start_server(on_connection, backlog=config.backlog, sock=sock)
        for sock in sockets.insecure_sockets
    ]
    acceptors: list[asyncio.Task[None]] = []
    handshakes: set[asyncio.Task[Any]] = set()
    ssl_context = tls_context(config)
    if ssl_context is not None:
        for sock in sockets.secure_sockets:
            sock.listen(config.backlog)
            acceptors.append(
                loop.create_task(
                    serve_tls(
                        sock, ssl_context, on_connection, config.ssl_handshake_timeout, handshakes
                    ),
                    name="TLS accept",
                )
            )
    for sock in sockets.insecure_sockets:
        log.info("listening on http://%s:%s", *sock.getsockname()[:2])
    for sock in sockets.secure_sockets:
        log.info("listening on https://%s:%s (HTTP/2, HTTP/1.1)", *sock.getsockname()[:2])

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(raise_shutdown(shutdown_trigger))
            group.create_task(raise_shutdown(context.terminate.wait))
    except BaseExceptionGroup as error:
        _, others = error.split((ShutdownError, KeyboardInterrupt))
        if others is not None:
            raise others from None
    finally:
        await context.terminated.set()
        for task in [*acceptors, *handshakes]:
            task.cancel()
        for server in servers:
            server.close()
            await server.wait_closed()
        if connections:
            # What is still open at the deadline is cut, as hypercorn's own loop does.
            _, late = await asyncio.wait(list(connections), timeout=config.graceful_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        await asyncio.gather(lifespan_task, *acceptors, *handshakes, return_exceptions=True)


async def serve_gateway(config: Config, sockets: Sockets) -> None:
    from gateway.asgi import app, settings

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        began = loop.time()
        log.info("gateway draining: %d WebSockets to close", len(app.relays))
        await app.relays.close_all(settings.drain_timeout)
        # Hypercorn then waits graceful_timeout for requests: what is left of one budget.
        config.graceful_timeout = max(0.1, settings.drain_timeout - (loop.time() - began))

    await serve(app, config, sockets, shutdown_trigger)
    log.info("gateway stopped")


def worker(config: Config, sockets: Sockets) -> None:
    """One gateway process on sockets bound already (a worker's entry point too)."""
    try:
        uvloop.run(serve_gateway(config, sockets))
    except (SettingsError, AuthConfigError) as exc:
        print(f"preview-gateway: {exc}", file=sys.stderr)
        sys.exit(2)
