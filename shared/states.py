"""The states both sides of Redis agree on, as types: a typo'd state is a mypy error.

A session's ``state`` (its record ``keys.session(sid)``, written by the gateway and the
controller, read by the proxy) and a dev server's (what a supervisor reports in its
heartbeat and its command results). ``mypy --strict`` rejects comparing either with a
string that is not one of them; values read from Redis go through the parse functions.
"""

from __future__ import annotations

from typing import Literal, TypeGuard, get_args

SessionState = Literal[
    "assigned",
    "preparing",
    "starting",
    "ready",
    "sleeping",
    "hibernated",
    "resuming",
    "stopping",
    "failed",
]
SESSION_STATES: tuple[SessionState, ...] = get_args(SessionState)
# Before "ready": the proxy shows a browser the "starting" page rather than an error.
# A resuming (hibernated) preview is starting again: the same page.
STARTING_STATES: frozenset[SessionState] = frozenset(
    {"assigned", "preparing", "starting", "resuming"}
)

DevState = Literal[
    "idle", "installing", "starting", "ready", "sleeping", "crashed", "stopped", "failed"
]
DEV_STATES: tuple[DevState, ...] = get_args(DevState)


def is_session_state(raw: str) -> TypeGuard[SessionState]:
    return raw in SESSION_STATES


def is_dev_state(raw: str) -> TypeGuard[DevState]:
    return raw in DEV_STATES


def parse_session_state(raw: str) -> SessionState:
    """``raw`` as a session state; ValueError when it is none."""
    if is_session_state(raw):
        return raw
    raise ValueError(f"unknown session state {raw!r}")


def session_state_of_record(raw: str) -> SessionState:
    """The state of a session record as read from Redis. A record no version of this code
    wrote (a hand edit, a newer gateway's state) cannot be served or resumed: ``failed``,
    which the proxy refuses and the owner can stop."""
    return raw if is_session_state(raw) else "failed"
