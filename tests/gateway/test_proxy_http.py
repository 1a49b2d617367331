"""The HTTP side of the preview proxy: auth, headers, streaming, errors, starting state."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import httpx
import redis as redis_sync

from shared import keys
from shared.settings import Settings
from tests.gateway.proxy_fixtures import (
    SECRET,
    ProxyEnv,
    Upstream,
    proxy_env,
    rss_kib,
    start_upstream,
    upstream,
)
from tests.utils import RedisServer, free_port, run_gateway, settings_env, wait_until

__all__ = ["proxy_env", "upstream"]


def assert_refused(client: httpx.Client, status: int, error: str, page_text: str) -> None:
    """GET / is refused with `status`: a JSON `error` by default, a page holding `page_text`
    for a browser (Accept: text/html)."""
    response = client.get("/")
    assert response.status_code == status
    assert response.json()["error"] == error
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == status and page_text in page.text


def test_token_becomes_a_cookie_for_this_host_only(proxy_env: ProxyEnv, upstream: Upstream) -> None:
    sid = proxy_env.session(upstream.address)
    with proxy_env.client(sid) as client:
        response = client.get(
            "/some/page", params={"preview_token": proxy_env.token(sid), "keep": "1"}
        )
        assert response.status_code == 302
        assert response.headers["location"] == "/some/page?keep=1"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"pv_{sid}=")
        for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned", "Path=/"):
            assert attribute in cookie
        assert "Domain" not in cookie  # host-only: not shared with other previews
        client.headers["cookie"] = cookie.split(";", 1)[0] + "; theirs=1"
        seen = client.get("/headers").json()
    assert "preview_token" not in seen["url"]
    assert seen["headers"]["cookie"] == "theirs=1"  # our cookie never reaches the dev server


def test_requests_without_a_valid_cookie_are_refused(
    proxy_env: ProxyEnv, upstream: Upstream
) -> None:
    a = proxy_env.session(upstream.address, user="alice")
    b = proxy_env.session(upstream.address, user="bob")
    with proxy_env.client(a) as anonymous:
        assert_refused(anonymous, 401, "unauthorized", "<h1>")
    with proxy_env.login(a) as alice:
        cookie_a = alice.headers["cookie"].replace(f"pv_{a}=", f"pv_{b}=")
    with proxy_env.client(b) as client:
        # A's cookie value under B's name, and B's host with A's token: both refused.
        assert client.get("/", headers={"cookie": cookie_a}).status_code == 401
        stolen = client.get("/", params={"preview_token": proxy_env.token(a, "alice")})
        assert stolen.status_code == 401
        # bob's own token for his preview works; alice's token for bob's preview does not.
        assert (
            client.get("/", params={"preview_token": proxy_env.token(b, "alice")}).status_code
            == 401
        )
        assert (
            client.get("/", params={"preview_token": proxy_env.token(b, "bob")}).status_code == 302
        )
        assert client.get("/", params={"preview_token": "garbage"}).status_code == 401


def test_forwarded_headers_and_hop_by_hop(proxy_env: ProxyEnv, upstream: Upstream) -> None:
    sid = proxy_env.session(upstream.address)
    with proxy_env.login(sid) as client:
        seen = client.get(
            "/headers",
            headers={
                "connection": "keep-alive, x-private",
                "x-private": "secret",
                "x-forwarded-for": "6.6.6.6",
                "te": "trailers",
                "x-kept": "yes",
            },
        ).json()["headers"]
        assert seen["host"] == proxy_env.host(sid)
        assert seen["x-forwarded-for"] == "127.0.0.1"  # the client's spoofed value is replaced
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == proxy_env.host(sid)
        assert "x-private" not in seen and "te" not in seen
        assert seen["x-kept"] == "yes"
        response = client.get("/gzip", headers={"accept-encoding": "gzip"})
        assert response.headers["content-encoding"] == "gzip"  # relayed, not decompressed
        assert response.text == "compressed body"  # httpx decodes; the bytes were gzip
        assert (
            response.headers.get("set-cookie") is None
            or "devserver" in response.headers["set-cookie"]
        )


def test_large_bodies_stream_both_ways_without_memory_growth(
    proxy_env: ProxyEnv, upstream: Upstream
) -> None:
    sid = proxy_env.session(upstream.address)
    pid = proxy_env.gateway.process.pid
    with proxy_env.login(sid) as client:
        client.get("/big", params={"mb": 1})  # warm up
        before = rss_kib(pid)
        received = 0
        with client.stream("GET", "/big", params={"mb": 256}) as response:
            for chunk in response.iter_raw():
                received += len(chunk)
        assert received == 256 * 1024 * 1024
        payload = os.urandom(1024 * 1024)
        digest = hashlib.sha256()

        def body():  # 128 MiB, chunked (no content-length)
            for _ in range(128):
                digest.update(payload)
                yield payload

        echoed = client.post("/echo", content=body()).json()
        assert echoed["bytes"] == 128 * 1024 * 1024
        assert echoed["sha256"] == digest.hexdigest()
        assert echoed["te"] == "chunked"
        fixed = client.post("/echo", content=payload).json()
        assert fixed["bytes"] == len(payload) and fixed["te"] is None
        growth_mib = (rss_kib(pid) - before) / 1024
    assert growth_mib < 40, f"gateway RSS grew {growth_mib:.0f} MiB over 384 MiB of traffic"


def test_refused_upstream_is_502_json_or_page(proxy_env: ProxyEnv) -> None:
    sid = proxy_env.session(f"127.0.0.1:{free_port()}")
    with proxy_env.login(sid) as client:
        assert_refused(client, 502, "upstream_refused", "dev server is not answering")


def test_dev_server_killed_mid_request_ends_quickly(proxy_env: ProxyEnv) -> None:
    dying = start_upstream()
    sid = proxy_env.session(dying.address)
    with proxy_env.login(sid) as client:
        try:
            response = client.get("/die", timeout=10)
            assert response.text.startswith("partial")
        except httpx.RemoteProtocolError:
            pass  # the response was cut short: also a prompt, honest end
        dying.process.wait(10)
        after = client.get("/", timeout=10)
        assert after.status_code == 502


def test_refused_right_after_ready_is_retried(proxy_env: ProxyEnv) -> None:
    port = free_port()
    sid = proxy_env.session(f"127.0.0.1:{port}")
    late: list[Upstream] = []
    timer = threading.Timer(0.2, lambda: late.append(start_upstream(port)))
    timer.start()
    try:
        with proxy_env.login(sid) as client:
            response = client.get("/headers", timeout=10)
        timer.join()
        assert response.status_code == 200, "a dev server binding late should be waited for"
    finally:
        timer.join()
        for up in late:
            up.process.kill()
            up.process.wait()


def test_unknown_preview_is_404_and_api_host_still_serves(proxy_env: ProxyEnv) -> None:
    with proxy_env.client("nosuchpreview") as client:
        response = client.get("/")
        assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert httpx.get(f"{proxy_env.gateway.url}/healthz").status_code == 200


def test_starting_preview_shows_a_page_and_holds_requests(
    proxy_env: ProxyEnv, upstream: Upstream
) -> None:
    sid = proxy_env.session(upstream.address, state="starting")
    with proxy_env.login(sid) as client:
        page = client.get("/", headers={"accept": "text/html", "sec-fetch-mode": "navigate"})
        assert page.status_code == 200 and "Starting your preview" in page.text
        status = client.get("/__preview/status").json()
        assert status["state"] == "starting"
        results: list[httpx.Response] = []
        waiters = [
            threading.Thread(target=lambda: results.append(client.get("/headers")))
            for _ in range(5)
        ]
        for t in waiters:
            t.start()
        wait_until(lambda: all(t.is_alive() for t in waiters), 2, "requests to be held")
        proxy_env.set_state(sid, "ready")
        for t in waiters:
            t.join(10)
    assert [r.status_code for r in results] == [200] * 5


def test_failed_preview_shows_its_reason(proxy_env: ProxyEnv, upstream: Upstream) -> None:
    sid = proxy_env.session(upstream.address, state="failed", error="Module not found: 'react-dom'")
    with proxy_env.login(sid) as client:
        page = client.get("/", headers={"accept": "text/html"})
        assert page.status_code == 503
        assert "Module not found: &#x27;react-dom&#x27;" in page.text


def test_failed_logins_meet_one_limit_on_the_proxy_and_the_api(redis_server: RedisServer) -> None:
    """A hostile client repeating bad credentials meets one limiter on a preview host and
    on the API: every rule of the setting (here the hour's 3 bite before the minute's 5),
    the same moving window, the same 429 JSON with Retry-After."""
    port = free_port()
    values = dict(
        redis_url=redis_server.url,
        signing_secret=SECRET,
        preview_port=port,
        rate_limit_auth_failures="5/minute;3/hour",
    )
    client = redis_sync.Redis.from_url(redis_server.url)
    sid = ""
    try:
        with run_gateway(settings_env(**values), port=port) as gateway:
            env = ProxyEnv(gateway, client, Settings.from_env({}, **values))
            sid = env.session("127.0.0.1:1")
            with env.client(sid) as anonymous:
                tries = [anonymous.get("/", params={"preview_token": "forged"}) for _ in range(5)]
                bad_cookie = anonymous.get("/", headers={"cookie": f"pv_{sid}=forged"})
                # Failures are only counted: a good token still opens the preview.
                opened = anonymous.get("/", params={"preview_token": env.token(sid)})
                assert opened.status_code == 302
            api = [
                httpx.get(f"{gateway.url}/v1/previews", headers={"authorization": "Bearer x"})
                for _ in range(5)
            ]
            for answers in (tries, api):
                assert [r.status_code for r in answers] == [401, 401, 401, 429, 429]
                refused = answers[-1]
                assert refused.headers["content-type"].startswith("application/json")
                assert refused.json()["error"] == "rate_limited" and refused.json()["detail"]
                assert 3000 < int(refused.headers["retry-after"]) <= 3600  # the hour's rule
            assert bad_cookie.status_code == 429
    finally:
        for key in client.scan_iter(match=f"{keys.RATE_LIMIT_PREFIX}*"):
            client.delete(key)
        if sid:
            client.delete(keys.session(sid))
        client.close()


def test_proxied_traffic_marks_the_preview_active(proxy_env: ProxyEnv, upstream: Upstream) -> None:
    sid = proxy_env.session(upstream.address)
    assert proxy_env.redis.get(keys.activity(sid)) is None
    with proxy_env.login(sid) as client:
        assert client.get("/headers").status_code == 200
    stamp = wait_until(lambda: proxy_env.redis.get(keys.activity(sid)), 5, "activity mark")
    assert abs(float(stamp) - time.time()) < 10


def test_response_has_one_date_and_no_server_banner(
    proxy_env: ProxyEnv, upstream: Upstream
) -> None:
    sid = proxy_env.session(upstream.address)
    with proxy_env.login(sid) as client:
        response = client.get("/headers")
    assert len(response.headers.get_list("date")) == 1
    assert "server" not in response.headers
