"""Share links against a real gateway and Redis, with a real Node upstream as the dev server
(the previews are written to Redis as a start leaves them; Chromium and real containers:
tests/e2e/test_shares_browser.py).

Plays the stranger holding a link (THREATS.md): a share opens one preview for viewing and
nothing more, and its revocation, expiry or the preview's end refuses it within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.observability.records import stop_record
from gateway.proxy.shares import Share
from gateway.sessions.store import Session
from shared import keys
from tests.gateway.api_helpers import bearer, fake_session
from tests.gateway.conftest import GatewayFactory
from tests.gateway.proxy_fixtures import Upstream, upstream
from tests.gateway.test_proxy_ws import WsUpstream, ws_upstream
from tests.utils import GatewayProcess, wait_until

__all__ = ["upstream", "ws_upstream"]

DOMAIN = "preview.localhost"
NAVIGATION = {
    "accept": "text/html,application/xhtml+xml",
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
}
SUBRESOURCE = {"accept": "*/*", "sec-fetch-mode": "no-cors", "sec-fetch-dest": "script"}


@pytest.fixture
def gw(start_gateway: GatewayFactory) -> GatewayProcess:
    return start_gateway(max_shares_per_preview=3, rate_limit_share_views="40/minute")


def ready_preview(redis: SyncRedis, address: str, user: str = "alice") -> str:
    session = fake_session(redis, user=user, project=f"p-{time.monotonic_ns()}")
    redis.hset(keys.session(session.id), mapping={"state": "ready", "address": address})
    redis.publish(keys.ROUTE_CHANGES, session.id)
    return session.id


def api(gw: GatewayProcess, user: str = "alice") -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers=bearer(user), timeout=30)


def host(gw: GatewayProcess, sid: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"host": f"{sid}.{DOMAIN}:{gw.port}"}, timeout=30)


def share(gw: GatewayProcess, sid: str, access: str = "public", **body: Any) -> dict[str, Any]:
    with api(gw) as client:
        made = client.post(f"/v1/previews/{sid}/shares", json={"access": access, **body})
    assert made.status_code == 201, made.text
    found: dict[str, Any] = made.json()
    return found


def opened(gw: GatewayProcess, sid: str, query: str, **headers: str) -> httpx.Response:
    with host(gw, sid) as client:
        return client.get(f"/page?{query}", headers=headers)


def viewer_cookie(response: httpx.Response) -> str:
    for value in response.headers.get_list("set-cookie"):
        if value.startswith("pv_s_"):
            return value.split(";", 1)[0]
    raise AssertionError(f"no viewer cookie in {response.headers}")


def view(gw: GatewayProcess, sid: str, cookie: str, path: str = "/headers") -> httpx.Response:
    with host(gw, sid) as client:
        return client.get(path, headers={"cookie": cookie})


def test_create_list_revoke_and_limits(gw: GatewayProcess, sync_redis: SyncRedis) -> None:
    sid = ready_preview(sync_redis, "127.0.0.1:9")
    made = share(gw, sid, expires_in=600)
    assert made["access"] == "public" and made["preview_id"] == sid
    assert made["url"].endswith(f"/?preview_share={made['id']}")
    assert made["url"].startswith(f"http://{sid}.{DOMAIN}")
    assert 590 < made["expires_at"] - time.time() <= 600
    share(gw, sid, "signed_in")
    share(gw, sid)
    with api(gw) as alice, api(gw, "bob") as bob:
        full = alice.post(f"/v1/previews/{sid}/shares", json={"access": "public"})
        assert full.status_code == 429 and full.json()["error"] == "too_many_shares"
        listed = alice.get(f"/v1/previews/{sid}/shares").json()["shares"]
        assert len(listed) == 3
        # Another user's preview looks like none, for every verb.
        assert bob.get(f"/v1/previews/{sid}/shares").status_code == 404
        assert bob.post(f"/v1/previews/{sid}/shares", json={"access": "public"}).status_code == 404
        assert bob.delete(f"/v1/previews/{sid}/shares/{made['id']}").status_code == 404
        assert alice.delete(f"/v1/previews/{sid}/shares/{made['id']}").status_code == 204
        assert alice.delete(f"/v1/previews/{sid}/shares/{made['id']}").status_code == 404
        # A revoked one frees its place under the limit.
        assert (
            alice.post(f"/v1/previews/{sid}/shares", json={"access": "public"}).status_code == 201
        )
        for body in (
            {},
            {"access": "everyone"},
            {"access": "public", "expires_in": 5},
            {"access": "public", "expires_in": 10**9},
            {"access": "public", "expires_in": "60"},
            {"access": "public", "expires_in": True},
            {"access": "public", "ports": "yes"},
            {"access": "public", "owner": "bob"},
        ):
            bad = alice.post(f"/v1/previews/{sid}/shares", json=body)
            assert bad.status_code == 422, (body, bad.text)
            assert set(bad.json()) >= {"error", "detail"}
        nobody = httpx.post(f"{gw.url}/v1/previews/{sid}/shares", json={"access": "public"})
        assert nobody.status_code == 401


def test_public_link_views_and_grants_nothing_else(
    gw: GatewayProcess, sync_redis: SyncRedis, upstream: Upstream
) -> None:
    sid = ready_preview(sync_redis, upstream.address)
    other = ready_preview(sync_redis, upstream.address)
    link = share(gw, sid)
    first = opened(gw, sid, f"preview_share={link['id']}&x=1", accept="*/*")
    assert first.status_code == 302, first.text
    assert first.headers["location"] == "/page?x=1"  # the link leaves the URL
    cookie = viewer_cookie(first)
    assert "HttpOnly" in first.headers["set-cookie"] and "Domain" not in first.headers["set-cookie"]
    seen = view(gw, sid, cookie)
    assert seen.status_code == 200, seen.text
    assert view(gw, sid, cookie).status_code == 200  # requests of an open share are no views
    # The preview's record and the operator's dashboard count both.
    with httpx.Client(base_url=gw.url, headers=bearer("ops", scope="admin")) as ops:
        items = ops.get("/v1/admin/overview").json()["sessions"]["items"]
    assert [(i["shares"], i["share_views"]) for i in items if i["id"] == sid] == [(1, 1)]
    stored = {k.decode(): v.decode() for k, v in sync_redis.hgetall(keys.session(sid)).items()}
    record = stop_record(Session.from_record(stored), "user")
    assert (record.shares, record.share_views) == (1, 1)
    assert "pv_" not in seen.json()["headers"].get("cookie", "")  # never reaches the dev server

    # Not the API (it takes bearer tokens only), not another preview, not the owner's cookie.
    with httpx.Client(base_url=gw.url, headers={"cookie": cookie}) as client:
        assert client.get("/v1/previews").status_code == 401
        assert client.get(f"/v1/previews/{sid}/shares").status_code == 401
    value = cookie.split("=", 1)[1]
    assert view(gw, other, f"pv_s_{other}={value}").status_code == 401
    assert view(gw, sid, f"pv_{sid}={value}").status_code == 401
    assert view(gw, other, f"pv_{other}={value}").status_code == 401
    assert opened(gw, other, f"preview_share={link['id']}").status_code == 404
    # ... nor the owner's own open_url token for the preview (no upgrade by a viewer).
    assert opened(gw, sid, "preview_token=junk", cookie=cookie).status_code == 401


def test_notice_once_and_only_for_navigations(
    gw: GatewayProcess, sync_redis: SyncRedis, upstream: Upstream
) -> None:
    sid = ready_preview(sync_redis, upstream.address)
    link = share(gw, sid)
    query = f"preview_share={link['id']}"
    for headers in (SUBRESOURCE, {"accept": "application/json"}, {}):
        assert opened(gw, sid, query, **headers).status_code == 302, headers
    notice = opened(gw, sid, query, **NAVIGATION)
    assert notice.status_code == 200 and "text/html" in notice.headers["content-type"]
    assert "live preview of someone" in notice.text and 'href="/page"' in notice.text
    assert notice.headers["referrer-policy"] == "no-referrer"
    marks = [c.split(";", 1)[0] for c in notice.headers.get_list("set-cookie")]
    seen_mark = next(c for c in marks if c.startswith("pv_n_"))
    assert view(gw, sid, viewer_cookie(notice)).status_code == 200  # the page's cookie works
    again = opened(gw, sid, query, cookie=seen_mark, **NAVIGATION)
    assert again.status_code == 302  # once per browser


def test_signed_in_link_needs_a_viewer_token_used_once(
    gw: GatewayProcess, sync_redis: SyncRedis, upstream: Upstream
) -> None:
    sid = ready_preview(sync_redis, upstream.address)
    link = share(gw, sid, "signed_in")
    anonymous = opened(gw, sid, f"preview_share={link['id']}", **NAVIGATION)
    assert anonymous.status_code == 401 and "signed-in" in anonymous.text
    assert httpx.post(f"{gw.url}/v1/shares/{link['id']}/open").status_code == 401
    with api(gw, "bob") as bob:
        answer = bob.post(f"/v1/shares/{link['id']}/open")
        assert answer.status_code == 200, answer.text
        url = answer.json()["url"]
        assert url.startswith(f"http://{sid}.{DOMAIN}") and "share_token=" in url
        assert "Bearer" not in url and bob.headers["authorization"][7:] not in url
        query = url.split("?", 1)[1]
        first = opened(gw, sid, query)
        assert first.status_code == 302, first.text
        assert view(gw, sid, viewer_cookie(first)).status_code == 200
        assert opened(gw, sid, query).status_code == 401  # single use
        # A token for this share opens no other preview.
        other = ready_preview(sync_redis, upstream.address)
        fresh = bob.post(f"/v1/shares/{link['id']}/open").json()["url"].split("?", 1)[1]
        assert opened(gw, other, fresh).status_code == 404


def test_hostile_ids_are_404_never_5xx(gw: GatewayProcess, sync_redis: SyncRedis) -> None:
    sid = ready_preview(sync_redis, "127.0.0.1:9")
    weird = ["x", "A" * 22, "../../etc", "%00", "A" * 5000, "é" * 22, "share:" + "A" * 16]
    with api(gw) as alice:
        for bad in weird:
            for response in (
                alice.delete(f"/v1/previews/{sid}/shares/{bad}"),
                alice.post(f"/v1/shares/{bad}/open"),
                opened(gw, sid, f"preview_share={bad}"),
                opened(gw, sid, f"share_token={bad}.{bad}.{bad}"),
            ):
                assert response.status_code in (401, 404), (bad, response.status_code)
                assert response.json()["error"]
        assert alice.get("/v1/previews/nosuchpreview/shares").status_code == 404


def test_views_per_address_are_limited(gw: GatewayProcess, sync_redis: SyncRedis) -> None:
    sid = ready_preview(sync_redis, "127.0.0.1:9")
    link = share(gw, sid)
    statuses = [opened(gw, sid, f"preview_share={link['id']}").status_code for _ in range(41)]
    assert statuses[:40] == [302] * 40 and statuses[40] == 429


def test_revoke_expiry_and_stop_refuse_within_a_second(
    gw: GatewayProcess, sync_redis: SyncRedis, upstream: Upstream
) -> None:
    sid = ready_preview(sync_redis, upstream.address)
    cookies = {}
    for name in ("revoked", "stopped"):
        link = share(gw, sid)
        cookies[name] = (link["id"], viewer_cookie(opened(gw, sid, f"preview_share={link['id']}")))
        assert view(gw, sid, cookies[name][1]).status_code == 200
    # Expiry needs no message: a record that lapses is refused on the next request.
    short = Share("S" * 22, sid, "alice", "public", False, time.time(), time.time() + 1.5)
    sync_redis.hset(keys.share(short.id), mapping=short.to_record())  # type: ignore[arg-type]
    expiring = viewer_cookie(opened(gw, sid, f"preview_share={short.id}"))
    assert view(gw, sid, expiring).status_code == 200
    wait_until(lambda: view(gw, sid, expiring).status_code == 401, 3, "expired share refused")

    with api(gw) as alice:
        assert alice.delete(f"/v1/previews/{sid}/shares/{cookies['revoked'][0]}").status_code == 204

    # The revocation reaches the gateway over pub/sub: refused within a second (the
    # deadline includes the requests themselves, on a loaded machine).
    def refused() -> str:
        response = view(gw, sid, cookies["revoked"][1])
        return str(response.json()["detail"]) if response.status_code == 401 else ""

    assert "revoked" in wait_until(refused, 1.0, "revoked share refused")
    assert view(gw, sid, cookies["stopped"][1]).status_code == 200  # its sibling still works
    with api(gw) as alice:
        assert alice.delete(f"/v1/previews/{sid}").status_code == 204
    assert view(gw, sid, cookies["stopped"][1]).status_code in (404, 503)


async def test_websockets_close_on_revoke_and_on_stop(
    gw: GatewayProcess, sync_redis: SyncRedis, ws_upstream: WsUpstream
) -> None:
    sid = ready_preview(sync_redis, ws_upstream.address)
    links = [share(gw, sid) for _ in range(2)]
    cookies = [viewer_cookie(opened(gw, sid, f"preview_share={s['id']}")) for s in links]
    where = f"{sid}.{DOMAIN}:{gw.port}"

    def ws(cookie: str) -> connect:
        return connect(
            f"ws://{where}/hmr",
            host="127.0.0.1",
            port=gw.port,
            additional_headers={"cookie": cookie},
            origin=f"http://{where}",  # type: ignore[arg-type]
            proxy=None,
            open_timeout=10,
        )

    async with ws(cookies[0]) as first, ws(cookies[1]) as second:
        for socket in (first, second):
            await socket.send("hi")
            assert await socket.recv() == "hi"
        with api(gw) as alice:
            revoked = await asyncio.to_thread(
                alice.delete, f"/v1/previews/{sid}/shares/{links[0]['id']}"
            )
        assert revoked.status_code == 204
        began = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(first.recv(), 1.0)
        assert time.monotonic() - began < 1.0
        assert (first.close_code, first.close_reason) == (1008, "the share link was revoked")
        await second.send("still")
        assert await second.recv() == "still"
        sync_redis.hset(keys.session(sid), "state", "stopping")
        sync_redis.publish(keys.ROUTE_CHANGES, sid)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(second.recv(), 1.0)
        assert second.close_code == 1001


def cut_after(gw: GatewayProcess, sid: str, cookie: str, trigger: Callable[[], float]) -> float:
    """Seconds from `trigger` (which returns when access ended, as unix time) to the end
    of a viewer's endless Server-Sent Events response through `gw`."""
    with (
        host(gw, sid) as client,
        client.stream("GET", "/stream", headers={"cookie": cookie}, timeout=5) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_raw()
        assert b"first" in next(chunks)
        ended_at = trigger()
        try:
            for _ in chunks:  # ticks until the gateway cuts the response
                assert time.time() < ended_at + 5, "the stream was not cut"
        except httpx.RemoteProtocolError:
            pass  # the connection closed before the body's end: what a cut looks like
    return time.time() - ended_at


def test_streaming_responses_end_on_every_replica(
    start_gateway: GatewayFactory, sync_redis: SyncRedis, upstream: Upstream
) -> None:
    """A viewer's SSE response on replica B ends within a second of a revocation made on
    replica A, of the share's expiry, and of the preview's stop."""
    a = start_gateway(max_shares_per_preview=5)
    b = start_gateway(max_shares_per_preview=5)
    sid = ready_preview(sync_redis, upstream.address)
    links = [share(a, sid) for _ in range(2)]
    cookies = [viewer_cookie(opened(b, sid, f"preview_share={s['id']}")) for s in links]

    def revoke() -> float:
        with api(a) as alice:
            assert alice.delete(f"/v1/previews/{sid}/shares/{links[0]['id']}").status_code == 204
        return time.time()

    assert cut_after(b, sid, cookies[0], revoke) < 1.0
    short = Share("E" * 22, sid, "alice", "public", False, time.time(), time.time() + 1.5)
    sync_redis.hset(keys.share(short.id), mapping=short.to_record())  # type: ignore[arg-type]
    expiring = viewer_cookie(opened(b, sid, f"preview_share={short.id}"))
    assert -0.1 < cut_after(b, sid, expiring, lambda: short.expires_at) < 1.0

    def stop() -> float:
        sync_redis.hset(keys.session(sid), "state", "stopping")
        sync_redis.publish(keys.ROUTE_CHANGES, sid)
        return time.time()

    assert cut_after(b, sid, cookies[1], stop) < 1.0
