"""ASGI entry for servers: ``hypercorn gateway.asgi:app`` (settings from the environment)."""

from __future__ import annotations

from gateway.app import create_app
from gateway.logs import configure_logging
from shared.settings import Settings

settings = Settings.from_env()
configure_logging(settings)
app = create_app(settings)
