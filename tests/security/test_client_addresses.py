"""Shared addresses (issue 14, finding 6): everyone behind one TLS proxy or NAT has the
same TCP peer. A stranger's bad cookies from that address must not lock the owner out,
and with PREVIEW_TRUSTED_PROXIES the stranger's own address is the one limited.

On the code before the fix: after 25 bad cookies from the shared address, the owner's
valid `open_url` answered 429 (failures were counted per TCP peer, and checked before
the token), as did a bad cookie on any other preview.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as redis_sync
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from shared import keys
from shared.settings import Settings
from tests.gateway.proxy_fixtures import SECRET, ProxyEnv, Upstream, upstream
from tests.gateway.test_proxy_ws import WsUpstream, cookie_for, ws_upstream
from tests.utils import RedisServer, free_port, run_gateway, settings_env

__all__ = ["upstream", "ws_upstream"]
WS_CAP = 2

FAILURES = 25  # over the default 20/minute
STRANGER, OWNER = "203.0.113.7", "198.51.100.9"


def gateway(redis_server: RedisServer, **extra: Any) -> Iterator[ProxyEnv]:
    port = free_port()
    values: dict[str, Any] = dict(
        redis_url=redis_server.url, signing_secret=SECRET, preview_port=port, **extra
    )
    client = redis_sync.Redis.from_url(redis_server.url)
    try:
        with run_gateway(settings_env(**values), port=port) as gw:
            yield ProxyEnv(gw, client, Settings.from_env({}, **values))
    finally:
        for pattern in (keys.session("*"), f"{keys.RATE_LIMIT_PREFIX}*"):
            for key in client.scan_iter(match=pattern):
                client.delete(key)
        client.close()


@pytest.fixture
def behind_nat(redis_server: RedisServer) -> Iterator[ProxyEnv]:
    yield from gateway(redis_server)  # the default: no proxy trusted


@pytest.fixture
def behind_proxy(redis_server: RedisServer) -> Iterator[ProxyEnv]:
    yield from gateway(redis_server, trusted_proxies=("127.0.0.1/32",))


@pytest.fixture
def ws_capped(redis_server: RedisServer) -> Iterator[ProxyEnv]:
    yield from gateway(redis_server, trusted_proxies=("127.0.0.1/32",), ws_max_per_client=WS_CAP)


def counted(env: ProxyEnv, sid: str, client: str) -> bool:
    """The failed-authentication limiter holds failures of `client` on preview `sid`."""
    pattern = f"{keys.RATE_LIMIT_PREFIX}*{keys.auth_failures(sid, client)}*"
    return any(env.redis.scan_iter(match=pattern))


def bad_cookies(client: httpx.Client, sid: str, forwarded: str | None = None) -> list[int]:
    headers = {"cookie": f"pv_{sid}=forged"}
    if forwarded:
        headers["x-forwarded-for"] = forwarded
    return [client.get("/", headers=headers).status_code for _ in range(FAILURES)]


def test_strangers_failures_do_not_lock_out_the_owner(
    behind_nat: ProxyEnv, upstream: Upstream
) -> None:
    env = behind_nat
    sid = env.session(upstream.address)
    other = env.session(upstream.address, user="bob")
    with env.client(sid) as stranger:
        # A spoofed X-Forwarded-For from an untrusted peer changes nothing: still counted.
        codes = bad_cookies(stranger, sid, forwarded="10.9.8.7")
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}, codes
    with env.client(sid) as owner:
        opened = owner.get("/", params={"preview_token": env.token(sid)})
        assert opened.status_code == 302, opened.text  # a valid token is never refused
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
        assert owner.get("/", headers={"cookie": cookie}).status_code == 200
    with env.client(other) as neighbour:
        # Failures are per preview: another preview's visitor gets a plain 401.
        assert neighbour.get("/", headers={"cookie": f"pv_{other}=x"}).status_code == 401
    assert counted(env, sid, "127.0.0.1")


def test_a_trusted_proxy_names_the_client_that_is_limited(
    behind_proxy: ProxyEnv, upstream: Upstream
) -> None:
    env = behind_proxy
    sid = env.session(upstream.address)
    with env.client(sid) as proxy:
        codes = bad_cookies(proxy, sid, forwarded=STRANGER)
        assert set(codes[20:]) == {429}, codes
        # Naming someone else to the left of the proxy's own hop does not help.
        spoofed = proxy.get(
            "/", headers={"cookie": f"pv_{sid}=forged", "x-forwarded-for": f"{OWNER}, {STRANGER}"}
        )
        assert spoofed.status_code == 429
        # Another client behind the same proxy: its failure is its own (401, not 429)...
        other = proxy.get("/", headers={"cookie": f"pv_{sid}=x", "x-forwarded-for": OWNER})
        assert other.status_code == 401
        # ...and its valid link works, as does the stranger's own valid one.
        for client in (OWNER, STRANGER):
            opened = proxy.get(
                "/", params={"preview_token": env.token(sid)}, headers={"x-forwarded-for": client}
            )
            assert opened.status_code == 302, (client, opened.text)
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
        seen = proxy.get(
            "/headers", headers={"cookie": cookie, "x-forwarded-for": f"10.0.0.1, {OWNER}"}
        ).json()["headers"]
        assert seen["x-forwarded-for"] == OWNER  # the dev server hears of the real client
    assert counted(env, sid, STRANGER) and not counted(env, sid, "127.0.0.1")
    # API rate limits key by the same address: a bad JWT counts for the stranger.
    api = httpx.get(
        f"{env.gateway.url}/v1/previews",
        headers={"authorization": "Bearer junk", "x-forwarded-for": STRANGER},
    )
    assert api.status_code == 401
    limited = list(env.redis.scan_iter(match=f"{keys.RATE_LIMIT_PREFIX}*{STRANGER}*"))
    assert limited, "the API's failed-auth limit did not count the forwarded address"
    env.redis.delete(*limited)


def ws_from(env: ProxyEnv, sid: str, cookie: str, client: str) -> connect:
    host = env.host(sid)
    return connect(
        f"ws://{host}/",
        host="127.0.0.1",
        port=env.gateway.port,
        additional_headers={"cookie": cookie, "x-forwarded-for": client},
        origin=f"http://{host}",  # type: ignore[arg-type]
        proxy=None,
        compression=None,
        open_timeout=10,
    )


async def test_websocket_caps_are_per_forwarded_client(
    ws_capped: ProxyEnv, ws_upstream: WsUpstream
) -> None:
    env = ws_capped
    sid = env.session(ws_upstream.address)
    cookie = cookie_for(env, sid)
    held = [await ws_from(env, sid, cookie, STRANGER) for _ in range(WS_CAP)]
    try:
        with pytest.raises(InvalidStatus):  # the stranger is at its cap...
            async with ws_from(env, sid, cookie, STRANGER) as extra:
                await extra.recv()
        async with ws_from(env, sid, cookie, OWNER) as ws:  # ...the owner is not
            await ws.send("mine")
            assert await ws.recv() == "mine"
    finally:
        for ws in held:
            await ws.close()
