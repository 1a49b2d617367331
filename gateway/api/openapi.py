"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``: the paths table
(the schemas and shared responses are in ``openapi_schemas``).

Written by hand next to the routes (gateway/api/endpoints.py) and checked against them by
the tests: every route is here, with its request body, every status it can answer and the
error shape.
"""

from __future__ import annotations

from gateway.api.openapi_schemas import (
    PREVIEW_ID,
    RETRY_AFTER,
    SCHEMAS,
    Schema,
    errors,
    json_body,
    listing,
    op,
    ref,
    reply,
)
from gateway.api.openapi_shares import SHARE_SCHEMAS, share_paths
from shared.settings import Settings


def openapi_document(settings: Settings) -> Schema:
    previews = {
        "post": op(
            "Start a preview (or get the live one of the same project: hot start)",
            {
                "200": reply(ref("Preview"), "Hot start: this project is already live"),
                "202": reply(ref("Preview"), "Started; follow events_url until ready"),
                **errors("400", "409", "413", "415", "422"),
                "429": reply(
                    {"oneOf": [ref("TooManyPreviews"), ref("Error")]},
                    "Too many live previews (too_many_previews) or starts (rate_limited)",
                    RETRY_AFTER,
                ),
            },
            parameters=[
                {
                    "name": "wait",
                    "in": "query",
                    "description": "Seconds to queue for a free slot instead of a 429",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 60},
                }
            ],
            requestBody=json_body("StartRequest"),
        ),
        "get": op(
            "The caller's previews",
            {
                "200": listing("previews", "Preview", "Live previews"),
                **errors(),
            },
        ),
    }
    one = {
        "parameters": [PREVIEW_ID],
        "get": op(
            "One preview",
            {"200": reply(ref("Preview"), "The preview"), **errors("404")},
        ),
        "delete": op(
            "Stop a preview; its slot is free at once",
            {"204": {"description": "Stopped"}, **errors("404")},
        ),
    }
    events = {
        "parameters": [PREVIEW_ID],
        "get": op(
            "Progress as Server-Sent Events (progress, warning, ready, error); "
            "ends after ready or error. With follow=1 it stays open and sends each later "
            "state change (sleeping, ready, hibernated, resuming, failed, stopped; data "
            '{"state","at"}) until the preview fails or stops',
            {
                "200": {
                    "description": "id: stream id, or L<stream id> for a state change "
                    "(send it back as Last-Event-ID to resume)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **errors("400", "404", "409", "422"),
            },
            parameters=[
                {
                    "name": "follow",
                    "in": "query",
                    "schema": {"enum": ["0", "1"], "default": "0"},
                    "description": "1: keep the stream open for the preview's state changes "
                    "(at most 10 such streams per user and gateway: 429 beyond)",
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string", "pattern": r"^L?\d+-\d+$"},
                },
            ],
        ),
    }
    binary = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    written = {
        "type": "object",
        "required": ["format", "mode", "files", "unpacked_bytes"],
        "properties": {
            "format": {"enum": ["tar", "tar.zst"]},
            "mode": {"enum": ["merge", "replace"]},
            "files": {"type": "integer"},
            "unpacked_bytes": {"type": "integer"},
        },
    }
    files = {
        "parameters": [PREVIEW_ID],
        "put": op(
            "Replace or merge the workspace from a tar archive (optionally zstd-compressed)",
            {
                "200": reply(written, "Written into the workspace"),
                "202": reply(written, "First archive of an archive source: being prepared"),
                **errors("400", "404", "409", "413", "422", "502", "504"),
            },
            parameters=[
                {
                    "name": "mode",
                    "in": "query",
                    "schema": {"enum": ["merge", "replace"], "default": "merge"},
                }
            ],
            requestBody={
                "required": True,
                "content": {
                    "application/x-tar": binary,
                    "application/zstd": binary,
                    "application/octet-stream": binary,
                },
            },
        ),
    }
    one_file = {
        "parameters": [
            PREVIEW_ID,
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
        "put": op(
            "Write one file (an editor's save; the dev server hot-reloads)",
            {
                "200": reply(
                    {
                        "type": "object",
                        "required": ["path", "bytes"],
                        "properties": {"path": {"type": "string"}, "bytes": {"type": "integer"}},
                    },
                    "Written",
                ),
                **errors("400", "404", "409", "413", "502", "504"),
            },
            requestBody={"required": True, "content": {"application/octet-stream": binary}},
        ),
    }
    restart = {
        "parameters": [PREVIEW_ID],
        "post": op(
            "Restart the dev server",
            {
                "202": reply(ref("Preview"), "Restarting"),
                **errors("404", "409", "502", "504"),
            },
        ),
    }
    sleep = {
        "parameters": [PREVIEW_ID],
        "post": op(
            "Put the preview to sleep: its dev server frozen (no CPU), container, URL and "
            "WebSockets kept; the next request, file write, restart or wake wakes it",
            {"202": reply(ref("Preview"), "Asleep"), **errors("404", "409", "504")},
        ),
    }
    wake = {
        "parameters": [PREVIEW_ID],
        "post": op(
            "Wake a sleeping preview, or resume a hibernated one (an awake one is answered "
            "as it is)",
            {
                "202": reply(ref("Preview"), "Awake or resuming"),
                **errors("404", "409", "429", "503"),
            },
        ),
    }
    hibernate = {
        "parameters": [PREVIEW_ID],
        "post": op(
            "Hibernate the preview: its workspace packed on its host, its container and slot "
            "released; id, URL and cookie stay valid for the resume window",
            {"202": reply(ref("Preview"), "Hibernated"), **errors("404", "409", "504")},
        ),
    }
    logs = {
        "parameters": [PREVIEW_ID],
        "get": op(
            "Recent dev-server output",
            {
                "200": reply(
                    {
                        "type": "object",
                        "required": ["lines", "stale"],
                        "properties": {
                            "lines": {"type": "array", "items": {"type": "string"}},
                            "stale": {"type": "boolean"},
                        },
                    },
                    "Lines, oldest first",
                ),
                **errors("404", "409", "422", "502", "504"),
            },
            parameters=[
                {
                    "name": "lines",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 2000, "default": 200},
                }
            ],
        ),
    }
    pool = {
        "get": op(
            "Warm pool and totals (admin scope)",
            {
                "200": reply(
                    {
                        "type": "object",
                        "required": ["image", "pooled", "reserved", "containers", "sessions"],
                        "properties": {
                            "image": {"type": "string"},
                            "pooled": {
                                "type": "integer",
                                "description": "the general pool: never ran user code",
                            },
                            "reserved": {
                                "type": "integer",
                                "description": "released, kept for their last user only",
                            },
                            "containers": {"type": "integer"},
                            "sessions": {"type": "integer"},
                        },
                    },
                    "Pool status",
                ),
                **errors("403"),
            },
        )
    }
    admin_previews = {
        "get": op(
            "Every live preview (admin scope)",
            {
                "200": reply(
                    {
                        "type": "object",
                        "required": ["previews"],
                        "properties": {"previews": {"type": "array", "items": {"type": "object"}}},
                    },
                    "Sessions",
                ),
                **errors("403"),
            },
        )
    }
    status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "preview-gateway",
            "version": "1",
            "description": "Live previews of users' web projects.",
        },
        "servers": [{"url": settings.public_url}],
        "paths": {
            "/v1/previews": previews,
            "/v1/previews/{id}": one,
            "/v1/previews/{id}/events": events,
            "/v1/previews/{id}/files": files,
            "/v1/previews/{id}/files/{path}": one_file,
            "/v1/previews/{id}/restart": restart,
            "/v1/previews/{id}/sleep": sleep,
            "/v1/previews/{id}/wake": wake,
            "/v1/previews/{id}/hibernate": hibernate,
            "/v1/previews/{id}/logs": logs,
            **share_paths(),
            "/v1/pool": pool,
            "/v1/admin/previews": admin_previews,
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": reply(status, "Alive")}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: Redis and a Docker host reachable",
                    "responses": {
                        "200": reply(status, "Ready"),
                        "503": reply(ref("Error"), "A dependency is down"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": reply({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {
            "schemas": {**SCHEMAS, **SHARE_SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
