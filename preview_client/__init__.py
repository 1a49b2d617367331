"""A typed client for the preview gateway's public API, sync and async, on httpx.

    from preview_client import PreviewClient, mint_token

    token = mint_token(secret, "alice")            # the app backend's job
    with PreviewClient("http://127.0.0.1:8080", token) as client:
        preview = client.start_folder("my-app", "./my-app")
        preview = client.wait_ready(preview.id, on_event=print)
        print(preview.open_url)

Endpoints newer than this package (sleep/wake, shares) are reachable through
`client.request(method, path, json=...)` until it names them.
"""

from preview_client.aio import AsyncPreviewClient
from preview_client.archive import DEFAULT_MAX_UPLOAD, pack, pack_folder
from preview_client.errors import (
    ApiError,
    ArchiveTooLarge,
    AuthError,
    ConflictError,
    GatewayUnreachable,
    NotFoundError,
    PreviewClientError,
    PreviewFailed,
    RateLimitedError,
    TooLargeError,
    UnavailableError,
    WaitTimeout,
)
from preview_client.ignore import project_files
from preview_client.models import STEPS, Event, Logs, Preview, Share, Upload
from preview_client.sync import PreviewClient
from preview_client.tokens import mint_token

__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "STEPS",
    "ApiError",
    "ArchiveTooLarge",
    "AsyncPreviewClient",
    "AuthError",
    "ConflictError",
    "Event",
    "GatewayUnreachable",
    "Logs",
    "NotFoundError",
    "Preview",
    "PreviewClient",
    "PreviewClientError",
    "PreviewFailed",
    "RateLimitedError",
    "Share",
    "TooLargeError",
    "UnavailableError",
    "Upload",
    "WaitTimeout",
    "mint_token",
    "pack",
    "pack_folder",
    "project_files",
]
