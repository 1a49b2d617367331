"""The dev server's lifecycle: start it as ``app`` in its own process group, wait until it
answers HTTP, forward its port when it bound only loopback, restart it with backoff when
it crashes, and give up (``crashed``) after ``restart_limit`` restarts within a window."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.states import DevState
from supervisor import failures, freeze, procs
from supervisor.cgroup import Cgroup
from supervisor.events import Events, Progress
from supervisor.logbuffer import LogBuffer, pump
from supervisor.portforward import PortForwarder
from supervisor.readiness import ProbeResult, backoff, probe
from supervisor.warmup import warm

log = logging.getLogger(__name__)

LOOPBACKS = ("127.0.0.1", "::1")
PORT_POLL = 0.1  # seconds between tries while the dev server's port is still closed
Outcome = Literal["ready", "exited", "timeout"]


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    port: int
    host_header: str
    ready_timeout: float = 180.0
    # Load the entry route's module graph before `ready` (supervisor/warmup.py).
    warmup: bool = True
    warmup_budget: float = 60.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "argv": list(self.argv), "cwd": str(self.cwd)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LaunchSpec:
        return cls(**{**data, "argv": tuple(data["argv"]), "cwd": Path(data["cwd"])})


class NotRunning(Exception):
    """Sleep asked of a dev server that is not running and ready."""


@dataclass
class StartResult:
    ready: bool
    reason: str | None = None
    detail: list[str] = field(default_factory=list)
    forwarded: bool = False
    warmup_ms: int | None = None
    # Parts of the start, ms: spawn → the port accepts (the dev server's own boot), then
    # → the entry route's first answer (Next.js compiles it then).
    boot_ms: int | None = None
    answer_ms: int | None = None


class DevServer:
    def __init__(
        self,
        *,
        user: procs.AppUser,
        logs: LogBuffer,
        events: Events,
        cgroup: Cgroup,
        external_address: str,
        restart_limit: int = 3,
        restart_window: float = 60.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.user = user
        self.logs = logs
        self.events = events
        self.cgroup = cgroup
        self.external_address = external_address
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self.on_change = on_change
        self.state: DevState = "idle"
        self.last_error: str | None = None
        self.restarts = 0
        self.spec: LaunchSpec | None = None
        self.session_id: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._forwarder: PortForwarder | None = None
        self._crashes: deque[float] = deque()
        self._connected_at: float | None = None  # this run's first connection (monotonic)
        self._lock = asyncio.Lock()
        # Set when it falls asleep or wakes: the heartbeat changes its pace at once.
        self.sleep_changed = asyncio.Event()

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def port(self) -> int | None:
        return self.spec.port if self.spec is not None and self.pid is not None else None

    def set_state(self, state: DevState, error: str | None = None) -> None:
        if (state == "sleeping") != (self.state == "sleeping"):
            self.sleep_changed.set()
        self.state = state
        if error is not None:
            self.last_error = error
        self.on_change()

    async def start(
        self, spec: LaunchSpec, session_id: str | None, progress: Progress | None = None
    ) -> StartResult:
        """(Re)start with ``spec``; returns once it answers HTTP or has failed for good.
        It keeps being watched (and restarted after crashes) afterwards."""
        async with self._lock:
            await self._stop_locked()
            self.spec, self.session_id = spec, session_id
            self.restarts, self.last_error = 0, None
            self._crashes.clear()
            first: asyncio.Future[StartResult] = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._supervise(spec, progress, first))
        return await asyncio.shield(first)

    async def stop(self, state: DevState = "stopped") -> None:
        async with self._lock:
            await self._stop_locked()
            self.set_state(state)

    async def sleep(self) -> int:
        """Freeze every process of the running dev server (state ``sleeping``); the number
        frozen. Raises NotRunning unless it is ``ready`` (or already asleep: 0)."""
        async with self._lock:
            if self.state == "sleeping":
                return 0
            if self.state != "ready" or self.pid is None:
                raise NotRunning(f"the dev server is {self.state}, not ready")
            frozen = await asyncio.to_thread(freeze.freeze, self.pid, self.user.uid)
            self.set_state("sleeping")
            log.info("dev server asleep: %d processes frozen", frozen)
            return frozen

    async def wake(self) -> bool:
        """Thaw a sleeping dev server (state ``ready`` again); False when it was awake."""
        async with self._lock:
            return await self._thaw_locked()

    async def _thaw_locked(self) -> bool:
        if self.state != "sleeping":
            return False
        # Not to_thread: a wake is on a request's path, and the scan is a few ms.
        thawed = freeze.thaw(self.pid, self.user.uid)
        self.set_state("ready")
        log.info("dev server awake: %d processes thawed", thawed)
        return True

    def forget(self) -> None:
        """After stop(): drop the session's launch spec and counters (reset)."""
        self.spec, self.session_id, self.restarts, self.last_error = None, None, 0, None
        self.on_change()

    async def _stop_locked(self) -> None:
        # A stopped process would hold SIGTERM pending until the grace period ran out. Thawed
        # without turning "ready": a dev server on its way down must not be reported ready
        # (its pid, then none) while it exits; the caller sets the state that follows.
        if self.state == "sleeping":
            freeze.thaw(self.pid, self.user.uid)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait, not `await task`: our own cancellation must still reach us.
            await asyncio.wait([task])
        await self._cleanup()

    async def _cleanup(self) -> None:
        if self._forwarder is not None:
            await self._forwarder.close()
            self._forwarder = None
        if self._process is not None:
            await procs.stop_process(self._process)

    async def _supervise(
        self, spec: LaunchSpec, progress: Progress | None, first: asyncio.Future[StartResult]
    ) -> None:
        def settle(result: StartResult) -> None:
            if not first.done():
                first.set_result(result)

        try:
            while True:
                result, returncode, lines, oom = await self._run_once(spec, progress, settle)
                if result is not None:  # timed out: failed, not restarted
                    settle(result)
                    return
                reason = failures.classify(lines, returncode, oom)
                detail = failures.relevant_lines(lines)
                now = time.monotonic()
                while self._crashes and now - self._crashes[0] > self.restart_window:
                    self._crashes.popleft()
                if len(self._crashes) >= self.restart_limit:
                    self.set_state("crashed", reason)
                    log.warning("dev server crashed for good: %s", reason)
                    await self.events.emit(
                        "error", self.session_id, {"reason": reason, "detail": detail}
                    )
                    settle(StartResult(False, reason, detail))
                    return
                delay = 0.5 * 2 ** len(self._crashes)
                self._crashes.append(now)
                self.restarts += 1
                self.set_state("starting", reason)
                log.warning(
                    "dev server exited (%s); restart %d in %.1fs", reason, self.restarts, delay
                )
                await self.events.emit(
                    "warning",
                    self.session_id,
                    {"type": "devserver_restart", "message": reason, "restarts": self.restarts},
                )
                await asyncio.sleep(delay)
                progress = Progress(self.events, self.session_id)
        except Exception as exc:
            log.error("dev server supervision failed", exc_info=True)
            self.set_state("failed", f"supervisor error: {exc}")
            settle(StartResult(False, self.last_error))
        finally:
            settle(StartResult(False, "the dev server was stopped before it was ready"))

    async def _run_once(
        self,
        spec: LaunchSpec,
        progress: Progress | None,
        settle: Callable[[StartResult], None],
    ) -> tuple[StartResult | None, int | None, list[str], bool]:
        """One run of the process: (a failure that must not be retried, exit code, its
        output, whether the OOM killer struck)."""
        await self._cleanup()
        oom_before = self.cgroup.sample().oom_kills
        first_line = self.logs.version
        self.set_state("starting")
        process = await procs.spawn(spec.argv, user=self.user, env=spec.env, cwd=spec.cwd)
        self._process = process
        self.on_change()
        log.info("dev server started pid=%d: %s", process.pid, " ".join(spec.argv))
        assert process.stdout is not None
        reader = asyncio.create_task(pump(process.stdout, self.logs.append))
        try:
            spawned = time.monotonic()
            self._connected_at = None
            outcome, last = await self._wait_ready(process, spec, progress)
            answered = time.monotonic()
            warmup_ms = None
            if outcome == "ready" and spec.warmup:
                warmup_ms = await self._warm_up(spec, progress, last)
            if outcome == "ready":
                if progress is not None:
                    await progress.report("devserver", 100, "the dev server answers", force=True)
                self.set_state("ready")
                await self.events.emit(
                    "ready",
                    self.session_id,
                    {"port": spec.port, "forwarded": bool(self._forwarder)},
                )
                connected = self._connected_at or answered
                settle(
                    StartResult(
                        True,
                        forwarded=self._forwarder is not None,
                        warmup_ms=warmup_ms,
                        boot_ms=int((connected - spawned) * 1000),
                        answer_ms=int((answered - connected) * 1000),
                    )
                )
            lines = self._lines_since(first_line)
            if outcome == "timeout":
                reason = (
                    f"the dev server did not answer HTTP on port {spec.port} within "
                    f"{spec.ready_timeout:.0f}s"
                    + (f" (last answer: HTTP {last.status})" if last.status else "")
                )
                detail = failures.relevant_lines(lines)
                found = failures.classify(lines, None)
                if found != failures.exit_description(None):
                    reason += f": {found}"
                await self._cleanup()
                self.set_state("failed", reason)
                await self.events.emit(
                    "error", self.session_id, {"reason": reason, "detail": detail}
                )
                return StartResult(False, reason, detail), None, lines, False
            returncode = await process.wait()
            # Let the last words (the stack trace) reach the buffer before judging them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 1.0)
            await self._cleanup()
            oom = self.cgroup.sample().oom_kills > oom_before
            return None, returncode, self._lines_since(first_line), oom
        finally:
            reader.cancel()

    async def _warm_up(
        self, spec: LaunchSpec, progress: Progress | None, ready: ProbeResult
    ) -> int:
        """Load the entry route's module graph (supervisor/warmup.py), from the entry page
        the readiness probe was answered when it kept one; its milliseconds."""
        if progress is not None:
            await progress.report("devserver", 96, "warming up the entry page", force=True)
        # Through the address the gateway uses (the forwarder, for a loopback-only server).
        report = await warm(
            self.external_address, spec.port, spec.host_header, spec.warmup_budget, entry=ready.page
        )
        log.info(
            "warm-up: %d requests in %d ms%s%s",
            report.requests,
            report.elapsed_ms,
            " (truncated)" if report.truncated else "",
            f", failed: {', '.join(report.failed[:5])}" if report.failed else "",
        )
        if report.failed:
            self.logs.append(
                f"[supervisor] warm-up: {len(report.failed)} of {report.requests} requests "
                f"failed ({', '.join(report.failed[:3])})"
            )
        return report.elapsed_ms

    def _lines_since(self, version: int) -> list[str]:
        return self.logs.tail(self.logs.version - version)

    async def _wait_ready(
        self, process: asyncio.subprocess.Process, spec: LaunchSpec, progress: Progress | None
    ) -> tuple[Outcome, ProbeResult]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + spec.ready_timeout
        exited = asyncio.ensure_future(process.wait())
        last = ProbeResult(None, False)
        try:
            # A visitor may be waiting on this (a resume): a refused connect costs
            # nothing, a connected probe waits for the answer, so look often.
            for delay in backoff(first=0.05, factor=1.5, cap=0.25):
                if exited.done():
                    return "exited", last
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return "timeout", last
                tried = time.monotonic()
                last = await self._probe(spec, min(remaining, 30.0))
                if last.connected and self._connected_at is None:
                    self._connected_at = tried
                if last.ready:
                    return "ready", last
                if progress is not None:
                    waited = loop.time() - started
                    # Asymptotic: moves visibly early on, never claims to be done.
                    percent = 95 * (1 - 1 / (1 + waited / 10))
                    tail = self.logs.tail(1)
                    state = "compiling" if last.connected else "waiting for the port"
                    message = f"{state} ({waited:.0f}s)" + (f": {tail[0][:200]}" if tail else "")
                    await progress.report("devserver", percent, message)
                # A closed port costs nothing to try again: poll it finely, so `ready`
                # is not up to a backoff step (2 s) after the server starts listening.
                pause = delay if last.connected else min(delay, PORT_POLL)
                await asyncio.wait([exited], timeout=min(pause, max(remaining, 0)))
            raise AssertionError("unreachable")
        finally:
            if not exited.done():
                exited.cancel()

    async def _probe(self, spec: LaunchSpec, budget: float) -> ProbeResult:
        external = self.external_address
        keep = spec.warmup
        result = await probe(
            external, spec.port, spec.host_header, response_timeout=budget, keep_page=keep
        )
        if result.connected or self._forwarder is not None or external in LOOPBACKS:
            return result
        for loopback in LOOPBACKS:
            inner = await probe(loopback, spec.port, spec.host_header, response_timeout=budget)
            if not inner.connected:
                continue
            forwarder = PortForwarder(external, spec.port, loopback, spec.port)
            try:
                await forwarder.start()
            except OSError as exc:
                log.info("not forwarding %s:%d: %s", external, spec.port, exc)
                return inner
            self._forwarder = forwarder
            self.logs.append(
                f"[supervisor] the dev server listens on {loopback} only: "
                f"forwarding {external}:{spec.port} to it"
            )
            return await probe(
                external, spec.port, spec.host_header, response_timeout=budget, keep_page=keep
            )
        return result
