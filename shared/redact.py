"""Secrets out of text: what logs and Sentry events must never carry.

One set of rules for both, so a log line and the error report about it agree: JWTs (any
``eyJ...`` three-part token), ``Bearer`` credentials, ``preview_token``/``token``/
``password``/``secret`` query or ``key=value`` pairs, credentials in URLs
(``redis://:pw@host``, ``https://TOKEN@host``), and Cookie/Set-Cookie/Authorization
header values. For one URL whose credentials are known (a git source), ``url_secrets``
lists them and ``public_url`` is what may be shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

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
    # scheme://userinfo@host -> scheme://[redacted]@host: a password, or a token given as
    # the user name (https://TOKEN@github.com/..., https://oauth2:TOKEN@gitlab...).
    (re.compile(r"://[^/\s@]+@"), rf"://{MASK}@"),
    # name=value in query strings, cookies and log key=value pairs.
    (
        re.compile(
            r"(?i)\b(preview_token|access_token|refresh_token|id_token|private_token|token"
            r"|password|passwd|secret|api_key|apikey|pv_[a-z0-9]+)=([^\s&;,'\"]+)"
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


def url_secrets(url: str) -> list[str]:
    """The credentials in `url`, as they may appear in a program's output: its user info,
    user name and password (raw and percent-decoded) and every query value; longest first,
    so that replacing them in turn leaves no part of one behind."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: set[str] = set()
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    for piece in (userinfo, *userinfo.split(":", 1)):
        found.update((piece, unquote(piece)))
    for _, value in parse_qsl(parts.query, keep_blank_values=True):
        found.add(value)
    return sorted((f for f in found if len(f) >= 3), key=len, reverse=True)


def public_url(url: str) -> str:
    """`url` fit to show, log or store: no user info, query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{name}={MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def scrub(text: str, secrets: list[str]) -> str:
    """`text` without any of `secrets` (see ``url_secrets``), then ``redact``ed."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return redact(text)
