"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``.

Written by hand next to the routes (gateway/api/endpoints.py) and checked against them by the tests:
every route is here, with its request body, every status it can answer and the error shape.
"""

from __future__ import annotations

from typing import Any

from gateway.api.validation import (
    ENV_NAME,
    GIT_REF,
    GIT_URL,
    MAX_ENV_VALUE,
    MAX_ENV_VARS,
    PROJECT_ID,
    TEMPLATE_NAME,
)
from gateway.sessions.store import DEPENDENCIES, STATES
from shared.settings import Settings

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str, headers: Schema | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}
ERRORS: dict[str, Schema] = {
    "400": _json(
        _ref("Error"), "Malformed request (bad JSON, path escaping the workspace, bad archive)"
    ),
    "401": _json(_ref("Error"), "Missing or invalid token; detail says what was wrong"),
    "403": _json(_ref("Error"), "Valid token without the admin scope"),
    "404": _json(_ref("Error"), "No such preview (or not the caller's)"),
    "409": _json(
        _ref("Error"),
        "The preview cannot do this now (no container yet, command refused, or it was "
        "stopped or moved while the request was read: nothing was done)",
    ),
    "413": _json(_ref("Error"), "Body over the size limit"),
    "415": _json(_ref("Error"), "Body is not application/json"),
    "422": _json(_ref("ValidationError"), "Body or query breaks the schema"),
    "429": _json(_ref("Error"), "Rate limited", RETRY_AFTER),
    "502": _json(_ref("Error"), "The preview container did not respond"),
    "503": _json(
        _ref("Error"), "Redis or Docker unreachable, or no container available", RETRY_AFTER
    ),
    "504": _json(_ref("Error"), "The preview container did not answer in time"),
}


def _errors(*codes: str) -> dict[str, Schema]:
    return {code: ERRORS[code] for code in ("401", "429", "503", *codes)}


def _op(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"summary": summary, "security": [{"bearer": []}], "responses": responses, **extra}


PREVIEW_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    },
    "ValidationError": {
        "type": "object",
        "required": ["error", "detail", "field"],
        "properties": {
            "error": {"const": "invalid_request"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "Dotted path of the offending field"},
        },
    },
    "TooManyPreviews": {
        "type": "object",
        "required": ["error", "detail", "limit", "active"],
        "properties": {
            "error": {"const": "too_many_previews"},
            "detail": {"type": "string"},
            "limit": {"type": "integer"},
            "active": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Source": {
        "oneOf": [
            {
                "type": "object",
                "required": ["type"],
                "additionalProperties": False,
                "properties": {"type": {"const": "archive"}},
                "description": "Files follow with PUT /v1/previews/{id}/files",
            },
            {
                "type": "object",
                "required": ["type", "url"],
                "additionalProperties": False,
                "properties": {
                    "type": {"const": "git"},
                    "url": {"type": "string", "pattern": GIT_URL.pattern},
                    "ref": {"type": "string", "pattern": GIT_REF.pattern, "not": {"pattern": "^-"}},
                },
            },
            {
                "type": "object",
                "required": ["type", "name"],
                "additionalProperties": False,
                "properties": {
                    "type": {"const": "template"},
                    "name": {"type": "string", "pattern": TEMPLATE_NAME.pattern},
                },
            },
        ]
    },
    "StartRequest": {
        "type": "object",
        "required": ["project_id", "source"],
        "additionalProperties": False,
        "properties": {
            "project_id": {"type": "string", "pattern": PROJECT_ID.pattern},
            "source": _ref("Source"),
            "env": {
                "type": "object",
                "maxProperties": MAX_ENV_VARS,
                "propertyNames": {
                    "pattern": ENV_NAME.pattern,
                    "not": {"pattern": "^[Pp][Rr][Ee][Vv][Ii][Ee][Ww]_"},
                },
                "additionalProperties": {"type": "string", "maxLength": MAX_ENV_VALUE},
            },
        },
    },
    "Heartbeat": {
        "type": "object",
        "properties": {
            "ts": {"type": "number"},
            "dev_server": {"type": "string"},
            "cpu_percent": {"type": "number"},
            "memory_used": {"type": "integer"},
            "memory_limit": {"type": "integer"},
            "disk_used": {"type": "integer"},
            "disk_total": {"type": "integer"},
            "restarts": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
        },
    },
    "Preview": {
        "type": "object",
        "required": [
            "id",
            "project_id",
            "state",
            "url",
            "open_url",
            "events_url",
            "created_at",
            "updated_at",
            "timings",
            "from_pool",
            "dependencies",
            "error",
            "heartbeat",
        ],
        "properties": {
            "id": {"type": "string"},
            "project_id": {"type": "string"},
            "state": {"enum": list(STATES)},
            "url": {"type": "string", "format": "uri"},
            "open_url": {
                "type": "string",
                "format": "uri",
                "description": "url with a ~60 s, single-use preview_token",
            },
            "events_url": {"type": "string", "format": "uri"},
            "created_at": {"type": "number", "description": "Unix time, seconds"},
            "updated_at": {"type": "number", "description": "Unix time, seconds"},
            "timings": {
                "type": "object",
                "description": "Milliseconds per phase: acquire, files, dependencies, "
                "devserver, total",
                "additionalProperties": {"type": "integer"},
            },
            "from_pool": {"type": "boolean"},
            "dependencies": {"enum": [*DEPENDENCIES, None]},
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["reason", "detail"],
                        "properties": {
                            "reason": {"type": "string"},
                            "detail": {
                                "type": ["string", "array"],
                                "items": {"type": "string"},
                                "description": "What went wrong, or the relevant log lines",
                            },
                        },
                    },
                ]
            },
            "heartbeat": {"oneOf": [{"type": "null"}, _ref("Heartbeat")]},
        },
    },
}


def openapi_document(settings: Settings) -> Schema:
    previews = {
        "post": _op(
            "Start a preview (or get the live one of the same project: hot start)",
            {
                "200": _json(_ref("Preview"), "Hot start: this project is already live"),
                "202": _json(_ref("Preview"), "Started; follow events_url until ready"),
                **_errors("400", "409", "413", "415", "422"),
                "429": _json(
                    {"oneOf": [_ref("TooManyPreviews"), _ref("Error")]},
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
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("StartRequest")}},
            },
        ),
        "get": _op(
            "The caller's previews",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["previews"],
                        "properties": {"previews": {"type": "array", "items": _ref("Preview")}},
                    },
                    "Live previews",
                ),
                **_errors(),
            },
        ),
    }
    one = {
        "parameters": [PREVIEW_ID],
        "get": _op("One preview", {"200": _json(_ref("Preview"), "The preview"), **_errors("404")}),
        "delete": _op(
            "Stop a preview; its slot is free at once",
            {"204": {"description": "Stopped"}, **_errors("404")},
        ),
    }
    events = {
        "parameters": [PREVIEW_ID],
        "get": _op(
            "Progress as Server-Sent Events (progress, warning, ready, error); "
            "ends after ready or error",
            {
                "200": {
                    "description": "id: stream id (send it back as Last-Event-ID to resume)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors("400", "404", "409"),
            },
            parameters=[
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string", "pattern": r"^\d+-\d+$"},
                }
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
        "put": _op(
            "Replace or merge the workspace from a tar archive (optionally zstd-compressed)",
            {
                "200": _json(written, "Written into the workspace"),
                "202": _json(written, "First archive of an archive source: being prepared"),
                **_errors("400", "404", "409", "413", "422", "502", "504"),
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
        "put": _op(
            "Write one file (an editor's save; the dev server hot-reloads)",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["path", "bytes"],
                        "properties": {"path": {"type": "string"}, "bytes": {"type": "integer"}},
                    },
                    "Written",
                ),
                **_errors("400", "404", "409", "413", "502", "504"),
            },
            requestBody={"required": True, "content": {"application/octet-stream": binary}},
        ),
    }
    restart = {
        "parameters": [PREVIEW_ID],
        "post": _op(
            "Restart the dev server",
            {"202": _json(_ref("Preview"), "Restarting"), **_errors("404", "409", "502", "504")},
        ),
    }
    sleep = {
        "parameters": [PREVIEW_ID],
        "post": _op(
            "Put the preview to sleep: its dev server frozen (no CPU), container, URL and "
            "WebSockets kept; the next request, file write, restart or wake wakes it",
            {"202": _json(_ref("Preview"), "Asleep"), **_errors("404", "409", "504")},
        ),
    }
    wake = {
        "parameters": [PREVIEW_ID],
        "post": _op(
            "Wake a sleeping preview, or resume a hibernated one (an awake one is answered "
            "as it is)",
            {
                "202": _json(_ref("Preview"), "Awake or resuming"),
                **_errors("404", "409", "429", "503"),
            },
        ),
    }
    hibernate = {
        "parameters": [PREVIEW_ID],
        "post": _op(
            "Hibernate the preview: its workspace packed on its host, its container and slot "
            "released; id, URL and cookie stay valid for the resume window",
            {"202": _json(_ref("Preview"), "Hibernated"), **_errors("404", "409", "504")},
        ),
    }
    logs = {
        "parameters": [PREVIEW_ID],
        "get": _op(
            "Recent dev-server output",
            {
                "200": _json(
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
                **_errors("404", "409", "422", "502", "504"),
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
        "get": _op(
            "Warm pool and totals (admin scope)",
            {
                "200": _json(
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
                **_errors("403"),
            },
        )
    }
    admin_previews = {
        "get": _op(
            "Every live preview (admin scope)",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["previews"],
                        "properties": {"previews": {"type": "array", "items": {"type": "object"}}},
                    },
                    "Sessions",
                ),
                **_errors("403"),
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
            "/v1/pool": pool,
            "/v1/admin/previews": admin_previews,
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": _json(status, "Alive")}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: Redis and a Docker host reachable",
                    "responses": {
                        "200": _json(status, "Ready"),
                        "503": _json(_ref("Error"), "A dependency is down"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
