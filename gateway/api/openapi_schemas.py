"""The OpenAPI document's parts: the component schemas (the preview object, requests,
errors), the error responses every operation shares, and small builders for the paths
table in ``openapi``.
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
from gateway.sessions.store import DEPENDENCIES
from shared.states import SESSION_STATES

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def reply(schema: Schema, description: str, headers: Schema | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}
ERRORS: dict[str, Schema] = {
    "400": reply(
        ref("Error"), "Malformed request (bad JSON, path escaping the workspace, bad archive)"
    ),
    "401": reply(ref("Error"), "Missing or invalid token; detail says what was wrong"),
    "403": reply(ref("Error"), "Valid token without the admin scope"),
    "404": reply(ref("Error"), "No such preview (or not the caller's)"),
    "409": reply(
        ref("Error"),
        "The preview cannot do this now (no container yet, command refused, or it was "
        "stopped or moved while the request was read: nothing was done)",
    ),
    "413": reply(ref("Error"), "Body over the size limit"),
    "415": reply(ref("Error"), "Body is not application/json"),
    "422": reply(ref("ValidationError"), "Body or query breaks the schema"),
    "429": reply(ref("Error"), "Rate limited", RETRY_AFTER),
    "502": reply(ref("Error"), "The preview container did not respond"),
    "503": reply(
        ref("Error"), "Redis or Docker unreachable, or no container available", RETRY_AFTER
    ),
    "504": reply(ref("Error"), "The preview container did not answer in time"),
}


def json_body(name: str) -> Schema:
    """A required JSON request body of the named schema."""
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


def listing(field: str, item: str, description: str) -> Schema:
    """A 200 reply: an object whose one field is an array of the named schema."""
    array = {"type": "array", "items": ref(item)}
    return reply({"type": "object", "required": [field], "properties": {field: array}}, description)


def errors(*codes: str) -> dict[str, Schema]:
    return {code: ERRORS[code] for code in ("401", "429", "503", *codes)}


def op(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
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
            "source": ref("Source"),
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
            "ports",
        ],
        "properties": {
            "ports": {
                "type": "array",
                "description": "Other ports the preview's processes listen on, each served "
                "at {id}-{port}.{PREVIEW_DOMAIN}. A browser that opened the main open_url "
                "gets each port host's cookie by redirect hops on its next navigation "
                "(/__preview/hop); a port's own ~60 s open_url opens it directly",
                "items": {
                    "type": "object",
                    "required": ["port", "url", "protocol", "open_url"],
                    "properties": {
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "url": {"type": "string", "format": "uri"},
                        "protocol": {"const": "http"},
                        "open_url": {"type": "string", "format": "uri"},
                    },
                },
            },
            "id": {"type": "string"},
            "project_id": {"type": "string"},
            "state": {"enum": list(SESSION_STATES)},
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
                "devserver (of which warmup: loading the entry page's modules), total",
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
            "heartbeat": {"oneOf": [{"type": "null"}, ref("Heartbeat")]},
        },
    },
}
