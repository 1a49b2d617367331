"""Run the gateway on hypercorn with uvloop: ``preview-gateway`` / ``python -m gateway``.

Listens on PREVIEW_BIND (plain http) and, with a certificate, on PREVIEW_TLS_BIND (HTTP/2
and HTTP/1.1 over TLS); PREVIEW_WORKERS processes share them (gateway/server/). On
SIGTERM/SIGINT: close preview WebSockets with 1001 (browsers' HMR clients reconnect
elsewhere), stop accepting, finish in-flight requests within PREVIEW_DRAIN_TIMEOUT, then
shut the lifespan down.
"""

from __future__ import annotations

import sys

from gateway.api.auth import AuthConfigError
from gateway.observability.exposure import ExposedDefaults, check_gateway
from gateway.server.listen import MAX_REQUEST_HEAD, all_binds, hypercorn_config, tls_context
from gateway.server.serve import worker
from gateway.server.workers import run_workers
from shared.settings import Settings, SettingsError

__all__ = ["MAX_REQUEST_HEAD", "hypercorn_config", "main"]


def main() -> int:
    try:
        settings = Settings.from_env()
        config = hypercorn_config(settings)
        # Before a socket is bound: a bad certificate stops the start naming its file,
        # and a gateway on built-in secrets must not listen beyond this machine even for
        # a moment (these binds are exactly what is bound next).
        tls_context(config)
        check_gateway(settings, all_binds(config))
        sockets = config.create_sockets()
    except (SettingsError, AuthConfigError, ExposedDefaults) as exc:
        # A configuration mistake is the operator's to fix: the message, no traceback.
        print(f"preview-gateway: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"preview-gateway: cannot listen on {all_binds(config)}: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return run_workers(config, sockets, settings.workers, worker)
    worker(config, sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
