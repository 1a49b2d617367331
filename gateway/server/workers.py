"""PREVIEW_WORKERS gateway processes sharing the listening addresses.

The parent binds every listener, then starts the workers (``spawn``: each imports the
application afresh, with its own event loop, Redis pool and upstream pool) and hands each
its own sockets: one per worker and address, all bound with SO_REUSEPORT, so the kernel
spreads new connections evenly among the workers. (One socket shared by every worker is
not spread: the first worker to wake accepts every connection of a burst, as its event
loop accepts until none is left, and 2 workers served no more than 1.) SIGTERM/SIGINT to
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
import socket
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


def reuse_port_copy(sock: socket.socket) -> socket.socket:
    """Another listening socket on `sock`'s address (bound with SO_REUSEPORT, as hypercorn
    binds every socket when it has workers): the kernel balances connections among them.
    A Unix socket cannot be bound twice: it is shared as it is."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    copy = socket.socket(sock.family, sock.type)
    copy.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    copy.bind(sock.getsockname())  # the bound port, even when the setting said 0
    copy.setblocking(False)
    copy.set_inheritable(True)
    return copy


def per_worker(sockets: Sockets, count: int) -> list[Sockets]:
    """`count` sets of listening sockets: `sockets` itself, and copies of it."""
    sets = [sockets]
    for _ in range(count - 1):
        sets.append(
            Sockets(
                [reuse_port_copy(s) for s in sockets.secure_sockets],
                [reuse_port_copy(s) for s in sockets.insecure_sockets],
                [],
            )
        )
    return sets


def run_workers(config: Config, sockets: Sockets, count: int, worker: Worker) -> int:
    """Run `count` workers until told to stop; the exit code for the parent."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    processes: dict[int, tuple[BaseProcess, float, int]] = {}
    # The parent keeps every set open: a dead worker's replacement takes over its sockets
    # (with the connections queued on them meanwhile).
    sets = per_worker(sockets, count)

    def start(index: int) -> None:
        process = ctx.Process(target=worker, args=(config, sets[index]), daemon=False)
        process.start()
        assert process.sentinel is not None
        processes[process.sentinel] = (process, time.monotonic(), index)

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process, _, _ in processes.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker drains

    for index in range(count):
        start(index)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while processes:
        for sentinel in wait(list(processes)):
            assert isinstance(sentinel, int)
            process, began, index = processes.pop(sentinel)
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
            start(index)
    for each in sets:
        for sock in (*each.secure_sockets, *each.insecure_sockets):
            sock.close()
    return code
