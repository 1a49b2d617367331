"""PREVIEW_WORKERS: gateway processes sharing the listeners. Previews work whichever worker
a connection lands on, a route change reaches every worker's cache, a worker that dies is
replaced, and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_gateway, upstream
from tests.gateway.test_proxy_ws import cookie_for
from tests.gateway.tls_fixtures import TlsFiles, tls_files
from tests.utils import RedisServer, wait_until

__all__ = ["tls_files", "upstream"]
CONNECTIONS = 24


def workers_of(pid: int) -> list[int]:
    """The gateway's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


@pytest.fixture(scope="module")
def two_workers(redis_server: RedisServer, tls_files: TlsFiles) -> Iterator[ProxyEnv]:
    with proxy_gateway(redis_server, tls=tls_files, workers=2) as env:
        wait_until(lambda: len(workers_of(env.gateway.process.pid)) == 2, 30, "two workers")
        yield env


@pytest.fixture
def opened(two_workers: ProxyEnv, upstream: Upstream) -> tuple[ProxyEnv, str, str]:
    """The two-worker gateway, a session on the upstream and its preview cookie."""
    sid = two_workers.session(upstream.address)
    return two_workers, sid, cookie_for(two_workers, sid)


def fresh_get(env: ProxyEnv, sid: str, cookie: str, path: str = "/") -> httpx.Response:
    """One request on a new connection (so the kernel may hand it to either worker)."""
    with env.client(sid) as client:
        client.headers["cookie"] = cookie
        return client.get(path)


def test_previews_work_on_every_worker_and_route_changes_reach_all(
    opened: tuple[ProxyEnv, str, str],
) -> None:
    env, sid, cookie = opened
    answers = [fresh_get(env, sid, cookie) for _ in range(30)]
    assert [a.status_code for a in answers] == [200] * 30
    assert {a.http_version for a in answers} == {"HTTP/2"}
    # The plain listener is shared too.
    plain = httpx.get(
        f"{env.gateway.url}/?preview_token={env.token(sid)}",
        headers={"host": f"{sid}.preview.localhost:{env.gateway.port}"},
    )
    assert plain.status_code == 302, plain.text

    # Stopped: every worker's cache drops the route (published change), none keeps serving.
    env.set_state(sid, "stopped")
    wait_until(
        lambda: all(fresh_get(env, sid, cookie).status_code == 503 for _ in range(20)),
        10,
        "every worker sees the stop",
    )


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_connections_are_spread_over_the_workers(opened: tuple[ProxyEnv, str, str]) -> None:
    """Each worker has a SO_REUSEPORT socket of its own: the kernel spreads a burst of
    connections over them (with one shared socket, one worker could take them all)."""
    env, _, _ = opened
    workers = workers_of(env.gateway.process.pid)
    before = {pid: open_fds(pid) for pid in workers}
    address = ("127.0.0.1", env.gateway.port)
    held = [socket.create_connection(address, timeout=10) for _ in range(CONNECTIONS)]
    try:
        for sock in held:  # each accepted and answered: the worker holds it now
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        gained = [open_fds(pid) - before[pid] for pid in workers]
        # 2 ** -(CONNECTIONS - 1) that a fair spread gives one worker none.
        assert all(n > 0 for n in gained), gained
    finally:
        for sock in held:
            sock.close()


def test_a_dead_worker_is_replaced_and_the_other_keeps_serving(
    opened: tuple[ProxyEnv, str, str],
) -> None:
    env, sid, cookie = opened
    before = workers_of(env.gateway.process.pid)
    os.kill(before[0], signal.SIGKILL)
    assert all(fresh_get(env, sid, cookie).status_code == 200 for _ in range(10))

    def replaced() -> bool:
        now = workers_of(env.gateway.process.pid)
        return len(now) == 2 and before[0] not in now

    wait_until(replaced, 30, "a new worker")
    assert all(fresh_get(env, sid, cookie).status_code == 200 for _ in range(10))


def test_sigterm_stops_every_worker(redis_server: RedisServer) -> None:
    with proxy_gateway(redis_server, workers=2) as env:
        pid = env.gateway.process.pid
        wait_until(lambda: len(workers_of(pid)) == 2, 30, "two workers")
        workers = workers_of(pid)
        env.gateway.stop()
        assert env.gateway.process.returncode == 0
        for worker in workers:
            assert (
                not Path(f"/proc/{worker}").exists()
                or b"Z" in Path(f"/proc/{worker}/stat").read_bytes().split(b")")[1][:3]
            )
