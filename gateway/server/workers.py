"""PREVIEW_WORKERS gateway processes sharing the listening sockets.

The parent binds every listener once, then starts the workers (``spawn``: each imports
the application afresh, with its own event loop, Redis pool and upstream pool) and hands
them the sockets; the kernel spreads accepted connections among them. SIGTERM/SIGINT to
the parent is passed on, and each worker drains as a single gateway does. A worker that
dies is replaced (at most one a second), unless it stopped on a configuration error
(exit code 2): then all stop, with that code.

Per process, and so per worker rather than per gateway: the route cache (each worker
subscribes to route changes, so it stays as current as one process's), WebSocket caps
and buffer budgets per client (PREVIEW_WS_MAX_PER_CLIENT and PREVIEW_WS_BUFFER_PER_CLIENT
hold per worker: a client may hold up to PREVIEW_WORKERS times them), the upstream
keep-alive pool and the activity throttle. Anything kept in Redis (failed-login
counts, API rate limits, sessions) is shared as before.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from hypercorn.config import Config, Sockets

log = logging.getLogger("gateway")
CONFIG_ERROR = 2  # a worker's exit code for a setting it cannot start with
RESTART_EVERY = 1.0  # seconds between replacements of dead workers, at least

Worker = Callable[[Config, Sockets], None]


def run_workers(config: Config, sockets: Sockets, count: int, worker: Worker) -> int:
    """Run `count` workers until told to stop; the exit code for the parent."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    processes: dict[int, tuple[BaseProcess, float]] = {}

    def start() -> None:
        process = ctx.Process(target=worker, args=(config, sockets), daemon=False)
        process.start()
        assert process.sentinel is not None
        processes[process.sentinel] = (process, time.monotonic())

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process, _ in processes.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker drains

    for _ in range(count):
        start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while processes:
        for sentinel in wait(list(processes)):
            assert isinstance(sentinel, int)
            process, began = processes.pop(sentinel)
            process.join()
            if stopping:
                continue
            if process.exitcode == CONFIG_ERROR:
                log.error("gateway worker stopped on a configuration error: stopping")
                code = CONFIG_ERROR
                stop(signal.SIGTERM, None)
                continue
            log.error("gateway worker exited (code %s): starting another", process.exitcode)
            time.sleep(max(0.0, began + RESTART_EVERY - time.monotonic()))
            start()
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.close()
    return code
