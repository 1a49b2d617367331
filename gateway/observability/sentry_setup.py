"""Sentry for the gateway and the controller: unexpected errors, and the alerts
(gateway/observability/alerts.py), with the user's id but never a token, a cookie or a password.

Three layers keep secrets out: the SDK's default ``send_default_pii`` (False: no cookies,
credential headers or IPs) with request bodies off (``max_request_body_size="never"``), no local
variables in stack frames (they hold tokens and bodies), and ``before_send`` /
``before_breadcrumb`` running every string of the event through shared/redact.py and
masking secret-named fields. The user is only ``{"id": sub}``, added by
:class:`SentryUser` from the request's authenticated user. Nothing happens without a DSN.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

from gateway.asgi_types import ASGIApp, Receive, Scope, Send
from shared.redact import SECRET_NAMES, redact, redact_value
from shared.settings import Settings

log = logging.getLogger(__name__)

# Request headers kept in events (after redaction); every other header is dropped.
KEPT_HEADERS = frozenset({"host", "user-agent", "accept", "content-type", "content-length"})


def release() -> str:
    try:
        return f"preview-gateway@{version('preview-gateway')}"
    except PackageNotFoundError:
        return "preview-gateway@dev"


def init_sentry(settings: Settings, component: str, starlette: bool = True) -> bool:
    """Initialise the SDK for this process when PREVIEW_SENTRY_DSN is set; True if so."""
    if not settings.sentry_dsn:
        return False
    integrations: list[Any] = [LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)]
    if starlette:
        integrations.append(StarletteIntegration())
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or None,
        release=release(),
        # send_default_pii stays unset, which is False: sentry-sdk 2.75 deprecates passing
        # it (for `data_collection`, which older SDKs reject); the default sends no PII.
        max_request_body_size="never",
        include_local_variables=False,
        event_scrubber=EventScrubber(
            denylist=sorted({*DEFAULT_DENYLIST, *SECRET_NAMES}), recursive=True
        ),
        before_send=scrub_event,  # type: ignore[arg-type]
        before_breadcrumb=scrub_breadcrumb,
        integrations=integrations,
    )
    sentry_sdk.set_tag("component", component)
    log.info("sentry enabled component=%s", component)
    return True


def scrub_event(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """Everything an event carries, without secrets."""
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("cookies", None)
        request.pop("data", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {
                k: v for k, v in headers.items() if str(k).lower() in KEPT_HEADERS
            }
        for name in ("url", "query_string"):
            if isinstance(request.get(name), str):
                request[name] = redact(request[name])
    user = event.get("user")
    if isinstance(user, dict):
        event["user"] = {"id": user["id"]} if user.get("id") else {}
    scrubbed: dict[str, Any] = redact_value(event)
    return scrubbed


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = redact_value(crumb)
    return cleaned


class SentryUser:
    """ASGI middleware: events raised while serving a request carry its user's id (only
    the id; the authenticated user is read when the event is made, not before)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and sentry_sdk.get_client().is_active():
            sentry_sdk.get_isolation_scope().add_event_processor(_user_processor(scope))
        await self.app(scope, receive, send)


def _user_processor(scope: Scope) -> Any:
    def add_user(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        user = scope.get("pv.user")
        user_id = getattr(user, "id", None)
        if isinstance(user_id, str) and user_id:
            event["user"] = {"id": user_id}
        return event

    return add_user
