"""Each API call once, as data: method, path, body and how to read the answer. The sync
and async clients only send these (preview_client.sync, preview_client.aio)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from preview_client import _core
from preview_client.models import Logs, Preview, Share, Upload

T = TypeVar("T")
MAX_WAIT_FOR_SLOT = 60  # the API's ?wait= bound


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: dict[str, Any] | None = None
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: the client's


def _preview(response: httpx.Response) -> Preview:
    return Preview.from_json(response.json())


def _previews(response: httpx.Response) -> list[Preview]:
    return [Preview.from_json(item) for item in response.json()["previews"]]


def _nothing(response: httpx.Response) -> None:
    return None


def _json(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


def source(
    template: str | None, git_url: str | None, ref: str | None, archive: bool
) -> dict[str, str]:
    """The start's `source` from exactly one of template, git_url or archive."""
    given = [x for x in (template, git_url, archive or None) if x]
    if len(given) != 1:
        raise ValueError("give exactly one of template=, git_url= or archive=True")
    if template:
        return {"type": "template", "name": template}
    if git_url:
        return {"type": "git", "url": git_url, **({"ref": ref} if ref else {})}
    return {"type": "archive"}


def start(
    project_id: str, source: dict[str, str], env: dict[str, str] | None, wait_for_slot: int
) -> Call[Preview]:
    """`wait_for_slot` (≤ 60 s): queue for a concurrency slot instead of a 429."""
    params = {"wait": str(min(wait_for_slot, MAX_WAIT_FOR_SLOT))} if wait_for_slot > 0 else {}
    body = _core.start_body(project_id, source, env)
    timeout = wait_for_slot + 60.0
    return Call("POST", "/v1/previews", _preview, json=body, params=params, timeout=timeout)


def list_previews() -> Call[list[Preview]]:
    return Call("GET", "/v1/previews", _previews)


def get(preview_id: str) -> Call[Preview]:
    return Call("GET", _core.preview_path(preview_id), _preview)


def stop(preview_id: str) -> Call[None]:
    return Call("DELETE", _core.preview_path(preview_id), _nothing)


def upload(preview_id: str, archive: bytes, mode: str) -> Call[Upload]:
    if mode not in ("merge", "replace"):
        raise ValueError("mode must be merge or replace")
    path = _core.preview_path(preview_id, "/files")
    return Call("PUT", path, _core.upload, content=archive, params={"mode": mode}, timeout=180.0)


def write_file(preview_id: str, path: str, data: bytes) -> Call[int]:
    def written(response: httpx.Response) -> int:
        return int(response.json().get("bytes", len(data)))

    return Call("PUT", _core.file_path(preview_id, path), written, content=data, timeout=90.0)


def restart(preview_id: str) -> Call[Preview]:
    return Call("POST", _core.preview_path(preview_id, "/restart"), _preview, timeout=60.0)


def sleep(preview_id: str) -> Call[Preview]:
    return Call("POST", _core.preview_path(preview_id, "/sleep"), _preview)


def wake(preview_id: str) -> Call[Preview]:
    """Wakes a sleeping preview, or resumes a hibernated one (that can take a start)."""
    return Call("POST", _core.preview_path(preview_id, "/wake"), _preview, timeout=120.0)


def hibernate(preview_id: str) -> Call[Preview]:
    return Call("POST", _core.preview_path(preview_id, "/hibernate"), _preview, timeout=120.0)


def _share(response: httpx.Response) -> Share:
    return Share.from_json(response.json())


def create_share(preview_id: str, expires_in: int, access: str, ports: bool) -> Call[Share]:
    if access not in ("public", "signed_in"):
        raise ValueError("access must be public or signed_in")
    body = {"expires_in": expires_in, "access": access, "ports": ports}
    return Call("POST", _core.preview_path(preview_id, "/shares"), _share, json=body)


def list_shares(preview_id: str) -> Call[list[Share]]:
    def parse(response: httpx.Response) -> list[Share]:
        return [Share.from_json(item) for item in response.json()["shares"]]

    return Call("GET", _core.preview_path(preview_id, "/shares"), parse)


def revoke_share(preview_id: str, share_id: str) -> Call[None]:
    path = _core.preview_path(preview_id, f"/shares/{quote(share_id, safe='')}")
    return Call("DELETE", path, _nothing)


def open_share(share_id: str) -> Call[str]:
    """A signed-in viewer's single-use URL for a `signed_in` share (open it soon)."""

    def parse(response: httpx.Response) -> str:
        return str(response.json()["url"])

    return Call("POST", f"/v1/shares/{quote(share_id, safe='')}/open", parse)


def logs(preview_id: str, lines: int) -> Call[Logs]:
    def parse(response: httpx.Response) -> Logs:
        data = response.json()
        return Logs([str(x) for x in data.get("lines", [])], bool(data.get("stale")))

    path = _core.preview_path(preview_id, "/logs")
    return Call("GET", path, parse, params={"lines": str(lines)})


def pool() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/pool", _json)


def all_previews() -> Call[list[dict[str, Any]]]:
    def parse(response: httpx.Response) -> list[dict[str, Any]]:
        return list(response.json()["previews"])

    return Call("GET", "/v1/admin/previews", parse)
