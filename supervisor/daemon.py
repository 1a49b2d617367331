"""The supervisor's main loop: heartbeats, log snapshots, and commands from the stream.

Commands are read through the consumer group ``keys.COMMAND_GROUP`` as consumer ``cid``.
On start (and after any Redis error) this consumer's pending entries are read first, so
a command delivered to a supervisor that died is executed by the next one. What ran is
recorded in ``keys.command_done(cid)`` in the same transaction that publishes the result
and acknowledges the entry, and checked before running: nothing runs twice. Each command
is a task, so ``stop`` or ``logs`` are answered while a ``prepare`` installs; those that
change the workspace take turns (``Context.workspace_lock``). Before its task is made, a
command is admitted or refused by its session (``supervisor/fence.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.messages import Command, CommandResult, MessageError
from shared.redis_client import addresses, sentinel_master, sentinel_user_options
from supervisor import fence, heartbeat, procs
from supervisor.cgroup import Cgroup
from supervisor.commands import HANDLERS
from supervisor.config import SupervisorConfig
from supervisor.context import Context, SessionState, process_start_time
from supervisor.devserver import DevServer, LaunchSpec
from supervisor.errors import CommandError
from supervisor.events import Events
from supervisor.logbuffer import LogBuffer, publish_snapshots
from supervisor.portforward import external_address
from supervisor.readiness import backoff

log = logging.getLogger(__name__)

READ_BLOCK_MS = 5000
# While the dev server sleeps, each idle return of the blocking read is, with the
# heartbeat, most of what its supervisor costs: it blocks a whole sleeping heartbeat
# interval (PREVIEW_SLEEP_HEARTBEAT_INTERVAL); a command still arrives at once.


def asleep_block_ms(config: SupervisorConfig) -> int:
    return max(READ_BLOCK_MS, int(config.sleep_heartbeat_interval * 1000))


def connect(config: SupervisorConfig) -> Redis:
    """Our Redis client. It does not send CLIENT SETINFO: our ACL user is not allowed it,
    and a refused command would fill the server's ACL LOG on every connection."""
    options: dict[str, Any] = {
        "client_name": config.container_id,
        "socket_connect_timeout": 5,
        # Longer than XREADGROUP's longest BLOCK (redis-py 8 defaults to 5 s, which would
        # cut every idle blocking read short with a TimeoutError).
        "socket_timeout": asleep_block_ms(config) / 1000 + 10,
    }
    if "driver_info" in inspect.signature(Redis.__init__).parameters:
        options["driver_info"] = None
    else:
        options.update(lib_name=None, lib_version=None)
    if config.redis_sentinels:
        # Each new connection asks the sentinels for the master: after a failover the
        # next one reaches the promoted replica, where the controller recreates our user.
        quiet = {k: v for k, v in options.items() if k != "client_name"}
        return sentinel_master(
            addresses(config.redis_sentinels),
            config.redis_master,
            config.redis_url,
            {**quiet, **sentinel_user_options(config.sentinel_user)},
            **options,
        )
    return Redis.from_url(config.redis_url, **options)


class Supervisor:
    def __init__(self, config: SupervisorConfig, base_env: dict[str, str]) -> None:
        self.config = config
        redis = connect(config)
        logs = LogBuffer()
        events = Events(redis, config.container_id)
        cgroup = Cgroup()
        user = procs.AppUser.resolve(config.app_user)
        self.ctx: Context
        devserver = DevServer(
            user=user,
            logs=logs,
            events=events,
            cgroup=cgroup,
            external_address=config.external_address or external_address(),
            restart_limit=config.restart_limit,
            restart_window=config.restart_window,
            on_change=lambda: self.ctx.save(),
        )
        self.ctx = Context(
            config=config,
            redis=redis,
            user=user,
            base_env=base_env,
            logs=logs,
            events=events,
            cgroup=cgroup,
            devserver=devserver,
            session=SessionState(),
        )
        self.cid = config.container_id
        self.stream = keys.commands(self.cid)
        self.running: dict[str, asyncio.Task[None]] = {}  # command id -> its task

    async def run(self) -> None:
        """Run until cancelled (SIGTERM); then ``shutdown``."""
        await self._recover()
        background = [
            asyncio.create_task(heartbeat.run(self.ctx), name="heartbeat"),
            asyncio.create_task(
                publish_snapshots(self.ctx.redis, self.cid, self.ctx.logs), name="logs"
            ),
            asyncio.create_task(self._consume(), name="commands"),
        ]
        try:
            # Each runs forever; one ending means a bug: let it surface.
            done, _ = await asyncio.wait(background, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop taking commands, cancel those in flight (they stay pending and run after
        a restart), stop the dev server, and remove the heartbeat."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.ctx.devserver.stop("stopped")
        try:
            await heartbeat.clear(self.ctx)
        except RedisError as exc:
            log.warning("heartbeat not deleted: %s", exc)
        await self.ctx.redis.aclose()
        log.info("supervisor stopped")

    async def _recover(self) -> None:
        """Pick up after a previous supervisor: its session record, and no stray user
        processes (their parent is gone; a dev server would hold the port)."""
        config, ctx = self.config, self.ctx
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config.workspace.mkdir(parents=True, exist_ok=True)
        ctx.user.chown(config.workspace)
        ctx.session = SessionState.load(ctx.state_path)
        if ctx.user.uid is not None:
            killed = await procs.kill_user_processes(ctx.user.uid)
            if killed:
                log.info("killed %d leftover processes of %s", killed, ctx.user.name)
        elif ctx.session.dev_pgid and ctx.session.dev_started == process_start_time(
            ctx.session.dev_pgid
        ):
            procs.signal_group(ctx.session.dev_pgid, signal.SIGKILL)
        if ctx.session.launch:
            with contextlib.suppress(KeyError, TypeError):
                ctx.devserver.spec = LaunchSpec.from_json(ctx.session.launch)
                ctx.devserver.session_id = ctx.session.session_id
        if ctx.session.dev_wanted:
            # Not restarted on our own: the gateway decides (a `restart` command).
            ctx.devserver.set_state("stopped", "the supervisor restarted; send restart")
        ctx.session.dev_wanted = False
        ctx.save()
        log.info(
            "supervisor %s up: redis=%s user=%s workspace=%s session=%s",
            self.cid,
            config.redacted_redis(),
            ctx.user.name,
            config.workspace,
            ctx.session.session_id,
        )

    async def _ensure_group(self) -> None:
        try:
            await self.ctx.redis.xgroup_create(
                self.stream, keys.COMMAND_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume(self) -> None:
        delays = backoff(first=0.5, cap=10.0)
        while True:
            try:
                await self._ensure_group()
                await self._read(pending=True)
                delays = backoff(first=0.5, cap=10.0)
                while True:
                    await self._read(pending=False)
            except (RedisError, OSError) as exc:
                delay = next(delays)
                log.warning("reading commands failed (%s); again in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _read(self, pending: bool) -> None:
        """Pending entries (from id 0 up, until none is left) or new ones (blocking)."""
        last = "0"
        while True:
            reply = await self.ctx.redis.xreadgroup(
                keys.COMMAND_GROUP,
                self.cid,
                {self.stream: last if pending else ">"},
                count=20,
                block=None if pending else self._block_ms(),
            )
            entries = _entries(reply)
            for entry_id, fields in entries:
                await self._dispatch(_text(entry_id), fields)
                last = _text(entry_id)
            if not pending or not entries:
                return

    def _block_ms(self) -> int:
        asleep = self.ctx.devserver.state == "sleeping"
        return asleep_block_ms(self.config) if asleep else READ_BLOCK_MS

    async def _dispatch(self, entry_id: str, fields: dict[Any, Any] | None) -> None:
        if not fields:  # a pending entry whose data was trimmed from the stream
            await self.ctx.redis.xack(self.stream, keys.COMMAND_GROUP, entry_id)
            return
        try:
            command = Command.from_fields(fields)
        except MessageError as exc:
            log.warning("dropping bad command %s: %s", entry_id, exc)
            await self.ctx.redis.xack(self.stream, keys.COMMAND_GROUP, entry_id)
            return
        if command.id in self.running:
            return  # redelivered while still running here
        done = await self.ctx.redis.hget(keys.command_done(self.cid), command.id)
        if done is not None:
            log.info("command %s (%s) already ran: answering again", command.id, command.type)
            try:
                recorded = CommandResult.from_json(done)
            except MessageError:
                recorded = CommandResult(command.id, False, {}, "it ran; its result is unreadable")
            await self._finish(entry_id, recorded)
            return
        try:
            # Here, in stream order and before any task runs: see supervisor/fence.py.
            fence.admit(self.ctx, command)
        except CommandError as exc:
            log.warning(
                "command %s %s (session %s) refused: %s",
                command.id,
                command.type,
                command.session_id,
                exc.error,
            )
            await self._finish(entry_id, CommandResult(command.id, False, exc.result, exc.error))
            return
        task = asyncio.create_task(self._execute(entry_id, command), name=command.id)
        self.running[command.id] = task
        task.add_done_callback(lambda t: self.running.pop(command.id, None))
        if command.type == "prepare":
            self.ctx.prepares.add(task)
            task.add_done_callback(self.ctx.prepares.discard)

    async def _execute(self, entry_id: str, command: Command) -> None:
        log.info("command %s %s started", command.id, command.type)
        try:
            result = await HANDLERS[command.type](self.ctx, command)
            outcome = CommandResult(command.id, True, result)
        except CommandError as exc:
            outcome = CommandResult(command.id, False, exc.result, exc.error)
        except asyncio.CancelledError:
            if command.id not in self.ctx.superseded:
                raise  # shutting down: left pending, runs again after a restart
            self.ctx.superseded.discard(command.id)
            outcome = CommandResult(command.id, False, {}, "cancelled by stop or reset")
        except Exception as exc:
            log.error("command %s %s failed", command.id, command.type, exc_info=True)
            outcome = CommandResult(command.id, False, {}, f"internal error: {exc}")
        log.info(
            "command %s %s finished ok=%s%s",
            command.id,
            command.type,
            outcome.ok,
            f" error={outcome.error}" if outcome.error else "",
        )
        await self._finish(entry_id, outcome)

    async def _finish(self, entry_id: str, outcome: CommandResult) -> None:
        """Record, publish and acknowledge in one transaction, retrying through a Redis
        outage (if we die first, the entry stays pending and is handled again)."""
        cid, payload = self.cid, outcome.to_json()
        for delay in backoff(first=0.5, cap=5.0):
            try:
                async with self.ctx.redis.pipeline(transaction=True) as pipe:
                    pipe.hset(keys.command_done(cid), outcome.command_id, payload)
                    pipe.expire(keys.command_done(cid), keys.COMMAND_DONE_TTL)
                    pipe.rpush(keys.command_result(cid, outcome.command_id), payload)
                    pipe.expire(
                        keys.command_result(cid, outcome.command_id), keys.COMMAND_RESULT_TTL
                    )
                    pipe.delete(keys.command_blob(cid, outcome.command_id))
                    pipe.xack(self.stream, keys.COMMAND_GROUP, entry_id)
                    await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                log.warning("result of %s not published (%s); retrying", outcome.command_id, exc)
                await asyncio.sleep(delay)


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The entries of a one-stream XREADGROUP reply (RESP2: a list, RESP3: a dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
