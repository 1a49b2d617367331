"""The supervisor's root exception: a command that could not do what it was asked."""

from __future__ import annotations

from typing import Any


class CommandError(Exception):
    """Answered as ``CommandResult(ok=False, error=error, result=result)``."""

    def __init__(self, error: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.result = result or {}
