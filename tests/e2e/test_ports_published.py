"""The full-stack project of tests/e2e/test_ports_browser.py, with the gateway reaching the
Docker host through published ports only (PREVIEW_DIRECT_UPSTREAM=off, as for a remote
engine): the API port goes through the container's port relay (supervisor/relay.py), and
the container publishes the dev server's port and the relay's, nothing per user port."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator

import pytest
from redis import Redis as SyncRedis

from shared import keys
from shared.redis_types import text
from shared.relay import RELAY_PORT
from tests.e2e.conftest import Stack, run_stack
from tests.e2e.test_ports_browser import test_vite_frontend_calls_its_api_on_another_port
from tests.utils import RedisServer

pytestmark = pytest.mark.slow

__all__ = ["test_vite_frontend_calls_its_api_on_another_port"]


# Run as `app` in the container: answer the relay's challenge with a made-up MAC for the
# dev server's port, print what came back, then try to listen on the relay's port.
USER_PROBE = """
const net = require("node:net");
const port = +process.argv[1];
let got = "";
const s = net.connect(port, "127.0.0.1");
s.on("data", (d) => {
  if (!got) s.write("3000 " + "0".repeat(64) + "\\n");
  got += d;
});
s.on("close", () => {
  console.log(JSON.stringify(got));
  net.createServer().on("error", (e) => { console.log(e.code); process.exit(0); })
    .listen(port, () => { console.log("BOUND"); process.exit(0); });
});
"""


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, test_image: str) -> Iterator[Stack]:
    with run_stack(redis_server, test_image, direct_upstream="off") as running:
        yield running


def test_only_the_dev_port_and_the_relay_are_published(
    stack: Stack, redis_server: RedisServer
) -> None:
    with stack.api("carol") as carol:
        sid = stack.start_ready(carol, "ports-published", "vite-vanilla")
        with contextlib.closing(SyncRedis.from_url(redis_server.url)) as redis:
            cid = text(redis.hget(keys.session(sid), "container"))
            route, relay = (text(v) for v in redis.hmget(keys.container(cid), "route", "relay"))
        assert route == "published" and relay.startswith("127.0.0.1:")
        inspected = subprocess.run(
            ["docker", "inspect", "--format", "{{json .NetworkSettings.Ports}}", cid],
            check=True,
            capture_output=True,
            text=True,
        )
        published = json.loads(inspected.stdout)
        wanted = {f"{stack.settings.dev_port}/tcp", f"{RELAY_PORT}/tcp"}
        assert set(published) == wanted
        assert relay.endswith(":" + published[f"{RELAY_PORT}/tcp"][0]["HostPort"])
        # The user's code: it can reach the relay, but without the secret gets only "NO";
        # it cannot take the relay's port, nor read the secret from PID 1's environment.
        probe = subprocess.run(
            ["docker", "exec", "-u", "app", cid, "node", "-e", USER_PROBE, str(RELAY_PORT)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = probe.stdout.splitlines()
        assert lines[0].startswith('"PVRELAY1 ') and lines[0].endswith('\\nNO\\n"'), lines
        assert lines[1] in ("EADDRINUSE", "EACCES"), lines
        environ = subprocess.run(
            ["docker", "exec", "-u", "app", cid, "cat", "/proc/1/environ"],
            capture_output=True,
            text=True,
        )
        assert environ.returncode != 0 and "PREVIEW_RELAY_SECRET" not in environ.stdout
        assert carol.delete(f"/v1/previews/{sid}").status_code == 204
