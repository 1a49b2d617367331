"""What a stranger can do with our host names and links (issue 14, point 7 and finding 5),
against real gateways on hypercorn, a real Redis and a real Node dev server.

On the code before the fix: an `open_url` token opened the preview again (on the same and
on another replica), the owner's JWT in `?preview_token=` opened it, `/metrics`, `/admin`,
`/openapi.json` and the API answered on `preview.localhost`, on `x.y.preview.localhost`,
on a preview host spelled with a trailing dot and on any rebinding name, the login
redirect followed `//host` off-site, and a dev server's `Set-Cookie` kept its `Domain`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import redis as redis_sync

from gateway.cli import mint_token
from shared import keys
from shared.settings import Settings
from tests.gateway.proxy_fixtures import SECRET, ProxyEnv, Upstream, proxy_env, upstream
from tests.utils import RedisServer, free_port, run_gateway, settings_env

__all__ = ["proxy_env", "upstream"]


def raw_head(port: int, head: bytes) -> tuple[int, dict[str, list[str]]]:
    """Status and headers of a request sent as bytes (targets httpx would normalise)."""
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(head + b"Connection: close\r\n\r\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    lines = b"".join(chunks).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers


@pytest.fixture
def second_gateway(proxy_env: ProxyEnv, redis_server: RedisServer) -> Iterator[ProxyEnv]:
    """Another replica on the same Redis, with the same secrets."""
    port = free_port()
    values: dict[str, Any] = dict(
        redis_url=redis_server.url, signing_secret=SECRET, preview_port=proxy_env.gateway.port
    )
    with run_gateway(settings_env(**values), port=port) as gw:
        yield ProxyEnv(gw, proxy_env.redis, proxy_env.settings)


def test_an_open_url_token_opens_once(
    proxy_env: ProxyEnv, second_gateway: ProxyEnv, upstream: Upstream
) -> None:
    sid = proxy_env.session(upstream.address)
    token = proxy_env.token(sid)
    with proxy_env.client(sid) as first:
        opened = first.get("/", params={"preview_token": token})
        assert opened.status_code == 302
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
    for env in (proxy_env, second_gateway):  # replayed from a log: on either replica
        with env.client(sid) as replay:
            again = replay.get("/", params={"preview_token": token})
            assert again.status_code == 401, (env.gateway.port, again.text)
            assert "used already" in again.json()["detail"]
    with proxy_env.client(sid) as first:
        # The same link reloaded by its owner (cookie present): back to the page, no error.
        reloaded = first.get("/", params={"preview_token": token}, headers={"cookie": cookie})
        assert reloaded.status_code == 302 and "set-cookie" not in reloaded.headers
    # Each open_url is a new token: the next one works, on the other replica too.
    with second_gateway.client(sid) as other:
        assert other.get("/", params={"preview_token": proxy_env.token(sid)}).status_code == 302


def test_the_users_jwt_does_not_open_a_preview(proxy_env: ProxyEnv, upstream: Upstream) -> None:
    sid = proxy_env.session(upstream.address)
    jwt = mint_token(Settings(), "alice", 600, False)  # the owner's, for the API's secret
    with proxy_env.client(sid) as client:
        refused = client.get("/", params={"preview_token": jwt})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers


@pytest.mark.parametrize(
    "path", ["/metrics", "/admin", "/openapi.json", "/v1/previews", "/v1/pool"]
)
def test_the_api_never_answers_on_the_preview_domain(
    proxy_env: ProxyEnv, upstream: Upstream, path: str
) -> None:
    sid = proxy_env.session(upstream.address)
    port = proxy_env.gateway.port
    admin = mint_token(Settings(), "root", 600, True)
    hosts = {
        f"{sid}.preview.localhost:{port}": 401,  # a preview: its cookie is asked for
        f"{sid.upper()}.Preview.Localhost.:{port}": 401,  # the same, spelled otherwise
        f"preview.localhost:{port}": 404,
        f"x.{sid}.preview.localhost:{port}": 404,
        f"nosuchpreview.preview.localhost:{port}": 404,
        f"evil.example:{port}": 421,  # a DNS-rebinding name: not an API host either
    }
    for host, status in hosts.items():
        response = httpx.get(
            f"{proxy_env.gateway.url}{path}",
            headers={"host": host, "authorization": f"Bearer {admin}"},
        )
        assert response.status_code == status, (host, response.status_code, response.text[:200])
        assert set(response.json()) == {"error", "detail"}, host
    # The API's own hosts: loopback by address and by name.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        response = httpx.get(
            f"{proxy_env.gateway.url}/readyz", headers={"host": host}, follow_redirects=False
        )
        assert response.status_code in (200, 503), host
    assert httpx.get(f"{proxy_env.gateway.url}/metrics").status_code == 200


def test_api_hosts_can_be_named(redis_server: RedisServer) -> None:
    port = free_port()
    values: dict[str, Any] = dict(redis_url=redis_server.url, api_hosts=("api.example",))
    with run_gateway(settings_env(**values), port=port) as gw:
        url = f"{gw.url}/metrics"
        assert httpx.get(url, headers={"host": "API.example."}).status_code == 200
        assert httpx.get(url, headers={"host": f"127.0.0.1:{port}"}).status_code == 421
        # Load balancers probe by address: health answers on any host but previews'.
        assert httpx.get(f"{gw.url}/healthz", headers={"host": "10.1.2.3"}).status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "///evil.example/x",
        "/\\evil.example/x",
        "/\\\\evil.example/x",
        "//\\evil.example/x",
        "/%2F%2Fevil.example/x",
        "/%5Cevil.example/x",
        "http://evil.example//evil.example/x",
    ],
)
def test_the_login_redirect_never_leaves_the_host(
    proxy_env: ProxyEnv, upstream: Upstream, target: str
) -> None:
    sid = proxy_env.session(upstream.address)
    host = proxy_env.host(sid)
    head = f"GET {target}?a=1&preview_token={proxy_env.token(sid)} HTTP/1.1\r\nHost: {host}\r\n"
    status, headers = raw_head(proxy_env.gateway.port, head.encode())
    assert status == 302
    (location,) = headers["location"]
    # What a browser does: a backslash is a slash in http(s) URLs.
    landed = urlsplit(urljoin(f"http://{host}/", location.replace("\\", "/")))
    assert landed.netloc == host, (target, location)
    assert location.startswith("/") and not location.startswith("//"), location
    assert location.endswith("?a=1") and "preview_token" not in location


def test_https_previews_get_a_host_prefixed_cookie(
    redis_server: RedisServer, upstream: Upstream
) -> None:
    """Behind a TLS proxy: `__Host-pv_{id}` (Secure, Path=/, no Domain), which no other
    host can set or shadow; junk of our name planted before it does not hide it."""
    port = free_port()
    values: dict[str, Any] = dict(
        redis_url=redis_server.url,
        signing_secret=SECRET,
        jwt_secret=SECRET,  # not on loopback by name: the built-in secrets are refused
        preview_port=0,
        domain="preview.example",
        trusted_proxies=("127.0.0.1",),
    )
    client = redis_sync.Redis.from_url(redis_server.url)
    with run_gateway(settings_env(**values), port=port) as gw:
        env = ProxyEnv(gw, client, Settings.from_env({}, **values))
        sid = env.session(upstream.address)
        host = f"{sid}.preview.example"
        with httpx.Client(
            base_url=gw.url, headers={"host": host, "x-forwarded-proto": "https"}
        ) as browser:
            opened = browser.get("/", params={"preview_token": env.token(sid)})
            assert opened.status_code == 302
            cookie = opened.headers["set-cookie"]
            assert cookie.startswith(f"__Host-pv_{sid}=")
            attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
            assert {"path", "secure", "httponly"} <= attributes and "domain" not in attributes
            assert "; Path=/;" in cookie
            ours = cookie.split(";", 1)[0]
            page = browser.get("/headers", headers={"cookie": f"pv_{sid}=junk; {ours}"})
            assert page.status_code == 200
            seen = page.json()["headers"]
            assert "cookie" not in seen and seen["x-forwarded-proto"] == "https"
    client.delete(keys.session(sid))
    client.close()


def test_a_dev_servers_cookies_are_host_only_and_never_ours(
    proxy_env: ProxyEnv, upstream: Upstream
) -> None:
    sid = proxy_env.session(upstream.address)
    with proxy_env.login(sid) as client:
        response = client.get(
            "/hostile-cookies", params={"victim": "abc", "domain": "preview.localhost", "big": 1}
        )
    cookies = response.headers.get_list("set-cookie")
    assert sorted(c.split("=", 1)[0] for c in cookies) == ["big0", "shared"]
    assert not [c for c in cookies if "domain" in c.lower()], cookies
