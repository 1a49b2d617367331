"""The asyncio client: `AsyncPreviewClient(base_url, token)`, the same methods as
PreviewClient (preview_client.sync), awaited; folders are packed in a worker thread."""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from preview_client import _core, calls
from preview_client.archive import DEFAULT_MAX_UPLOAD, pack, pack_folder
from preview_client.errors import ApiError
from preview_client.models import Event, Logs, Preview, Share, Upload

T = TypeVar("T")


class AsyncPreviewClient:
    """A user's view of the preview API. `token` is the user's JWT (see
    preview_client.tokens); assign a fresh one to `client.token` before it expires.

    Retries: a request the gateway refused with 429/503 is sent again after its
    `Retry-After` (up to `max_retry_wait` seconds, `max_retries` times); a connection that
    failed before sending, for any method; a dropped or timed-out answer, for idempotent
    methods only (never a start or a restart twice).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.max_upload_bytes = max_upload_bytes
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncPreviewClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # --- the API, one call each ---------------------------------------------------------

    async def start(
        self,
        project_id: str,
        *,
        template: str | None = None,
        git_url: str | None = None,
        ref: str | None = None,
        archive: bool = False,
        env: dict[str, str] | None = None,
        wait_for_slot: int = 0,
    ) -> Preview:
        """Start (or find, for the same project: a hot start) a preview from a template,
        a git repository, or files uploaded next (`archive=True`, see `start_folder`)."""
        source = calls.source(template, git_url, ref, archive)
        return await self.send(calls.start(project_id, source, env, wait_for_slot))

    async def list(self) -> list[Preview]:
        return await self.send(calls.list_previews())

    async def get(self, preview_id: str) -> Preview:
        return await self.send(calls.get(preview_id))

    async def stop(self, preview_id: str) -> None:
        """Stop it: its slot is free at once."""
        await self.send(calls.stop(preview_id))

    async def upload_archive(self, preview_id: str, archive: bytes, mode: str = "merge") -> Upload:
        """Send a tar (optionally zstd); `replace` empties the workspace first."""
        return await self.send(calls.upload(preview_id, archive, mode))

    async def write_file(self, preview_id: str, path: str, data: bytes | str) -> int:
        """Write one file (path relative to the project's root); its size."""
        raw = data.encode() if isinstance(data, str) else data
        return await self.send(calls.write_file(preview_id, path, raw))

    async def restart(self, preview_id: str) -> Preview:
        return await self.send(calls.restart(preview_id))

    async def sleep(self, preview_id: str) -> Preview:
        """Freeze the dev server now (it wakes on the next request)."""
        return await self.send(calls.sleep(preview_id))

    async def wake(self, preview_id: str) -> Preview:
        """Wake a sleeping preview, or resume a hibernated one."""
        return await self.send(calls.wake(preview_id))

    async def hibernate(self, preview_id: str) -> Preview:
        """Pack the workspace away and free the container (resumed by a visit or wake)."""
        return await self.send(calls.hibernate(preview_id))

    async def create_share(
        self, preview_id: str, expires_in: int = 3600, access: str = "public", ports: bool = False
    ) -> Share:
        return await self.send(calls.create_share(preview_id, expires_in, access, ports))

    async def list_shares(self, preview_id: str) -> builtins.list[Share]:
        return await self.send(calls.list_shares(preview_id))

    async def revoke_share(self, preview_id: str, share_id: str) -> None:
        await self.send(calls.revoke_share(preview_id, share_id))

    async def open_share(self, share_id: str) -> str:
        """As the viewer (this client's token): a single-use URL for a signed-in share."""
        return await self.send(calls.open_share(share_id))

    async def logs(self, preview_id: str, lines: int = 200) -> Logs:
        return await self.send(calls.logs(preview_id, lines))

    async def pool(self) -> dict[str, Any]:
        """Operator view (admin scope)."""
        return await self.send(calls.pool())

    async def all_previews(self) -> builtins.list[dict[str, Any]]:
        """Operator view (admin scope): every live session."""
        return await self.send(calls.all_previews())

    # --- folders ------------------------------------------------------------------------

    async def upload_folder(
        self, preview_id: str, folder: str | os.PathLike[str], mode: str = "merge"
    ) -> Upload:
        """The project in `folder` (.gitignore honoured, node_modules and build output
        left out); ArchiveTooLarge before sending when over `max_upload_bytes`."""
        archive = await asyncio.to_thread(pack_folder, folder, self.max_upload_bytes)
        return await self.upload_archive(preview_id, archive, mode)

    async def upload_files(
        self, preview_id: str, folder: str | os.PathLike[str], files: Iterable[str]
    ) -> Upload:
        """Some files of `folder` (relative paths) in one request (merged)."""
        archive = await asyncio.to_thread(pack, Path(folder), files, self.max_upload_bytes)
        return await self.upload_archive(preview_id, archive, "merge")

    async def start_folder(
        self, project_id: str, folder: str | os.PathLike[str], env: dict[str, str] | None = None
    ) -> Preview:
        """Start a preview of a local folder: packed first (so a folder over the limit
        takes no slot), then started as an `archive` source and uploaded. A live preview
        of the same project gets the files merged in."""
        archive = await asyncio.to_thread(pack_folder, folder, self.max_upload_bytes)
        preview = await self.start(project_id, archive=True, env=env)
        await self.upload_archive(preview.id, archive)
        return preview

    # --- progress -----------------------------------------------------------------------

    async def events(
        self, preview_id: str, last_event_id: str | None = None, follow: bool = False
    ) -> AsyncIterator[Event]:
        """The start's events over one connection (it ends after `ready` or `error`);
        `follow`: then each later state change (`sleeping`, `ready`, `hibernated`,
        `resuming`), until `failed` or `stopped` ends it."""
        waiter = _core.Waiter(preview_id, None, float("inf"))
        waiter.last_id, waiter.follow = last_event_id, follow
        async with self._stream(preview_id, waiter) as response:
            async for line in response.aiter_lines():
                event = waiter.decoder.feed(line)
                if event is not None:
                    yield event

    async def wait_ready(
        self,
        preview_id: str,
        on_event: _core.ProgressCallback | None = None,
        timeout: float = 600.0,
    ) -> Preview:
        """Follow the start until `ready` (the preview) or `error` (PreviewFailed),
        calling `on_event` with each event once; a dropped stream is resumed where it
        stopped (`Last-Event-ID`). WaitTimeout after `timeout` seconds."""
        waiter = _core.Waiter(preview_id, on_event, timeout)
        while True:
            waiter.remaining()
            try:
                async with self._stream(preview_id, waiter) as response:
                    async for line in response.aiter_lines():
                        if waiter.feed(line):
                            break
            except ApiError as exc:
                if not _core.resumable(exc):
                    raise
                await asyncio.sleep(waiter.retry_delay(exc))
                continue
            except httpx.TransportError as exc:
                await asyncio.sleep(waiter.retry_delay(_core.unreachable(self.base_url, exc)))
                continue
            done = waiter.settle(await self.get(preview_id))
            if done is not None:
                return done
            # The stream ended mid-start without an error (a proxy closing long
            # responses): follow it again, without hammering the gateway.
            await asyncio.sleep(min(1.0, waiter.remaining()))

    # --- transport ----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Any API call (endpoints newer than this client): the response when it is a
        success, ApiError otherwise; retried like the others."""
        call = calls.Call(method.upper(), path, _itself, json, content, params or {})
        return await self.send(call)

    async def send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    content=call.content,
                    params=call.params,
                    headers=_core.headers(self.token),
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                delay = _core.delay_for_failure(call.method, exc, attempt)
                if delay is None or attempt >= self.max_retries:
                    raise _core.unreachable(self.base_url, exc) from None
            else:
                delay = _core.delay_for_answer(call.method, response, attempt, self.max_retry_wait)
                if delay is None or attempt >= self.max_retries:
                    return call.parse(_core.check(response))
            await asyncio.sleep(delay)
            attempt += 1

    def _stream(self, preview_id: str, waiter: _core.Waiter) -> _Stream:
        return _Stream(self, preview_id, waiter)


def _itself(response: httpx.Response) -> httpx.Response:
    return response


class _Stream:
    """The events response, checked (ApiError for an error answer)."""

    def __init__(self, client: AsyncPreviewClient, preview_id: str, waiter: _core.Waiter) -> None:
        self.client = client
        self.preview_id = preview_id
        self.waiter = waiter
        self.response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        http = self.client._http
        headers = {**_core.headers(self.client.token), **self.waiter.request_headers()}
        timeout = httpx.Timeout(30.0, read=_core.EVENTS_READ_TIMEOUT)
        path = _core.preview_path(self.preview_id, "/events")
        params = {"follow": "1"} if self.waiter.follow else None
        request = http.build_request("GET", path, headers=headers, params=params, timeout=timeout)
        self.response = await http.send(request, stream=True)
        if self.response.status_code >= 400:
            await self.response.aread()
            await self.response.aclose()
            _core.check(self.response)
        self.waiter.connected()
        return self.response

    async def __aexit__(self, *exc: object) -> None:
        if self.response is not None:
            await self.response.aclose()
