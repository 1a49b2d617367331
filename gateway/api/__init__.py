"""The control plane over HTTP: the Starlette application on the API hosts.

Owns the application and its lifespan (``app``), callers' identity (``auth``), request
rate limits (``ratelimit``), the preview API (``endpoints``), share links (``shares``),
request validation (``validation``), the public preview object (``views``), live
progress as Server-Sent Events (``events``), operator endpoints and dashboard (``admin``,
``dashboard``, its ``static/``), the OpenAPI document (``openapi``, its schemas in
``openapi_schemas``, share links' in ``openapi_shares``) and liveness/readiness (``health``).

May import: ``shared``, the top-level ``gateway`` helpers, ``gateway.sessions`` (the
lifecycle it drives), ``gateway.containers``, ``gateway.observability`` and, for the
preview's public host, open token and share records, ``gateway.proxy``. Never
``gateway.controller``.
"""
