"""Run the gateway on hypercorn with uvloop: ``preview-gateway`` / ``python -m gateway``.

One process per gateway (scale with replicas). On SIGTERM/SIGINT: close preview
WebSockets with 1001 (browsers' HMR clients reconnect elsewhere), stop accepting, finish
in-flight requests within PREVIEW_DRAIN_TIMEOUT, then shut the lifespan down.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

from gateway.api.auth import AuthConfigError
from gateway.observability.exposure import check_gateway
from shared.settings import Settings, SettingsError

log = logging.getLogger("gateway")
MAX_REQUEST_HEAD = 64 * 1024  # bytes; what hypercorn reads at once


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [settings.bind]
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
    return config


async def serve_gateway() -> None:
    from gateway.asgi import app, settings

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    config = hypercorn_config(settings)
    # Before a socket is bound: a gateway on built-in secrets must not listen beyond this
    # machine even for a moment. config.bind is exactly what hypercorn binds next.
    check_gateway(settings, config.bind)

    async def shutdown_trigger() -> None:
        await stop.wait()
        began = loop.time()
        log.info("gateway draining: %d WebSockets to close", len(app.relays))
        await app.relays.close_all(settings.drain_timeout)
        # Hypercorn then waits graceful_timeout for requests: what is left of one budget.
        config.graceful_timeout = max(0.1, settings.drain_timeout - (loop.time() - began))

    await serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
    log.info("gateway stopped")


def main() -> int:
    try:
        uvloop.run(serve_gateway())
    except (SettingsError, AuthConfigError) as exc:
        # A configuration mistake is the operator's to fix: the message, no traceback.
        print(f"preview-gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
