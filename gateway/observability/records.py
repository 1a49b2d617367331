"""Preview records: one per start (how it went and how long each phase took) and one per
stop (how long the preview lived). The team's data for deciding what to optimise.

A record's id is derived from its session (``{sid}:start``, ``{sid}:stop``), so writing
the same record twice — two gateways folding the same events, a spool replayed after a
crash — stores it once. A preview that hibernated lives in periods, each from its start or
resume (its ``created_at``) to its hibernation or stop: from its first hibernation on, ids
carry the period's start in ms (``{sid}:stop:{ms}``, ``{sid}:resume:{ms}``), so each
period keeps its own records. A hibernation is a stop record with outcome ``hibernated``;
a resume's start is a record of kind ``resume`` (not in the start statistics: no new
container was prepared from scratch); stop records count the sleeps and wakes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.sessions.store import Session
from shared.redact import redact

PHASES = ("acquire", "files", "dependencies", "devserver", "total")
# Start outcomes: ready; failed (the preview reported an error); no_capacity (no container
# could be had); cancelled (stopped before it was ready).
START_OUTCOMES = ("ready", "failed", "no_capacity", "cancelled")
ERROR_OUTCOMES = frozenset({"failed", "no_capacity"})
MAX_DETAIL = 500


@dataclass(frozen=True)
class Record:
    id: str
    kind: str  # "start" | "resume" | "stop"
    ts: float  # when the start finished / the preview stopped (unix seconds)
    sid: str
    user: str
    project: str
    host: str = ""
    container: str = ""
    outcome: str = ""  # start: one of START_OUTCOMES; stop: the reason code (user, idle...)
    reason: str = ""  # a failure's reason, for people
    detail: str = ""
    from_pool: bool | None = None
    dependencies: str = ""
    timings: dict[str, int] = field(default_factory=dict)  # milliseconds per phase
    created_at: float = 0.0
    duration: float = 0.0  # stop: seconds the preview lived
    shares: int = 0  # stop: share links its owner made
    share_views: int = 0  # stop: times a share link of it was opened
    sleeps: int = 0  # stop: times it went to sleep in this period
    wakes: int = 0  # stop: times it was woken in this period

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Record:
        data: dict[str, Any] = json.loads(raw)
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def _detail(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    detail = error.get("detail", "")
    if isinstance(detail, list):
        detail = "\n".join(str(line) for line in detail[-10:])
    return redact(str(detail))[-MAX_DETAIL:]


def record_id(session: Session, kind: str) -> str:
    """``kind`` "start" or "stop": the id of that record of the session's current period."""
    if not session.archive:  # never hibernated: one period, the ids as they always were
        return f"{session.id}:{kind}"
    name = "resume" if kind == "start" else kind
    return f"{session.id}:{name}:{round(session.created_at * 1000)}"


def start_record(
    session: Session, outcome: str, reason: str = "", now: float | None = None
) -> Record:
    """The start record of `session` as it stands now."""
    error = session.error or {}
    timings = {k: int(v) for k, v in session.timings.items() if k in PHASES}
    rid = record_id(session, "start")
    return Record(
        id=rid,
        kind=rid.split(":")[1],
        ts=now if now is not None else time.time(),
        sid=session.id,
        user=session.user,
        project=session.project_id,
        host=session.host,
        container=session.container,
        outcome=outcome,
        # Kept for months and read by the team: no credential a failure quoted.
        reason=redact(reason or (str(error.get("reason") or "") if outcome == "failed" else "")),
        detail=_detail(error) if outcome == "failed" else "",
        from_pool=session.from_pool,
        dependencies=session.dependencies,
        timings=timings,
        created_at=session.created_at,
    )


def stop_record(session: Session, code: str, reason: str = "", now: float | None = None) -> Record:
    now = now if now is not None else time.time()
    return Record(
        id=record_id(session, "stop"),
        kind="stop",
        ts=now,
        sid=session.id,
        user=session.user,
        project=session.project_id,
        host=session.host,
        container=session.container,
        outcome=code,
        reason=redact(reason),
        from_pool=session.from_pool,
        dependencies=session.dependencies,
        created_at=session.created_at,
        duration=max(0.0, now - session.created_at) if session.created_at else 0.0,
        shares=session.shares,
        share_views=session.share_views,
        sleeps=session.sleeps,
        wakes=session.wakes,
    )


def start_outcome(session: Session) -> str:
    """What a start that ends now came to, judged by the session's state."""
    if session.state == "ready":
        return "ready"
    if session.state == "failed":
        return "failed"
    return "cancelled"
