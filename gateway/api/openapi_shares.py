"""The OpenAPI document's share links: their schemas and paths (gateway/api/shares.py)."""

from __future__ import annotations

from gateway.api.openapi_schemas import (
    PREVIEW_ID,
    RETRY_AFTER,
    Schema,
    errors,
    json_body,
    listing,
    op,
    ref,
    reply,
)

SHARE_ID = {"name": "share_id", "in": "path", "required": True, "schema": {"type": "string"}}
ACCESS = {"enum": ["public", "signed_in"]}

SHARE_SCHEMAS: dict[str, Schema] = {
    "ShareRequest": {
        "type": "object",
        "required": ["access"],
        "additionalProperties": False,
        "properties": {
            "access": {
                **ACCESS,
                "description": "public: anyone with the url; signed_in: any user of the app, "
                "through POST /v1/shares/{share_id}/open",
            },
            "expires_in": {
                "type": "integer",
                "minimum": 60,
                "default": 3600,
                "description": "Seconds; at most PREVIEW_SHARE_MAX_TTL",
            },
            "ports": {
                "type": "boolean",
                "default": False,
                "description": "Whether the share also opens the preview's other ports",
            },
        },
    },
    "Share": {
        "type": "object",
        "required": ["id", "preview_id", "url", "access", "ports", "created_at", "expires_at"],
        "properties": {
            "id": {"type": "string"},
            "preview_id": {"type": "string"},
            "url": {
                "type": "string",
                "format": "uri",
                "description": "The preview's url with ?preview_share={id}: view-only",
            },
            "access": ACCESS,
            "ports": {"type": "boolean"},
            "created_at": {"type": "number", "description": "Unix time, seconds"},
            "expires_at": {"type": "number", "description": "Unix time, seconds"},
        },
    },
    "ShareOpen": {
        "type": "object",
        "required": ["url", "expires_in", "access"],
        "properties": {
            "url": {
                "type": "string",
                "format": "uri",
                "description": "Single-use: the preview's url with a share_token for this user",
            },
            "expires_in": {"type": "integer", "description": "Seconds the url is valid"},
            "access": ACCESS,
        },
    },
}


def share_paths() -> dict[str, Schema]:
    shares = {
        "parameters": [PREVIEW_ID],
        "post": op(
            "Share the preview for viewing (owner)",
            {
                "201": reply(ref("Share"), "The share link"),
                **errors("400", "404", "413", "415", "422"),
                "429": reply(
                    ref("Error"),
                    "Too many unexpired share links (too_many_shares) or requests",
                    RETRY_AFTER,
                ),
            },
            requestBody=json_body("ShareRequest"),
        ),
        "get": op(
            "The preview's unexpired share links (owner)",
            {
                "200": listing("shares", "Share", "Share links"),
                **errors("404"),
            },
        ),
    }
    one = {
        "parameters": [PREVIEW_ID, SHARE_ID],
        "delete": op(
            "Revoke a share link: every viewer is refused, and their WebSockets closed, "
            "within a second",
            {"204": {"description": "Revoked"}, **errors("404")},
        ),
    }
    opening = {
        "parameters": [SHARE_ID],
        "post": op(
            "Any signed-in user: a single-use url that opens a share link in their browser",
            {"200": reply(ref("ShareOpen"), "The url"), **errors("404")},
        ),
    }
    return {
        "/v1/previews/{id}/shares": shares,
        "/v1/previews/{id}/shares/{share_id}": one,
        "/v1/shares/{share_id}/open": opening,
    }
