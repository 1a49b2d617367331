"""The client's exceptions: one root, the API's answers with their `error`/`detail`."""

from __future__ import annotations

from typing import Any


class PreviewClientError(Exception):
    """Root of everything this package raises."""


class ApiError(PreviewClientError):
    """The gateway answered with an error: HTTP `status`, its stable `error` code and the
    human `detail`; `body` keeps the whole answer (`field`, `limit`, `active`...)."""

    def __init__(
        self, status: int, error: str, detail: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{detail} ({error}, HTTP {status})")
        self.status = status
        self.error = error
        self.detail = detail
        self.body = body or {}
        self.retry_after: float | None = None


class AuthError(ApiError):
    """401 (missing, expired or badly signed token) or 403 (admin scope needed)."""


class NotFoundError(ApiError):
    """404: no such preview, or not the caller's (the API does not tell them apart)."""


class ConflictError(ApiError):
    """409: the preview cannot do this now (no container yet, stopped or moved meanwhile)."""


class TooLargeError(ApiError):
    """413: a body over the gateway's limit (`body["limit"]` in bytes)."""


class RateLimitedError(ApiError):
    """429: over a rate limit (`rate_limited`) or the concurrent previews limit
    (`too_many_previews`); `retry_after` in seconds when the gateway said."""


class UnavailableError(ApiError):
    """5xx: the gateway's dependencies or the preview's container are not answering."""


BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
    429: RateLimitedError,
}


def api_error(status: int, body: dict[str, Any] | None, text: str) -> ApiError:
    """The exception for an error answer; a body that is not the API's JSON error shape
    (a proxy in between) still gives a readable detail."""
    if body is not None and isinstance(body.get("error"), str):
        error, detail = body["error"], str(body.get("detail", ""))
    else:
        error, detail = f"http_{status}", text.strip()[:200] or f"HTTP {status}"
    kind = BY_STATUS.get(status, UnavailableError if status >= 500 else ApiError)
    return kind(status, error, detail, body)


class GatewayUnreachable(PreviewClientError):
    """The gateway could not be reached or did not answer in time (after retries)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the gateway at {url} ({reason})")
        self.url = url
        self.reason = reason


class PreviewFailed(PreviewClientError):
    """The preview failed to start: the supervisor's `reason` and `detail` (log lines)."""

    def __init__(self, preview_id: str, reason: str, detail: str | list[str]) -> None:
        lines = detail if isinstance(detail, list) else [detail]
        shown = "; ".join(line for line in lines[-3:] if line)
        super().__init__(f"preview {preview_id} failed: {reason}" + (f": {shown}" if shown else ""))
        self.preview_id = preview_id
        self.reason = reason
        self.detail = detail


class WaitTimeout(PreviewClientError):
    """The preview did not become ready within the given time (it keeps starting)."""


class ArchiveTooLarge(PreviewClientError):
    """A folder's archive exceeds the upload limit; nothing was sent."""

    def __init__(self, folder: str, limit: int) -> None:
        super().__init__(
            f"{folder} is over the upload limit of {limit / 1048576:.1f} MiB once packed "
            "(node_modules, build output and .gitignore'd files are already left out): "
            "add the large files to .gitignore"
        )
        self.folder = folder
        self.limit = limit
