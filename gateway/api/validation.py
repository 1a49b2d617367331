"""Request validation for the preview API: bodies, paths and query values.

Malformed JSON is a 400, a body over its size limit a 413, a well-formed body that breaks
the schema (wrong type, unknown field, unknown source type) a 422 naming the field.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from starlette.requests import Request

from gateway.errors import ApiError
from gateway.sessions.start import StartRequest

MAX_JSON_BYTES = 64 * 1024
MAX_ENV_VARS = 100
MAX_ENV_VALUE = 4096
MAX_PATH = 1024
PROJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
GIT_URL = re.compile(r"^(https?|git|ssh)://[^\s]{1,2000}$")
GIT_REF = re.compile(r"^[A-Za-z0-9._/@^~+-]{1,256}$")
SOURCE_FIELDS = {"archive": set(), "git": {"url", "ref"}, "template": {"name"}}


def invalid(detail: str, field: str) -> ApiError:
    return ApiError(422, "invalid_request", detail, field=field)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not digits(length):
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(length) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def digits(raw: str) -> bool:
    """Plain ASCII decimal digits, short enough to be a sane number."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 18


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes", limit=limit)


async def json_body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await read_body(request, MAX_JSON_BYTES)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object", "")
    return data


def _string(data: dict[str, Any], name: str, where: str, pattern: re.Pattern[str]) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise invalid(f"{where}{name} is required and must be a string", where + name)
    if not pattern.fullmatch(value):
        raise invalid(f"{where}{name} has an invalid format", where + name)
    return value


def _unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise invalid(f"unknown field {where}{extra[0]}", where + extra[0])


def parse_start(data: dict[str, Any]) -> StartRequest:
    """`{"project_id", "source": {"type": archive|git|template, ...}, "env"?}`."""
    _unknown(data, {"project_id", "source", "env"}, "")
    project_id = _string(data, "project_id", "", PROJECT_ID)
    source = data.get("source")
    if not isinstance(source, dict):
        raise invalid("source is required and must be an object", "source")
    kind = source.get("type")
    if not isinstance(kind, str) or kind not in SOURCE_FIELDS:
        raise invalid("source.type must be one of archive, git, template", "source.type")
    _unknown(source, {"type"} | SOURCE_FIELDS[kind], "source.")
    parsed = {"type": kind}
    if kind == "git":
        parsed["url"] = _string(source, "url", "source.", GIT_URL)
        if "ref" in source:
            parsed["ref"] = _string(source, "ref", "source.", GIT_REF)
            if parsed["ref"].startswith("-"):
                raise invalid("source.ref must not start with '-'", "source.ref")
    elif kind == "template":
        parsed["name"] = _string(source, "name", "source.", TEMPLATE_NAME)
    return StartRequest(project_id, parsed, parse_env(data.get("env", {})))


def parse_env(env: Any) -> dict[str, str]:
    if not isinstance(env, dict):
        raise invalid("env must be an object of strings", "env")
    if len(env) > MAX_ENV_VARS:
        raise invalid(f"env has more than {MAX_ENV_VARS} variables", "env")
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name) or name.upper().startswith("PREVIEW_"):
            raise invalid(f"env name {name[:40]!r} is invalid or reserved", "env")
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\x00" in value:
            raise invalid(f"env.{name} must be a string of at most {MAX_ENV_VALUE}", "env")
    return dict(env)


def workspace_path(raw: str) -> str:
    """A relative path inside the workspace, normalised; 400 for one that escapes it."""
    if not raw or len(raw) > MAX_PATH or "\x00" in raw or "\\" in raw:
        raise ApiError(400, "invalid_path", "the path is empty, too long or has bad characters")
    if raw.startswith("/"):
        raise ApiError(400, "invalid_path", "the path must be relative to the workspace")
    parts = raw.split("/")
    if any(p == ".." for p in parts):
        raise ApiError(400, "invalid_path", "the path escapes the workspace")
    normal = posixpath.normpath(raw)
    if normal in (".", "") or normal.startswith(".."):
        raise ApiError(400, "invalid_path", "the path does not name a file in the workspace")
    return normal


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not digits(raw) or not low <= int(raw) <= high:
        raise invalid(f"{name} must be an integer from {low} to {high}", name)
    return int(raw)


def query_choice(request: Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = request.query_params.get(name, default)
    if raw not in choices:
        raise invalid(f"{name} must be one of {', '.join(choices)}", name)
    return raw
