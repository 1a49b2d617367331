"""ASGI entry for servers: ``hypercorn gateway.asgi:app`` (settings from the environment).

Preview hosts (``{id}.{PREVIEW_DOMAIN}``) go to the proxy, the API hosts to the API.
"""

from __future__ import annotations

import sys

from gateway import hypercorn_compat
from gateway.api.app import create_app
from gateway.observability.exposure import ExposedDefaults, check_gateway, listening_binds
from gateway.observability.logs import configure_logging
from gateway.proxy.router import PreviewRouter
from shared.settings import Settings

hypercorn_compat.install()
settings = Settings.from_env()
try:
    # Under `hypercorn gateway.asgi:app --bind ...` the sockets are bound by now and are the
    # only record of where we listen (`preview-gateway` checks its bind before binding).
    check_gateway(settings, listening_binds())
except ExposedDefaults as exc:
    print(f"preview-gateway: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
configure_logging(settings)
api = create_app(settings)
app = PreviewRouter(api, settings)
