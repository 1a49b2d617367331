"""Typed views of the API's JSON. Each keeps the whole answer in `raw`: fields the gateway
adds later (sleep/wake states, shares) are there before this package names them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STEPS = ("files", "dependencies", "devserver")  # the phases of a start, in order


@dataclass(frozen=True)
class Preview:
    id: str
    project_id: str
    state: str  # assigned, preparing, starting, ready, sleeping, hibernated, resuming, failed...
    url: str
    open_url: str  # url with a ~60 s single-use preview_token: open it soon
    events_url: str
    timings: dict[str, int]
    from_pool: bool
    dependencies: str | None
    error: dict[str, Any] | None
    heartbeat: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def ports(self) -> list[dict[str, Any]]:
        """The project's other open ports: `{port, url, open_url, protocol}` each."""
        return list(self.raw.get("ports") or [])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preview:
        return cls(
            id=str(data["id"]),
            project_id=str(data.get("project_id", "")),
            state=str(data.get("state", "")),
            url=str(data.get("url", "")),
            open_url=str(data.get("open_url", "")),
            events_url=str(data.get("events_url", "")),
            timings=dict(data.get("timings") or {}),
            from_pool=bool(data.get("from_pool")),
            dependencies=data.get("dependencies"),
            error=data.get("error"),
            heartbeat=data.get("heartbeat"),
            raw=data,
        )


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a start: `progress` ({step, percent, message,
    elapsed_ms}), `warning`, `ready` or `error` ({reason, detail}); when followed, a state
    change after it: `sleeping`, `ready`, `hibernated`, `resuming`, `failed`, `stopped`
    ({state, at})."""

    id: str
    type: str
    data: dict[str, Any]

    @property
    def step(self) -> str | None:
        value = self.data.get("step")
        return value if isinstance(value, str) else None

    @property
    def percent(self) -> int:
        value = self.data.get("percent")
        return int(value) if isinstance(value, int | float) else 0

    @property
    def message(self) -> str:
        return str(self.data.get("message", ""))

    @classmethod
    def parse(cls, event_id: str, kind: str, payload: str) -> Event:
        try:
            data = json.loads(payload) if payload else {}
        except ValueError:
            data = {"message": payload}
        return cls(event_id, kind, data if isinstance(data, dict) else {"value": data})


@dataclass(frozen=True)
class Upload:
    """The answer to an archive upload."""

    format: str
    mode: str
    files: int
    unpacked_bytes: int
    started: bool  # the first archive of an archive-source preview: preparation began


@dataclass(frozen=True)
class Logs:
    lines: list[str]
    stale: bool  # the supervisor did not answer: its last snapshot


@dataclass(frozen=True)
class Share:
    """A share link of a preview: `url` opens it for viewing (`public`), or through
    `open_share` for another signed-in user (`signed_in`), until `expires_at`."""

    id: str
    preview_id: str
    url: str
    access: str
    ports: bool  # the preview's other ports are shared too
    created_at: float
    expires_at: float
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Share:
        return cls(
            id=str(data["id"]),
            preview_id=str(data.get("preview_id", "")),
            url=str(data.get("url", "")),
            access=str(data.get("access", "")),
            ports=bool(data.get("ports")),
            created_at=float(data.get("created_at") or 0),
            expires_at=float(data.get("expires_at") or 0),
            raw=data,
        )
