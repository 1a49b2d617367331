"""Messages exchanged through Redis between the gateway/controller and supervisors.

Plain dataclasses serialised as JSON. Decoding is strict about types of the fields it
uses and ignores unknown fields, so either side can be upgraded first.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from shared.states import DevState, is_dev_state

CommandType = Literal[
    "prepare",
    "claim",
    "write_files",
    "restart",
    "stop",
    "reset",
    "logs",
    "sleep",
    "wake",
    "hibernate",
]
COMMAND_TYPES: tuple[str, ...] = get_args(CommandType)
# CommandResult.result["code"] of a command refused because its session is not the
# container's current one (supervisor/fence.py): the gateway answers 409, not 500.
WRONG_SESSION = "wrong_session"
# Lines of output a supervisor keeps, and so the most a "logs" command can return.
LOG_LINES = 2000

EventType = Literal["progress", "warning", "ready", "error"]


class MessageError(ValueError):
    """A message from Redis could not be decoded."""


def _load(raw: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("expected a JSON object")
    return data


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# A sleeping supervisor beats only every PREVIEW_SLEEP_HEARTBEAT_INTERVAL (each wake-up is
# most of what a frozen preview costs); its heartbeat key lives this many of those beats,
# so a container that died asleep is taken for dead within that time.
SLEEPING_TTL_BEATS = 3


def sleeping_heartbeat_ttl(sleep_interval: float, awake_ttl: float) -> float:
    """The heartbeat TTL of a sleeping supervisor (never shorter than an awake one's)."""
    return max(SLEEPING_TTL_BEATS * sleep_interval, awake_ttl)


@dataclass
class Heartbeat:
    """What a supervisor reports every heartbeat interval."""

    container_id: str
    ts: float
    session_id: str | None = None
    state: DevState = "idle"
    cpu_percent: float = 0.0
    memory_used: int = 0
    memory_limit: int = 0
    disk_used: int = 0
    disk_total: int = 0
    pid: int | None = None
    port: int | None = None
    restarts: int = 0
    last_error: str | None = None
    project_id: str | None = None
    node_modules_key: str | None = None
    # The container's CPU limit in cores as its cgroup says (cpu.max); None: unlimited.
    cpu_limit: float | None = None
    # The user's other listening ports (supervisor/ports.py) and the container address
    # the gateway reaches them on; the gateway serves no port missing from this list.
    ports: list[int] = field(default_factory=list)
    address: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Heartbeat:
        data = _load(raw)
        try:
            hb = cls(**_known(cls, data))
        except TypeError as exc:
            raise MessageError(str(exc)) from None
        if not is_dev_state(hb.state):
            raise MessageError(f"unknown dev-server state {hb.state!r}")
        if not isinstance(hb.ports, list) or not all(
            type(p) is int and 0 < p < 65536 for p in hb.ports
        ):
            raise MessageError("ports must be a list of TCP ports")
        return hb

    @classmethod
    def read(cls, raw: str | bytes | None) -> Heartbeat | None:
        """The heartbeat in a Redis value; None when missing or unreadable (an unreadable
        heartbeat counts as no heartbeat: the container is not known to be alive)."""
        if raw is None:
            return None
        try:
            return cls.from_json(raw)
        except MessageError:
            return None


@dataclass
class Command:
    """An instruction to one supervisor; acknowledged by a CommandResult with the same id."""

    type: str
    args: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    issued_at: float = field(default_factory=time.time)

    def to_fields(self) -> dict[str, str]:
        """Stream entry fields (XADD)."""
        return {"command": json.dumps(asdict(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Command:
        raw = fields.get("command", fields.get(b"command"))
        if raw is None:
            raise MessageError("stream entry has no 'command' field")
        data = _load(raw)
        try:
            cmd = cls(**_known(cls, data))
        except TypeError as exc:
            raise MessageError(str(exc)) from None
        if cmd.type not in COMMAND_TYPES:
            raise MessageError(f"unknown command type {cmd.type!r}")
        if not isinstance(cmd.args, dict):
            raise MessageError("command args must be an object")
        return cmd


@dataclass
class CommandResult:
    """The acknowledgement of one Command."""

    command_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    finished_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> CommandResult:
        try:
            return cls(**_known(cls, _load(raw)))
        except TypeError as exc:
            raise MessageError(str(exc)) from None


@dataclass
class Event:
    """A session event: progress {step, percent, message, elapsed_ms}, warning, ready, error."""

    type: str
    session_id: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_fields(self) -> dict[str, str]:
        return {
            "type": self.type,
            "session": self.session_id,
            "data": json.dumps(self.data, separators=(",", ":")),
            "ts": repr(self.ts),
        }

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Event:
        def get(name: str) -> str:
            value = fields.get(name, fields.get(name.encode()))
            if value is None:
                raise MessageError(f"event has no {name!r} field")
            return value.decode() if isinstance(value, bytes) else str(value)

        try:
            ts = float(get("ts"))
        except ValueError:
            raise MessageError("event ts is not a number") from None
        return cls(type=get("type"), session_id=get("session"), data=_load(get("data")), ts=ts)
