"""Session records (``keys.session(sid)``, a Redis hash) and how events move them along.

The record is what the proxy and controller read: id, user, project_id, state, container,
host, address, created_at, updated_at, from_pool, dependencies, timings (JSON), error
(JSON or ""), events_from (the container's event-stream id after which this session's
events begin), events_seen (how far the state has been folded from those events),
prepare_id (the prepare command, whose result carries the phase timings) and pending (for
an archive source: the prepare arguments, until the archive arrives).

A supervisor may write only its own container's keys, so its events are folded into the
record by the gateway (on reads and by the tracker), with a compare-and-set on the stream
position so two gateways folding at once never move a session backwards.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.lifecycle import lua_note
from shared.messages import Event, MessageError
from shared.redis_types import record, text
from shared.states import SessionState, session_state_of_record

DEPENDENCIES = ("restored", "installed", "skipped")
# Progress steps that mean the dev server is booting; every other step is preparation.
STARTING_STEPS = frozenset({"devserver", "dev_server", "dev-server", "server", "start", "starting"})
LIVE_BATCH = 500  # records read per pipelined round trip by live_sessions

# KEYS: session, route-changes channel, lifecycle stream. ARGV[1] = stream id folded up
# to, then field/value pairs. Writes only when the record exists, is not stopping and the id
# is not behind what was folded before (equal: heartbeat-derived changes), never into or
# out of `sleeping` (but to `failed`); tells the proxies it changed, and the preview's
# followers when it turned ready (a start or a resume done) or failed.
ADVANCE = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'stopping' then return 0 end
local function parse(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  return tonumber(ms or -1), tonumber(seq or -1)
end
local seen = redis.call('HGET', KEYS[1], 'events_seen')
if not seen or seen == '' then seen = redis.call('HGET', KEYS[1], 'events_from') end
local ms, seq = parse(ARGV[1])
local seen_ms, seen_seq = parse(seen)
if ms < seen_ms or (ms == seen_ms and seq < seen_seq) then return 0 end
local fields = {'events_seen', ARGV[1]}
local changed = nil
for i = 2, #ARGV, 2 do
  -- Only the sleep and wake scripts move a session into or out of 'sleeping' (to ready),
  -- and only a resume out of 'hibernated': a state folded from a snapshot read before
  -- one of them ran must not undo it.
  local stale = ARGV[i] == 'state' and (state == 'hibernated' or
    (ARGV[i + 1] == 'sleeping' and state ~= 'sleeping') or
    (state == 'sleeping' and ARGV[i + 1] == 'ready'))
  if not stale then
    table.insert(fields, ARGV[i])
    table.insert(fields, ARGV[i + 1])
    if ARGV[i] == 'state' and ARGV[i + 1] ~= state and
      (ARGV[i + 1] == 'ready' or ARGV[i + 1] == 'failed') then
      changed = ARGV[i + 1]
    end
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
if #ARGV > 1 then redis.call('PUBLISH', KEYS[2], redis.call('HGET', KEYS[1], 'id')) end
if changed then
  local now = redis.call('TIME')
"""
    + lua_note("KEYS[3]", "changed", "now[1] .. '.' .. string.format('%06d', now[2])")
    + "end\nreturn 1\n"
)


def new_id() -> str:
    """16 characters of base32 (80 random bits): unguessable, lowercase, DNS-safe."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def _json(raw: str, default: Any) -> Any:
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0


@dataclass
class Session:
    id: str
    user: str
    project_id: str
    state: SessionState = "assigned"
    container: str = ""
    host: str = ""
    address: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    from_pool: bool | None = None
    dependencies: str = ""
    timings: dict[str, int] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    events_from: str = ""
    events_seen: str = ""
    prepare_id: str = ""  # the prepare command's id: its result has the phase timings
    pending: str = ""  # archive source: the prepare args (JSON) waiting for the files
    # Hibernated (or resuming): {"name", "sha256", "host", "bytes"} of its packed workspace.
    archive: dict[str, Any] | None = None
    # Counted in the record by HINCRBY (share links made, share links opened; times it
    # went to sleep and woke since it started or resumed), never written back by
    # `to_record`, so a stale copy cannot reset them.
    shares: int = 0
    share_views: int = 0
    sleeps: int = 0
    wakes: int = 0

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Session:
        pool = record.get("from_pool", "")
        timings = _json(record.get("timings", ""), {})
        error = _json(record.get("error", ""), None)
        archive = _json(record.get("archive", ""), None)
        return cls(
            id=record.get("id", ""),
            user=record.get("user", ""),
            project_id=record.get("project_id", ""),
            state=session_state_of_record(record.get("state", "assigned")),
            container=record.get("container", ""),
            host=record.get("host", ""),
            address=record.get("address", ""),
            created_at=_float(record.get("created_at", "0")),
            updated_at=_float(record.get("updated_at", "0")),
            from_pool=None if pool == "" else pool == "1",
            dependencies=record.get("dependencies", ""),
            timings=timings if isinstance(timings, dict) else {},
            error=error if isinstance(error, dict) else None,
            events_from=record.get("events_from", ""),
            events_seen=record.get("events_seen", ""),
            prepare_id=record.get("prepare_id", ""),
            pending=record.get("pending", ""),
            archive=archive if isinstance(archive, dict) else None,
            shares=int(_float(record.get("shares", "0"))),
            share_views=int(_float(record.get("share_views", "0"))),
            sleeps=int(_float(record.get("sleeps", "0"))),
            wakes=int(_float(record.get("wakes", "0"))),
        )

    def to_record(self) -> dict[str, str]:
        return {
            "id": self.id,
            "user": self.user,
            "project_id": self.project_id,
            "state": self.state,
            "container": self.container,
            "host": self.host,
            "address": self.address,
            "created_at": repr(self.created_at),
            "updated_at": repr(self.updated_at),
            "from_pool": "" if self.from_pool is None else ("1" if self.from_pool else "0"),
            "dependencies": self.dependencies,
            "timings": json.dumps(self.timings, separators=(",", ":")),
            "error": json.dumps(self.error, separators=(",", ":")) if self.error else "",
            "events_from": self.events_from,
            "prepare_id": self.prepare_id,
            "pending": self.pending,
            "archive": json.dumps(self.archive, separators=(",", ":")) if self.archive else "",
        }

    @property
    def cursor(self) -> str:
        """The event-stream id after which unfolded events of this session are."""
        return self.events_seen or self.events_from or "0-0"


async def live_sessions(redis: Redis, limit: int | None = None) -> list[Session]:
    """Every live session (the SESSIONS set; the first `limit` ids when given), oldest
    first, stopping ones included: the records are read in pipelined batches of
    LIVE_BATCH, and one deleted meanwhile is left out. The one read of "all sessions"
    for the API, the tracker, the reaper and the operator views."""
    sids = sorted(text(s) for s in await redis.smembers(keys.SESSIONS))[:limit]
    found: list[Session] = []
    for start in range(0, len(sids), LIVE_BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for sid in sids[start : start + LIVE_BATCH]:
                pipe.hgetall(keys.session(sid))
            replies = await pipe.execute()
        found += [Session.from_record(record(r)) for r in replies if r]
    return sorted((s for s in found if s.id), key=lambda s: s.created_at)


def merge_result(session: Session, result: dict[str, Any]) -> None:
    """Phase timings and the dependency outcome from the prepare command's result."""
    timings = result.get("timings_ms")
    if isinstance(timings, dict):
        for phase, ms in timings.items():
            if isinstance(phase, str) and isinstance(ms, int | float):
                session.timings[phase] = int(ms)
    if result.get("dependencies") in DEPENDENCIES:
        session.dependencies = str(result["dependencies"])


def event_entries(entries: Iterable[tuple[Any, Any]], sid: str) -> list[tuple[str, Event]]:
    """(stream id, Event) for this session's well-formed entries of an XRANGE/XREAD reply."""
    found = []
    for raw_id, fields in entries:
        try:
            event = Event.from_fields(fields)
        except MessageError:
            continue
        if event.session_id == sid:
            found.append((raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id), event))
    return found


def fold(session: Session, events: Iterable[Event]) -> dict[str, str]:
    """Apply events to the session (in place); the record fields that changed."""
    before = session.to_record()
    for event in events:
        data = event.data
        if event.type == "progress":
            starting = str(data.get("step", "")) in STARTING_STEPS
            session.state = "starting" if starting else "preparing"
            session.error = None
        elif event.type == "ready":
            session.state = "ready"
            session.error = None
            if session.created_at and "total" not in session.timings:
                session.timings["total"] = max(0, round((event.ts - session.created_at) * 1000))
        elif event.type == "error":
            session.state = "failed"
            detail = data.get("detail")
            session.error = {
                **data,
                "reason": str(data.get("reason") or "failed"),
                "detail": detail if isinstance(detail, str | list) else "",
            }
        if data.get("dependencies") in DEPENDENCIES:
            session.dependencies = str(data["dependencies"])
    after = session.to_record()
    changed = {k: v for k, v in after.items() if before.get(k) != v}
    if changed:
        session.updated_at = time.time()
        changed["updated_at"] = repr(session.updated_at)
    return changed
