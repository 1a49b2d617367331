"""A preview's other ports at `{id}-{port}`: a real gateway, Redis and Node servers standing
in for the container (its heartbeat written as the supervisor writes it, the address being
this host's Docker bridge address, which the servers listen on).

Plays the stranger and the other user (THREATS.md): only a port the heartbeat of that very
session lists is served, with a cookie for that host only; anything else is a 404, never
a 5xx.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from redis import Redis as SyncRedis

from gateway.proxy.preview_tokens import open_token
from shared import keys
from shared.messages import Heartbeat
from shared.settings import Settings
from tests.gateway.api_helpers import fake_session
from tests.gateway.conftest import GatewayFactory
from tests.gateway.proxy_fixtures import SECRET, Upstream, start_upstream, upstream
from tests.gateway.test_shares import api, host, opened, share, viewer_cookie
from tests.utils import GatewayProcess, bridge_ip, free_port, wait_until

__all__ = ["upstream"]

DOMAIN = "preview.localhost"
SETTINGS = Settings.from_env({}, signing_secret=SECRET)


@pytest.fixture
def gw(start_gateway: GatewayFactory) -> GatewayProcess:
    return start_gateway(signing_secret=SECRET)


@pytest.fixture
def address() -> str:
    found = bridge_ip()
    if found is None:
        pytest.skip("no Docker bridge address on this host")
    return found


@pytest.fixture
def api_server() -> Iterator[Upstream]:
    """An API server on another port, listening on every interface like Express does."""
    up = start_upstream(bind="0.0.0.0")
    yield up
    up.process.kill()
    up.process.wait()


@dataclass
class Env:
    gw: GatewayProcess
    redis: SyncRedis
    main: Upstream  # the dev server on the main port
    api: Upstream  # another port of the same container
    address: str  # the "container's" address

    def preview(self, ports: list[int] | None = None) -> str:
        return preview_with_ports(
            self.redis, self.main, [self.api.port] if ports is None else ports, self.address
        )


@pytest.fixture
def env(
    gw: GatewayProcess,
    sync_redis: SyncRedis,
    upstream: Upstream,
    api_server: Upstream,
    address: str,
) -> Env:
    return Env(gw, sync_redis, upstream, api_server, address)


def preview_with_ports(
    redis: SyncRedis, main: Upstream, ports: list[int], address: str, user: str = "alice"
) -> str:
    cid = f"pvc-test-{time.monotonic_ns()}"
    session = fake_session(redis, user=user, project=cid, container=cid)
    redis.hset(keys.session(session.id), mapping={"state": "ready", "address": main.address})
    beat = Heartbeat(cid, time.time(), session.id, "ready", ports=ports, address=address)
    redis.set(keys.heartbeat(cid), beat.to_json(), ex=600)
    redis.publish(keys.ROUTE_CHANGES, session.id)
    return session.id


def login(gw: GatewayProcess, label: str, user: str = "alice") -> str:
    token = open_token(SETTINGS, label, user)
    with host(gw, label) as client:
        response = client.get("/", params={"preview_token": token})
    assert response.status_code == 302, response.text
    return str(response.headers["set-cookie"].split(";", 1)[0])


def get(gw: GatewayProcess, label: str, cookie: str, path: str = "/headers") -> httpx.Response:
    with host(gw, label) as client:
        return client.get(path, headers={"cookie": cookie})


def test_owner_reaches_an_open_port_with_its_own_cookie(env: Env) -> None:
    gw, api_server = env.gw, env.api
    sid = env.preview()
    label = f"{sid}-{api_server.port}"
    with api(gw) as alice:
        preview = alice.get(f"/v1/previews/{sid}").json()
    [listed] = preview["ports"]
    assert listed["port"] == api_server.port and listed["protocol"] == "http"
    assert listed["url"].startswith(f"http://{label}.{DOMAIN}")
    with host(gw, label) as client:
        first = client.get("/", params={"preview_token": listed["open_url"].split("=", 1)[1]})
    assert first.status_code == 302
    cookie = first.headers["set-cookie"].split(";", 1)[0]
    assert cookie.startswith(f"pv_{label}=")
    seen = get(gw, label, cookie)
    assert seen.status_code == 200, seen.text
    assert seen.json()["headers"]["host"].startswith(f"{label}.{DOMAIN}")
    assert "pv_" not in seen.json()["headers"].get("cookie", "")
    # One host, one cookie: the main host's does not open the port, nor the reverse.
    main = login(gw, sid)
    assert get(gw, label, main.replace(f"pv_{sid}=", f"pv_{label}=")).status_code == 401
    assert get(gw, sid, cookie.replace(f"pv_{label}=", f"pv_{sid}=")).status_code == 401
    assert get(gw, sid, main).status_code == 200


def test_ports_not_served_are_404_never_5xx(env: Env) -> None:
    gw, api_server = env.gw, env.api
    sid = env.preview()
    other = env.preview([])
    closed = free_port()
    # Logged in to a port host that is not open (a token is cheap to mint for the owner).
    for label in (f"{sid}-{closed}", f"{other}-{api_server.port}"):
        response = get(gw, label, login(gw, label))
        assert response.status_code == 404, (label, response.text)
        assert response.json()["error"] == "not_found"
    # Names that are no port: out of range, a leading zero, two dashes, no id.
    for label in (f"{sid}-0", f"{sid}-65536", f"{sid}-099", f"{sid}-1-2", f"-{closed}", "x-1"):
        with host(gw, label) as client:
            response = client.get("/")
        assert response.status_code == 404, (label, response.status_code)
    # A heartbeat that names another session, or an address that is not a container's.
    label = f"{sid}-{api_server.port}"
    cookie = login(gw, label)
    for session_id, where in ((other, env.address), (sid, "127.0.0.1"), (sid, "169.254.1.1")):
        cid = env.redis.hget(keys.session(sid), "container").decode()  # type: ignore[union-attr]
        beat = Heartbeat(cid, time.time(), session_id, "ready", ports=[api_server.port])
        beat.address = where
        env.redis.set(keys.heartbeat(cid), beat.to_json(), ex=600)
        wait_until(lambda: get(gw, label, cookie).status_code == 404, 3, f"404 for {where}")
        with api(gw) as alice:
            assert alice.get(f"/v1/previews/{sid}").json()["ports"] == []


def test_shares_reach_ports_only_when_they_say_so(env: Env) -> None:
    gw, api_server = env.gw, env.api
    sid = env.preview()
    label = f"{sid}-{api_server.port}"
    main_only = share(gw, sid)
    with_ports = share(gw, sid, ports=True)
    assert opened(gw, label, f"preview_share={main_only['id']}").status_code == 404
    main_cookie = viewer_cookie(opened(gw, sid, f"preview_share={main_only['id']}"))
    moved = main_cookie.replace(f"pv_s_{sid}=", f"pv_s_{label}=")
    assert get(gw, label, moved).status_code == 401  # bound to its host
    cookie = viewer_cookie(opened(gw, label, f"preview_share={with_ports['id']}"))
    assert get(gw, label, cookie).status_code == 200


def test_preflights_between_a_previews_own_hosts(env: Env) -> None:
    gw, api_server = env.gw, env.api
    sid = env.preview()
    other = env.preview([])
    label = f"{sid}-{api_server.port}"
    asks = {"access-control-request-method": "POST", "access-control-request-headers": "x-a"}

    def preflight(origin: str) -> httpx.Response:
        with host(gw, label) as client:
            return client.options("/hello", headers={"origin": origin, **asks})

    own = preflight(f"http://{sid}.{DOMAIN}:{gw.port}")
    assert own.status_code == 204
    assert own.headers["access-control-allow-origin"] == f"http://{sid}.{DOMAIN}:{gw.port}"
    assert own.headers["access-control-allow-credentials"] == "true"
    assert own.headers["access-control-allow-headers"] == "x-a"
    for stranger in (f"http://{other}.{DOMAIN}", "http://evil.example", "null", f"http://{label}"):
        assert preflight(stranger).status_code == 401, stranger
