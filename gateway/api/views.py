"""The preview object as the API shows it (ARCHITECTURE "Public HTTP contract")."""

from __future__ import annotations

from typing import Any

from gateway.proxy.ports import reachable_address
from gateway.proxy.preview_tokens import open_token
from gateway.proxy.vhosts import public_host
from gateway.sessions.store import Session
from shared.messages import Heartbeat
from shared.settings import Settings


def preview_url(settings: Settings, sid: str) -> str:
    return f"{settings.preview_scheme}://{public_host(settings, sid)}/"


def heartbeat_object(heartbeat: Heartbeat | None, sid: str) -> dict[str, Any] | None:
    """The container's last heartbeat once it reports for this session (before that, the
    pooled container's idle numbers would only mislead)."""
    if heartbeat is None or heartbeat.session_id != sid:
        return None
    return {
        "ts": heartbeat.ts,
        "dev_server": heartbeat.state,
        "cpu_percent": heartbeat.cpu_percent,
        "memory_used": heartbeat.memory_used,
        "memory_limit": heartbeat.memory_limit,
        "disk_used": heartbeat.disk_used,
        "disk_total": heartbeat.disk_total,
        "restarts": heartbeat.restarts,
        "last_error": heartbeat.last_error,
    }


def ports_object(
    settings: Settings, session: Session, heartbeat: Heartbeat | None
) -> list[dict[str, Any]]:
    """The other ports the preview's processes listen on (as its container last said),
    each at `{id}-{port}` with its own owner's link."""
    if heartbeat is None or heartbeat.session_id != session.id:
        return []
    if not reachable_address(heartbeat.address):
        return []
    found = []
    for port in heartbeat.ports[: settings.max_ports]:
        label = f"{session.id}-{port}"
        url = preview_url(settings, label)
        token = open_token(settings, label, session.user)
        found.append(
            {
                "port": port,
                "url": url,
                "protocol": "http",
                "open_url": f"{url}?preview_token={token}",
            }
        )
    return found


def preview_object(
    settings: Settings, session: Session, heartbeat: Heartbeat | None = None
) -> dict[str, Any]:
    """The preview as its owner sees it; `open_url` carries a fresh ~60 s token."""
    url = preview_url(settings, session.id)
    token = open_token(settings, session.id, session.user)
    return {
        "id": session.id,
        "project_id": session.project_id,
        "state": session.state,
        "url": url,
        "open_url": f"{url}?preview_token={token}",
        "events_url": f"{settings.public_url.rstrip('/')}/v1/previews/{session.id}/events",
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "timings": session.timings,
        "from_pool": bool(session.from_pool),
        "dependencies": session.dependencies or None,
        "error": session.error,
        "heartbeat": heartbeat_object(heartbeat, session.id),
        "ports": ports_object(settings, session, heartbeat),
    }
