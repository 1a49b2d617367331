"""Sentry for the supervisor: only when the gateway passed PREVIEW_SENTRY_DSN into the
container, and only if sentry-sdk is installed (the image ships it; a bare checkout may
not). Unexpected errors reach Sentry through the logging integration (ERROR lines with
their traceback) and the excepthook. Untrusted code runs beside us, so nothing the SDK
does may touch child processes: no default integrations (the stdlib one patches
``subprocess``), no local variables in frames, and every string of an event is redacted
(the Redis URL carries this container's password).
"""

from __future__ import annotations

import logging
from typing import Any

from shared.redact import redact_value

log = logging.getLogger(__name__)


def init_sentry(dsn: str, container_id: str, environment: str = "") -> bool:
    """Initialise the SDK; False (and a warning) when it cannot be."""
    if not dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.atexit import AtexitIntegration
        from sentry_sdk.integrations.dedupe import DedupeIntegration
        from sentry_sdk.integrations.excepthook import ExcepthookIntegration
        from sentry_sdk.integrations.logging import LoggingIntegration
    except ImportError:
        log.warning("PREVIEW_SENTRY_DSN is set but sentry-sdk is not installed: errors stay local")
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=environment or None,
        # send_default_pii stays unset, which is False: sentry-sdk 2.75 deprecates passing
        # it (for `data_collection`, which older SDKs reject); the default sends no PII.
        include_local_variables=False,
        max_request_body_size="never",
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
            ExcepthookIntegration(),
            DedupeIntegration(),
            AtexitIntegration(),
        ],
        before_send=scrub,
        before_breadcrumb=scrub,
    )
    sentry_sdk.set_tag("component", "supervisor")
    sentry_sdk.set_tag("container", container_id)
    return True


def scrub(event: Any, hint: Any) -> Any:
    return redact_value(event)
