"""Logging set-up: JSON lines by default, readable text on a terminal, secrets redacted.

Every line passes :func:`shared.redact.redact` (tokens, cookies, passwords in URLs), in
the message and in its traceback. Lifecycle lines carry ``sid=... user=... reason=...``
in their message; the JSON formatter lifts those pairs into fields of their own, so a log
search can filter on ``sid`` without parsing text. ``PREVIEW_LOG_FILE`` adds a
size-rotated file of JSON lines (one file per process: rotation is not shared).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from typing import IO

from shared.redact import redact
from shared.settings import Settings

# Fields lifted out of "key=value" messages; others stay in the message only.
FIELDS = ("sid", "user", "project", "cid", "host", "code", "reason", "outcome", "event")
_PAIR = re.compile(r"\b(" + "|".join(FIELDS) + r")=('(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s]+)")
# Attributes every LogRecord has; anything else came from `extra=` and is kept.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, lifted fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for name, value in _PAIR.findall(message):
            entry.setdefault(name, _unquote(value))
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry.setdefault(name, redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The terminal's format, redacted like the JSON one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def use_json(settings: Settings, stream: IO[str]) -> bool:
    if settings.log_format == "json":
        return True
    if settings.log_format == "text":
        return False
    return not stream.isatty()


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Root logger: stderr (JSON or text) and, with PREVIEW_LOG_FILE, a rotated JSON file."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json(settings, stream) else TextFormatter())
    handlers: list[logging.Handler] = [handler]
    if settings.log_file:
        rotating = logging.handlers.RotatingFileHandler(
            settings.log_file,
            maxBytes=max(0, settings.log_file_max_bytes),
            backupCount=max(0, settings.log_file_backups),
            encoding="utf-8",
        )
        rotating.setFormatter(JsonFormatter())
        handlers.append(rotating)
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers
    root.setLevel(settings.log_level.upper())
