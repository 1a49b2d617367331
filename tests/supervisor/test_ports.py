"""The user's extra ports, found from /proc for real listening processes (Node servers),
and relayed from the container's address when bound to loopback only."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from supervisor.ports import Listener, PortWatch, _address, user_ports
from tests.utils import bridge_ip, free_port, wait_until

# A process tree like a full-stack dev script: a child listens on all interfaces, a
# grandchild on loopback only.
SERVERS = """
const http = require("node:http");
const {spawn} = require("node:child_process");
const [all, loop] = process.argv.slice(1).map(Number);
http.createServer((q, s) => s.end("all")).listen(all);
spawn(process.execPath, ["-e",
  `require("node:http").createServer((q, s) => s.end("loop")).listen(${loop}, "127.0.0.1")`],
  {stdio: "inherit"});
setInterval(() => {}, 1000);
"""


@pytest.fixture
def servers() -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    everywhere, loopback = free_port(), free_port()
    process = subprocess.Popen(
        ["node", "-e", SERVERS, str(everywhere), str(loopback)], start_new_session=True
    )
    try:
        yield everywhere, loopback, process
    finally:
        os.killpg(process.pid, 9)
        process.wait()


def ports_of(uid: int, exclude: set[int], limit: int = 1000) -> dict[int, Listener]:
    return {x.port: x for x in user_ports(uid, exclude, limit)}


def test_addresses_from_proc() -> None:
    assert _address("0100007F") == "127.0.0.1"
    assert _address("00000000") == "0.0.0.0"
    assert _address("00000000000000000000000001000000") == "::1"


def test_finds_the_trees_ports_and_forgets_closed_ones(
    servers: tuple[int, int, subprocess.Popen[bytes]],
) -> None:
    everywhere, loopback, process = servers
    uid = os.getuid()
    wait_until(lambda: {everywhere, loopback} <= set(ports_of(uid, set())), 15, "listeners")
    found = ports_of(uid, set())
    assert not found[everywhere].loopback_only
    assert found[loopback].loopback_only and found[loopback].address == "127.0.0.1"
    assert everywhere not in ports_of(uid, {everywhere})  # the main port is not "extra"
    assert ports_of(os.getuid() + 4242, set()) == {}  # another user's: none
    limited = user_ports(uid, set(), 1)
    assert len(limited) == 1 and limited[0].port == min(ports_of(uid, set()))
    os.killpg(process.pid, 9)
    process.wait()
    wait_until(lambda: not {everywhere, loopback} & set(ports_of(uid, set())), 10, "closed")


async def test_loopback_listener_is_relayed_from_the_external_address(
    servers: tuple[int, int, subprocess.Popen[bytes]],
) -> None:
    external = bridge_ip()
    if external is None:
        pytest.skip("no Docker bridge address on this host")
    everywhere, loopback, _ = servers
    uid = os.getuid()
    await asyncio.to_thread(
        wait_until, lambda: loopback in ports_of(uid, set()), 15, "loopback listener"
    )
    listeners = [ports_of(uid, set())[p] for p in (everywhere, loopback)]
    watch = PortWatch(external)
    try:
        assert await watch.update(listeners) == sorted([everywhere, loopback])
        async with httpx.AsyncClient() as client:
            relayed = await client.get(f"http://{external}:{loopback}/")
            assert relayed.text == "loop"
        assert await watch.update(listeners[:1]) == [everywhere]  # closed: relay gone
        assert watch.forwarders == {}
    finally:
        await watch.close()
