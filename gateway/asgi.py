"""ASGI entry for servers: ``hypercorn gateway.asgi:app`` (settings from the environment).

Preview hosts (``{id}.{PREVIEW_DOMAIN}``) go to the proxy, the API hosts to the API.
"""

from __future__ import annotations

from gateway import hypercorn_compat
from gateway.app import create_app
from gateway.logs import configure_logging
from gateway.preview_host import PreviewRouter
from shared.settings import Settings

hypercorn_compat.install()
settings = Settings.from_env()
configure_logging(settings)
api = create_app(settings)
app = PreviewRouter(api, settings)
