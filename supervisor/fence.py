"""Commands are fenced by session: a command reaches the workspace, the dev server or the
logs only while its session is the container's current one (the rule is in ``commands``).

``admit`` decides at dispatch, in stream order, before the command's task exists, and is
where ``prepare``/``claim`` make their session current and ``reset`` ends it; so a command
queued after a ``reset`` is judged after that reset, however long the reset itself takes.
``check`` asks again at the moment a command acts (``write_files`` under the workspace
lock, ``restart`` before it launches): one admitted just before a ``reset`` may act only
if it gets there before the reset does.
"""

from __future__ import annotations

from shared.messages import WRONG_SESSION, Command
from supervisor.context import Context
from supervisor.errors import CommandError

ESTABLISH = frozenset({"prepare", "claim"})
ENDED_KEPT = 64  # sessions remembered as ended: a late command of one is still refused


def session_of(command: Command) -> str | None:
    """The session a command acts for (``prepare``/``claim`` may name it in their args)."""
    named = command.session_id or None
    if command.type in ESTABLISH:
        in_args = str(command.args.get("session_id") or "") or None
        if named and in_args and named != in_args:
            raise refused(f"{command.type} names two sessions ({named}, {in_args})")
        named = named or in_args
    return named


def resumes(command: Command) -> bool:
    """A prepare that restores a hibernated workspace (supervisor/hibernation.py)."""
    source = command.args.get("source")
    return (
        command.type == "prepare"
        and isinstance(source, dict)
        and source.get("type") == "hibernated"
    )


def refused(why: str) -> CommandError:
    return CommandError(f"refused: {why}; nothing was done", {"code": WRONG_SESSION})


def admit(ctx: Context, command: Command) -> None:
    """Accept ``command`` (moving the current session for prepare, claim and reset) or
    raise CommandError."""
    sid = session_of(command)
    current = ctx.session.session_id
    if command.type in ESTABLISH:
        if not sid:
            raise CommandError(f"{command.type} needs a session_id")
        if sid in ctx.session.ended:
            if not resumes(command) or current is not None:
                raise refused(f"session {sid} has ended on this container")
            # A hibernated preview resumed on the container that served it before its
            # hibernation (its owner's reserved one): a new life of the session, begun
            # like any start, on a container that serves no one.
            ctx.session.ended = [e for e in ctx.session.ended if e != sid]
        if current is not None and current != sid:
            raise refused(f"this container serves another session than {sid}")
        if current != sid:
            ctx.session.session_id = sid
            ctx.save()
        return
    if command.type == "reset":
        if current is not None and sid != current:
            raise refused(f"reset must name the current session (it named {sid or 'none'})")
        if sid and sid not in ctx.session.ended:
            ctx.session.ended = [*ctx.session.ended, sid][-ENDED_KEPT:]
        if current is not None:
            ctx.session.session_id = None
        ctx.save()
        return
    check(ctx, command)


def check(ctx: Context, command: Command) -> None:
    """A session command acts only for the current session; one without a session only
    while there is none (an operator's or a test's command on an idle container)."""
    sid, current = command.session_id or None, ctx.session.session_id
    if sid == current:
        return
    if sid is None:
        raise refused(f"{command.type} must name the current session")
    if current is None:
        raise refused(f"session {sid} is not (or no longer) this container's")
    raise refused(f"session {sid} is not this container's current one")
