"""What the sync and async clients share, free of I/O: request shapes, answers to
exceptions, the retry rule and the reading of a start's event stream."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from preview_client.errors import (
    ApiError,
    GatewayUnreachable,
    PreviewFailed,
    WaitTimeout,
    api_error,
)
from preview_client.models import Event, Preview, Upload

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
EVENTS_READ_TIMEOUT = 45.0  # the gateway pings every 15 s: three missed pings is a dead link
USER_AGENT = "preview-client/0.1"

ProgressCallback = Callable[[Event], object]


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}


def file_path(preview_id: str, path: str) -> str:
    return f"/v1/previews/{quote(preview_id, safe='')}/files/{quote(path.lstrip('/'))}"


def preview_path(preview_id: str, tail: str = "") -> str:
    return f"/v1/previews/{quote(preview_id, safe='')}{tail}"


def start_body(
    project_id: str, source: dict[str, str], env: dict[str, str] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"project_id": project_id, "source": source}
    if env:
        body["env"] = env
    return body


def check(response: httpx.Response) -> httpx.Response:
    """The response when it is a success, else the ApiError for it."""
    if response.status_code < 400:
        return response
    try:
        body = response.json()
    except ValueError:
        body = None
    error = api_error(response.status_code, body if isinstance(body, dict) else None, response.text)
    error.retry_after = retry_after(response)
    raise error


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        when = email.utils.parsedate_to_datetime(raw) if raw else None
        return None if when is None else max(0.0, when.timestamp() - time.time())


def delay_for_answer(
    method: str, response: httpx.Response, attempt: int, max_wait: float
) -> float | None:
    """Seconds to wait before sending again, or None to give the answer to the caller.

    429 and 503 mean nothing was done, so any method may be resent, after `Retry-After`
    (but not when that is longer than `max_wait`, nor for `too_many_previews`: a slot
    frees when a preview stops, not with time). 502/504 are resent for idempotent methods only.
    """
    if response.status_code not in RETRY_STATUSES:
        return None
    if response.status_code in (502, 504) and method not in IDEMPOTENT:
        return None
    if response.status_code == 429:
        try:
            if response.json().get("error") == "too_many_previews":
                return None
        except (ValueError, AttributeError):
            pass
    wait = retry_after(response)
    wait = backoff(attempt) if wait is None else wait
    return wait if wait <= max_wait else None


def delay_for_failure(method: str, exc: httpx.TransportError, attempt: int) -> float | None:
    """A request that never reached the gateway (no connection) may be resent whatever
    its method; one that may have been handled only when it is idempotent."""
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return backoff(attempt) if unsent or method in IDEMPOTENT else None


def backoff(attempt: int) -> float:
    return float(min(0.25 * 2**attempt, 8.0))


def unreachable(base_url: str, exc: httpx.TransportError) -> GatewayUnreachable:
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__cause__ or exc.__context__
        reason = "connection refused" if isinstance(cause, ConnectionRefusedError) else str(exc)
        reason = "connection refused" if "refused" in str(exc).lower() else reason
    elif isinstance(exc, httpx.TimeoutException):
        reason = "timed out"
    else:
        reason = str(exc) or type(exc).__name__
    return GatewayUnreachable(base_url, reason or type(exc).__name__)


def upload(response: httpx.Response) -> Upload:
    data = response.json()
    return Upload(
        format=str(data.get("format", "")),
        mode=str(data.get("mode", "")),
        files=int(data.get("files", 0)),
        unpacked_bytes=int(data.get("unpacked_bytes", 0)),
        started=response.status_code == 202,
    )


class SSEDecoder:
    """Server-Sent Events from lines (WHATWG rules: `field: value`, blank line ends an
    event, `:` starts a comment, several `data` lines join with newlines)."""

    def __init__(self) -> None:
        self.event_id = ""
        self.kind = ""
        self.data: list[str] = []
        self.retry_ms: int | None = None

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self.data and not self.kind:
                return None
            event = Event.parse(self.event_id, self.kind or "message", "\n".join(self.data))
            self.kind, self.data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id" and "\0" not in value:
            self.event_id = value
        elif name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class Waiter:
    """Follows one preview's start across reconnections: remembers the last event id
    (sent back as `Last-Event-ID`), hands each new event to the callback once, and
    knows when the start is over."""

    def __init__(self, preview_id: str, on_event: ProgressCallback | None, timeout: float) -> None:
        self.preview_id = preview_id
        self.on_event = on_event
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.last_id: str | None = None
        self.follow = False  # `?follow=1`: the preview's state changes after its start
        self.outcome: Event | None = None
        self.decoder = SSEDecoder()
        self.failures = 0  # consecutive connections that brought nothing new

    def request_headers(self) -> dict[str, str]:
        found = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            found["Last-Event-ID"] = self.last_id
        return found

    def connected(self) -> None:
        self.decoder = SSEDecoder()  # a partial event of a cut stream is dropped

    def feed(self, line: str) -> bool:
        """One line of the stream; True once the start is over (ready or error).
        WaitTimeout past the deadline (pings every 15 s bring lines even when idle)."""
        self.remaining()
        event = self.decoder.feed(line)
        if event is None:
            return False
        if event.id:
            self.last_id = event.id
        self.failures = 0
        if self.on_event is not None:
            self.on_event(event)
        if event.type in ("ready", "error"):
            self.outcome = event
            return True
        return False

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"preview {self.preview_id} not ready after {self.timeout:.0f}s")
        return left

    def retry_delay(self, problem: Exception) -> float:
        """Seconds before reconnecting after a cut stream; the problem itself once it keeps
        failing without any progress."""
        self.failures += 1
        if self.failures > 8:
            raise problem
        server_hint = (self.decoder.retry_ms or 1000) / 1000
        return min(backoff(self.failures), server_hint, self.remaining())

    def settle(self, preview: Preview) -> Preview | None:
        """After the stream ended: the preview when ready, PreviewFailed when its start
        failed, None to follow the stream again (it ended with neither)."""
        if self.outcome is not None and self.outcome.type == "error":
            data = self.outcome.data
            raise PreviewFailed(
                self.preview_id, str(data.get("reason", "error")), data.get("detail") or ""
            )
        if preview.state == "failed":
            error = preview.error or {}
            reason = str(error.get("reason", "failed"))
            raise PreviewFailed(self.preview_id, reason, error.get("detail") or "")
        if preview.state == "ready" or self.outcome is not None:
            return preview  # the record may lag its `ready` event by a moment
        return None


def resumable(exc: ApiError) -> bool:
    """An error answer to the events request worth trying again: 409 `not_ready` (no
    container yet), or the gateway briefly unable to serve (429, 502-504)."""
    return (exc.status == 409 and exc.error == "not_ready") or exc.status in RETRY_STATUSES
