"""A hostile dev server against a real gateway (hypercorn, uvloop): huge, long, endless and
trickled response heads, endless 1xx responses, oversized WebSocket handshake responses.
The gateway answers each with a clear 502/504 that names no internal address, drops the
connection at the bound instead of buffering, and stays responsive for everyone else
(its /healthz and another user's preview) while it happens. The dev server also always
sees the preview's canonical host, however the client spelled it.

The dev server is tests/fixtures/hostile_devserver.js: a Node process on the host here,
and (the last test) the same file as the dev server of a real preview container."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from shared import keys
from shared.redis_types import text
from tests.gateway.api_helpers import bearer, gateway_env, remove_containers
from tests.gateway.proxy_fixtures import (
    ProxyEnv,
    Upstream,
    proxy_gateway,
    rss_kib,
    spawn_upstream,
    upstream,
)
from tests.gateway.test_api import tar_of, wait_ready
from tests.gateway.test_proxy_ws import WsUpstream, cookie_for, ws_upstream
from tests.gateway.tls_fixtures import TlsFiles, tls_files
from tests.utils import (
    ROOT,
    GatewayProcess,
    RedisServer,
    free_port,
    run_gateway,
    start_redis,
    wait_until,
)

__all__ = ["tls_files", "upstream", "ws_upstream"]

HOSTILE = ROOT / "tests/fixtures/hostile_devserver.js"
HEAD_TIMEOUT = 3.0  # PREVIEW_UPSTREAM_HEAD_TIMEOUT for these gateways
JSON = {"accept": "application/json"}
# Latency bounds while an attack runs: generous (two cores shared with other test runs);
# before the bounds, four 50 MiB heads stalled the gateway for seconds.
MAX_STALL = 1.5
MAX_RSS_GROWTH_MIB = 12


@pytest.fixture(scope="module")
def hostile() -> Iterator[Upstream]:
    port = free_port()
    server = spawn_upstream(["node", str(HOSTILE), str(port)], port, "/", "hostile dev server")
    yield server
    server.process.kill()
    server.process.wait()


@pytest.fixture(scope="module")
def env(redis_server: RedisServer) -> Iterator[ProxyEnv]:
    with proxy_gateway(redis_server, upstream_head_timeout=HEAD_TIMEOUT) as gateway_env:
        yield gateway_env


@pytest.fixture(scope="module")
def attacker(env: ProxyEnv, hostile: Upstream) -> Iterator[httpx.Client]:
    """Mallory's preview, served by the hostile dev server, and her logged-in client."""
    sid = env.session(hostile.address, user="mallory")
    with env.login(sid, user="mallory") as client:
        client.headers.update(JSON)
        yield client


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"}, body
    return body


@dataclass
class Probe:
    """Requests to /healthz and to a victim's preview, one after the other, for as long
    as an attack runs: the slowest of each, and the gateway's largest RSS seen."""

    gateway: GatewayProcess
    victim: httpx.Client | None = None
    healthz: list[float] = field(default_factory=list)
    preview: list[float] = field(default_factory=list)
    rss_peak_kib: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        pid = self.gateway.process.pid
        with httpx.Client(base_url=self.gateway.url, timeout=30) as api:
            while not self._stop.is_set():
                probes = [(api, "/healthz", self.healthz)]
                if self.victim is not None:
                    probes.append((self.victim, "/victim", self.preview))
                for client, path, into in probes:
                    began = time.monotonic()
                    try:
                        status = client.get(path).status_code
                    except httpx.HTTPError as exc:
                        status, self.errors = 0, [*self.errors, repr(exc)]
                    into.append(time.monotonic() - began)
                    if status != 200:
                        self.errors.append(f"{path}: {status}")
                self.rss_peak_kib = max(self.rss_peak_kib, rss_kib(pid))

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self.run, name="probe")
        self._thread.start()
        wait_until(lambda: len(self.healthz) >= 3, 30, "probe warmed up")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def report(self) -> str:
        def p99(values: list[float]) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

        found = (
            f"/healthz n={len(self.healthz)} p99={p99(self.healthz) * 1000:.0f} ms "
            f"max={max(self.healthz) * 1000:.0f} ms"
        )
        if self.preview:
            found += f"; other preview n={len(self.preview)} max={max(self.preview) * 1000:.0f} ms"
        return found


def attack(client: httpx.Client, path: str, times: int, attackers: int = 4) -> list[Any]:
    """`attackers` threads each requesting `path` `times` times: [(status, body, seconds)]."""
    results: list[Any] = []

    def one() -> None:
        for _ in range(times):
            began = time.monotonic()
            try:
                response = client.get(path, timeout=30)
                results.append((response.status_code, response.text, time.monotonic() - began))
            except httpx.HTTPError as exc:
                results.append((0, repr(exc), time.monotonic() - began))

    threads = [threading.Thread(target=one) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_huge_heads_are_cut_at_the_bound_and_others_stay_fast(
    env: ProxyEnv, attacker: httpx.Client, upstream: Upstream
) -> None:
    """Four attackers at once, each asking three times for a 50 MiB header: each gets a
    quick 502, /healthz and bob's preview answer fast meanwhile, the gateway's memory does
    not grow. (Before: 50 MiB blocked /healthz 2.8 s; four took the RSS from 94 to 579 MB.)"""
    bob = env.session(upstream.address, user="bob")
    pid = env.gateway.process.pid
    with env.login(bob, user="bob") as victim:
        for _ in range(3):  # warm up both paths
            assert victim.get("/victim").status_code == 200
        before = rss_kib(pid)
        with Probe(env.gateway, victim) as probe:
            results = attack(attacker, "/huge-head?mb=50", times=3)
        print(f"during 4x3 attacks of 50 MiB heads: {probe.report()}")
    assert not probe.errors, probe.errors
    for status, body, seconds in results:
        assert status == 502, (status, body[:300])
        detail = json.loads(body)
        assert detail["error"] == "upstream_error" and "64 KiB" in detail["detail"], detail
        assert seconds < MAX_STALL * 2, seconds
    assert max(probe.healthz) < MAX_STALL, probe.report()
    assert max(probe.preview) < MAX_STALL, probe.report()
    growth_mib = (max(probe.rss_peak_kib, rss_kib(pid)) - before) / 1024
    print(f"gateway RSS {before >> 10} MiB before, grew by at most {growth_mib:.1f} MiB")
    assert growth_mib < MAX_RSS_GROWTH_MIB


def test_head_size_and_line_bounds_are_exact(attacker: httpx.Client) -> None:
    """Up to 64 KiB and 100 header lines pass untouched; one more is a 502."""
    assert attacker.get("/huge-head", params={"kib": 60}).text == "ok"
    too_big = attacker.get("/huge-head", params={"kib": 64})
    assert too_big.status_code == 502, too_big.text[:300]
    assert "over 64 KiB" in error_of(too_big)["detail"]

    hundred = attacker.get("/lines", params={"n": 100})
    assert hundred.status_code == 200 and hundred.headers["x-line-98"] == "98"
    many = attacker.get("/lines", params={"n": 101})
    assert many.status_code == 502, many.text[:300]
    assert error_of(many) == {
        "error": "upstream_error",
        "detail": "the dev server's response head has over 100 header lines",
    }
    # A browser gets the same as a page.
    page = attacker.get("/lines", params={"n": 101}, headers={"accept": "text/html"})
    assert page.status_code == 502 and "over 100 header lines" in page.text


def test_huge_trailer_section_is_cut_too(attacker: httpx.Client) -> None:
    """A chunked body's trailer section is parsed like a head (and dropped): 50 MiB of
    it cuts the response at the bound, quickly (the dev server never finished it, so the
    client is not told it did)."""
    began = time.monotonic()
    with attacker.stream("GET", "/huge-trailer", params={"mb": 50}) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    assert time.monotonic() - began < MAX_STALL


def test_endless_trickled_head_ends_at_the_head_timeout(
    env: ProxyEnv, attacker: httpx.Client, hostile: Upstream
) -> None:
    began = time.monotonic()
    response = attacker.get("/trickle", timeout=HEAD_TIMEOUT + 10)
    took = time.monotonic() - began
    assert response.status_code == 504, response.text[:300]
    assert error_of(response)["error"] == "upstream_timeout"
    assert HEAD_TIMEOUT - 0.5 < took < HEAD_TIMEOUT + 3, took
    assert_no_address(response.text, hostile.address)


def test_endless_informational_responses_are_bounded(attacker: httpx.Client) -> None:
    """100 Continue forever: never relayed, and cut like one endless head (their bytes
    count together)."""
    began = time.monotonic()
    response = attacker.get("/informational", timeout=HEAD_TIMEOUT + 10)
    assert response.status_code == 502, response.text[:300]
    assert "over 64 KiB" in error_of(response)["detail"]
    assert time.monotonic() - began < HEAD_TIMEOUT  # the byte bound, not the timeout


@pytest.mark.parametrize("chunked", [0, 1])
def test_a_body_broken_off_never_reaches_the_client_as_whole(
    env: ProxyEnv, attacker: httpx.Client, chunked: int
) -> None:
    """The dev server dies mid-body (1000 of 100000 bytes, or chunked without its last
    chunk): the client must see a broken transfer at once, not a short response that
    looks complete (a truncated module), nor wait for bytes that never come."""
    began = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        attacker.get(f"/broken?chunked={chunked}", timeout=20).read()
    assert time.monotonic() - began < 5
    assert attacker.get("/other").status_code == 200  # the preview still serves


def test_a_body_broken_off_resets_its_http2_stream_only(
    tls_files: TlsFiles, hostile: Upstream
) -> None:
    """Over HTTP/2 the broken response's stream is reset; the connection and its other
    streams go on."""
    # Its own Redis: a gateway fixture's end removes every session of its Redis, and the
    # module's gateway shares redis_server.
    own = start_redis()
    try:
        with proxy_gateway(own, tls=tls_files) as tls_env:
            sid = tls_env.session(hostile.address, user="mallory")
            with tls_env.login(sid, user="mallory") as client:
                for chunked in (0, 1):
                    began = time.monotonic()
                    with pytest.raises(httpx.RemoteProtocolError):
                        client.get(f"/broken?chunked={chunked}", timeout=20).read()
                    assert time.monotonic() - began < 5
                    other = client.get("/other")
                    assert (other.status_code, other.http_version) == (200, "HTTP/2")
    finally:
        own.stop()


def assert_no_address(body: str, address: str) -> None:
    host, _, port = address.rpartition(":")
    assert host not in body and port not in body, body


def test_error_answers_name_no_internal_address(
    env: ProxyEnv, attacker: httpx.Client, hostile: Upstream
) -> None:
    """A dev server that never answers (504), one that is down (502): neither the JSON
    nor the page says where the dev server lives."""
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    sid = env.session(closed, user="mallory")
    with env.login(sid, user="mallory") as client:
        for accept in ("application/json", "text/html"):
            down = client.get("/", headers={"accept": accept})
            assert down.status_code == 502, down.text[:300]
            assert_no_address(down.text, closed)
        assert error_of(client.get("/", headers=JSON))["error"] == "upstream_refused"
    for accept in ("application/json", "text/html"):
        silent = attacker.get("/never", headers={"accept": accept}, timeout=HEAD_TIMEOUT + 10)
        assert silent.status_code == 504, silent.text[:300]
        assert_no_address(silent.text, hostile.address)
        assert "no complete response head" in silent.text


@pytest.mark.parametrize(
    "spelling",
    ["{SID}.PREVIEW.LOCALHOST:{port}", "{sid}.Preview.Localhost", "{sid}.preview.localhost:1"],
)
def test_dev_server_sees_the_canonical_host(
    env: ProxyEnv, hostile: Upstream, spelling: str
) -> None:
    """Whatever spelling of the preview's host routes to it, the dev server is sent the
    one its allowed-hosts were configured with (`{id}.{PREVIEW_DOMAIN}:{port}`), in Host
    and X-Forwarded-Host alike."""
    sid = env.session(hostile.address)
    with env.login(sid) as client:
        host = spelling.format(SID=sid.upper(), sid=sid, port=env.gateway.port)
        seen = client.get("/whoami", headers={"host": host, **JSON})
    assert seen.status_code == 200, seen.text[:300]
    canonical = f"{sid}.preview.localhost:{env.gateway.port}"
    assert seen.json()["headers"] == {
        "host": canonical,
        "x-forwarded-host": canonical,
        "x-forwarded-proto": "http",
        "x-forwarded-for": "127.0.0.1",
    }


def ws_open(env: ProxyEnv, host: str, cookie: str, path: str) -> connect:
    """A WebSocket through the gateway to `host` (any spelling of a preview's host)."""
    return connect(
        f"ws://{host}{path}",
        host="127.0.0.1",
        port=env.gateway.port,
        additional_headers={"cookie": cookie},
        origin=f"http://{host}",  # type: ignore[arg-type]
        proxy=None,
        compression=None,
        open_timeout=15,
    )


async def test_websocket_upstream_sees_the_canonical_host(
    env: ProxyEnv, ws_upstream: WsUpstream
) -> None:
    sid = env.session(ws_upstream.address)
    odd = f"{sid.upper()}.Preview.LOCALHOST"  # routes: case and port are ignored
    async with ws_open(env, odd, cookie_for(env, sid), "/hmr") as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
    assert ws_upstream.hosts[-1] == f"{sid}.preview.localhost:{env.gateway.port}"


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("/ws-lines?n=97", True),  # 100 lines: Upgrade, Connection, Sec-WebSocket-Accept, 97
        ("/ws-lines?n=98", False),  # 101 lines
        ("/ws-huge?kib=56", True),  # 56 lines of ~1 KiB: under 64 KiB
        ("/ws-huge?kib=96", False),  # 96 lines of ~1 KiB: websockets alone takes this
    ],
)
async def test_websocket_handshake_response_is_bounded(
    env: ProxyEnv, attacker: httpx.Client, path: str, accepted: bool
) -> None:
    opening = ws_open(env, str(attacker.headers["host"]), str(attacker.headers["cookie"]), path)
    if accepted:
        async with opening:
            pass
        return
    with pytest.raises(InvalidStatus) as refused:
        async with opening:
            pass
    response = refused.value.response
    assert response.status_code == 502, response
    body = json.loads(response.body or b"{}")
    assert body["error"] == "upstream_error", body
    assert "127.0.0.1" not in body["detail"]


HOSTILE_PROJECT = {
    "package.json": json.dumps({"name": "hostile", "scripts": {"dev": "node server.js"}}),
    "server.js": HOSTILE.read_text(),
}


@pytest.mark.docker
def test_a_real_preview_container_serving_huge_heads(
    redis_server: RedisServer, test_image: str
) -> None:
    """The same attacks from a real preview's dev server (the archive above, started
    through the API): 502 for a 50 MiB head, the gateway fast meanwhile and its memory
    flat, a 504 that names neither the container's address nor its name, and the
    canonical host upstream."""
    redis = SyncRedis.from_url(redis_server.url)
    settings = gateway_env(redis_server, test_image, upstream_head_timeout=HEAD_TIMEOUT)
    try:
        with run_gateway(settings) as gateway:
            started = httpx.post(
                f"{gateway.url}/v1/previews",
                json={"project_id": "hostile", "source": {"type": "archive"}},
                headers=bearer(),
                timeout=60,
            )
            assert started.status_code == 202, started.text
            sid = started.json()["id"]
            uploaded = httpx.put(
                f"{gateway.url}/v1/previews/{sid}/files",
                content=tar_of(HOSTILE_PROJECT),
                headers=bearer(),
                timeout=60,
            )
            assert uploaded.status_code == 202, uploaded.text
            preview = wait_ready(gateway, sid, timeout=120)
            address = text(redis.hget(keys.session(sid), "address"))
            cid = text(redis.hget(keys.session(sid), "container"))
            assert address and cid

            host = preview["url"].split("://", 1)[1].rstrip("/")
            query = preview["open_url"].split("?", 1)[1]
            with httpx.Client(base_url=gateway.url, headers={"host": host}, timeout=30) as c:
                opened = c.get(f"/?{query}")
                assert opened.status_code == 302, opened.text
                c.headers["cookie"] = opened.headers["set-cookie"].split(";", 1)[0]
                c.headers.update(JSON)

                odd = host.upper().replace(":", ":0")  # still routes: case and port ignored
                seen = c.get("/whoami", headers={"host": odd})
                assert seen.status_code == 200, seen.text[:300]
                assert seen.json()["headers"]["host"] == host
                assert seen.json()["headers"]["x-forwarded-host"] == host

                pid = gateway.process.pid
                before = rss_kib(pid)
                with Probe(gateway, None) as probe:
                    results = attack(c, "/huge-head?mb=50", times=2)
                print(f"container attack: {probe.report()}")
                assert not probe.errors, probe.errors
                assert [r[0] for r in results] == [502] * 8, results
                assert max(probe.healthz) < MAX_STALL, probe.report()
                growth_mib = (max(probe.rss_peak_kib, rss_kib(pid)) - before) / 1024
                assert growth_mib < MAX_RSS_GROWTH_MIB, growth_mib

                for accept in ("application/json", "text/html"):
                    silent = c.get("/never", headers={"accept": accept}, timeout=20)
                    assert silent.status_code == 504, silent.text[:300]
                    assert_no_address(silent.text, address)
                    assert cid not in silent.text
    finally:
        remove_containers(redis_server)
        redis.close()
