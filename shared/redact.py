"""Secrets out of text: what logs and Sentry events must never carry.

One set of rules for both, so a log line and the error report about it agree: JWTs (any
``eyJ...`` three-part token), ``Bearer`` credentials, ``preview_token``/``token``/
``password``/``secret`` query or ``key=value`` pairs, passwords in URLs
(``redis://:pw@host``), and Cookie/Set-Cookie/Authorization header values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "[redacted]"

# Names whose values are secret wherever they appear (headers, query strings, dict keys).
SECRET_NAMES = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "preview_token",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "password",
        "passwd",
        "secret",
        "jwt_secret",
        "signing_secret",
        "api_key",
        "apikey",
        "dsn",
        "sentry_dsn",
        "supervisor_redis_url",
    }
)

_RULES: list[tuple[re.Pattern[str], str]] = [
    # A JWT: header.payload.signature, base64url, header always starts with {" -> eyJ.
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), MASK),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {MASK}"),
    # scheme://user:password@host -> scheme://user:[redacted]@host (also ://:pw@).
    (re.compile(r"(://[^/\s:@]*):[^/\s@]+@"), rf"\1:{MASK}@"),
    # name=value in query strings, cookies and log key=value pairs.
    (
        re.compile(
            r"(?i)\b(preview_token|access_token|refresh_token|id_token|token|password|passwd"
            r"|secret|api_key|apikey|pv_[a-z0-9]+)=([^\s&;,'\"]+)"
        ),
        rf"\1={MASK}",
    ),
    # Header lines quoted in text ("Cookie: a=b; c=d", "Authorization: ...").
    (
        re.compile(r"(?im)\b(cookie|set-cookie|authorization|proxy-authorization)\s*:\s*[^\r\n]+"),
        rf"\1: {MASK}",
    ),
]


def redact(text: str) -> str:
    """`text` with every secret the rules know replaced by ``[redacted]``."""
    if not text:
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def is_secret_name(name: object) -> bool:
    return isinstance(name, str) and name.lower().replace("-", "_") in _NORMALISED


_NORMALISED = frozenset(n.replace("-", "_") for n in SECRET_NAMES)


def redact_value(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON-like value with secret-named keys masked and strings redacted."""
    if depth > 12:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            k: MASK if is_secret_name(k) and v not in (None, "") else redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        # Header lists arrive as [name, value] pairs.
        if len(value) == 2 and is_secret_name(value[0]):
            return [value[0], MASK]
        return [redact_value(v, depth + 1) for v in value]
    return value
