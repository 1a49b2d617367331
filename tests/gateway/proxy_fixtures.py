"""A real gateway in front of a real Node upstream, with preview sessions written to Redis
as the API writes them."""

from __future__ import annotations

import contextlib
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from gateway.proxy.preview_tokens import open_token
from shared import keys
from shared.settings import Settings
from tests.gateway.tls_fixtures import TlsFiles
from tests.utils import (
    ROOT,
    GatewayProcess,
    RedisServer,
    free_port,
    run_gateway,
    settings_env,
    wait_until,
)

SECRET = "test-signing-secret"


@dataclass
class Upstream:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_upstream(port: int | None = None, bind: str = "127.0.0.1") -> Upstream:
    """The Node test server (tests/fixtures/upstream.js) on `bind`, once it answers."""
    port = port or free_port()
    script = str(ROOT / "tests/fixtures/upstream.js")
    return spawn_upstream(["node", script, str(port), bind], port, "/headers", "node upstream")


def spawn_upstream(argv: list[str], port: int, probe: str, what: str) -> Upstream:
    """Runs `argv`, a server on 127.0.0.1:`port`, and returns once GET `probe` there answers
    200 (within 10 s: `what` names it in the failure)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = Upstream(port, process)

    def answers() -> bool:
        try:
            return httpx.get(f"http://{upstream.address}{probe}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 10, what)
    return upstream


@dataclass
class ProxyEnv:
    gateway: GatewayProcess
    redis: redis_sync.Redis
    settings: Settings
    # With TLS: clients go to the TLS listener over HTTP/2 (the CA file to trust).
    tls_ca: str = ""

    def session(
        self,
        address: str,
        user: str = "alice",
        state: str = "ready",
        sid: str | None = None,
        error: str = "",
    ) -> str:
        sid = sid or secrets.token_hex(8)
        self.redis.hset(
            keys.session(sid),
            mapping={
                "id": sid,
                "user": user,
                "state": state,
                "address": address,
                "container": "",
                "error": error,
                "created_at": repr(time.time()),
            },
        )
        self.redis.publish(keys.ROUTE_CHANGES, sid)
        return sid

    def set_state(self, sid: str, state: str) -> None:
        self.redis.hset(keys.session(sid), "state", state)
        self.redis.publish(keys.ROUTE_CHANGES, sid)

    @property
    def port(self) -> int:
        """Where previews are served: the TLS listener's port with TLS."""
        return self.settings.preview_port if self.tls_ca else self.gateway.port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}" if self.tls_ca else self.gateway.url

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the test CA, nothing else."""
        return ssl.create_default_context(cafile=self.tls_ca)

    def host(self, sid: str) -> str:
        return f"{sid}.preview.localhost:{self.port}"

    def token(self, sid: str, user: str = "alice") -> str:
        return open_token(self.settings, sid, user)

    def client(self, sid: str, **kwargs: Any) -> httpx.Client:
        if self.tls_ca:
            # Python cannot resolve *.localhost: connect to 127.0.0.1, and name the preview
            # in SNI (the certificate is checked against it) and in :authority / Host.
            host = self.host(sid)
            name = host.rsplit(":", 1)[0]

            def sni(request: httpx.Request) -> None:
                request.extensions["sni_hostname"] = name

            kwargs.setdefault("verify", self.ssl_context())
            kwargs.setdefault("http2", True)
            hooks = {"request": [sni]}
            return httpx.Client(
                base_url=self.url, headers={"host": host}, timeout=30, event_hooks=hooks, **kwargs
            )
        return httpx.Client(
            base_url=self.gateway.url, headers={"host": self.host(sid)}, timeout=30, **kwargs
        )

    def login(self, sid: str, user: str = "alice") -> httpx.Client:
        """A client holding the preview's cookie, as a browser would after the redirect."""
        with self.client(sid) as first:
            response = first.get("/", params={"preview_token": self.token(sid, user)})
        assert response.status_code == 302, response.text
        client = self.client(sid)
        client.headers["cookie"] = response.headers["set-cookie"].split(";", 1)[0]
        return client


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = start_upstream()
    yield up
    up.process.kill()
    up.process.wait()


@contextlib.contextmanager
def proxy_gateway(
    redis_server: RedisServer, tls: TlsFiles | None = None, **overrides: Any
) -> Iterator[ProxyEnv]:
    """A gateway for proxy tests (settings `overrides` on top of the usual ones); with
    `tls`, also on a TLS listener, where its ProxyEnv's clients go."""
    port = free_port()
    values: dict[str, Any] = dict(
        redis_url=redis_server.url,
        signing_secret=SECRET,
        preview_port=port,
        hold_timeout=5.0,
        drain_timeout=3.0,
    )
    if tls is not None:
        values.update(tls.settings(free_port()))
    values.update(overrides)
    settings = Settings.from_env({}, **values)
    client = redis_sync.Redis.from_url(redis_server.url)
    with run_gateway(settings_env(**values), port=port) as gateway:
        yield ProxyEnv(gateway, client, settings, tls_ca=str(tls.ca) if tls else "")
    for key in client.scan_iter(match=keys.session("*")):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def proxy_env(redis_server: RedisServer) -> Iterator[ProxyEnv]:
    with proxy_gateway(redis_server) as env:
        yield env


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
