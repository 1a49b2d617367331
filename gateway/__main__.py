"""Run the gateway on hypercorn with uvloop: ``preview-gateway`` / ``python -m gateway``."""

from __future__ import annotations

import sys

from hypercorn.config import Config
from hypercorn.run import run


def main() -> int:
    from shared.settings import Settings

    settings = Settings.from_env()
    config = Config()
    config.application_path = "gateway.asgi:app"
    config.bind = [settings.bind]
    config.worker_class = "uvloop"
    config.accesslog = None
    config.graceful_timeout = 10
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
