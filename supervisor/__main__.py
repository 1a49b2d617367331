"""Entry point of the supervisor (``python -m supervisor`` / ``preview-supervisor``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from supervisor.config import ConfigError, SupervisorConfig, scrub_environment
from supervisor.daemon import Supervisor
from supervisor.sentry_hook import init_sentry


async def _serve(config: SupervisorConfig, base_env: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    supervisor = Supervisor(config, base_env)
    try:
        await supervisor.run()
    except asyncio.CancelledError:
        logging.getLogger("supervisor").info("signal received: shutting down")
    finally:
        # A second signal now ends us the default way instead of cutting the shutdown short.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await supervisor.shutdown()


def main() -> int:
    try:
        config = SupervisorConfig.from_env()
    except ConfigError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 2
    sentry_dsn = os.environ.get("PREVIEW_SENTRY_DSN", "")
    sentry_environment = os.environ.get("PREVIEW_SENTRY_ENVIRONMENT", "")
    # From here on no child (nor anything a library spawns) can inherit the credentials.
    base_env = scrub_environment()
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    init_sentry(sentry_dsn, config.container_id, sentry_environment)
    try:
        asyncio.run(_serve(config, base_env))
    except ConfigError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
