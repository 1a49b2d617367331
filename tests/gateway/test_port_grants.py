"""Port hosts get the owner's (or a port-including share's) cookie by redirect hops on
navigations (gateway/proxy/port_grants.py), against a real gateway, Redis and Node servers
(the environment of tests/gateway/test_ports.py; Chromium: tests/e2e/test_ports_browser.py).

Plays the stranger with a leaked hop URL, the other user and the share viewer
(THREATS.md): a hop token opens one port host once, for the grantee it was minted for, and
sends the browser only to a path on that preview's own hosts.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from gateway.proxy.port_grants import HOP_PATH, HOPS_PER_WINDOW
from gateway.proxy.preview_auth import COOKIE_PURPOSE
from gateway.proxy.signed import sign
from shared import keys
from tests.gateway.proxy_fixtures import SECRET, upstream
from tests.gateway.test_ports import DOMAIN, Env, address, api_server, env, get, gw, login
from tests.gateway.test_shares import (
    NAVIGATION,
    SUBRESOURCE,
    api,
    host,
    opened,
    share,
    viewer_cookie,
)
from tests.utils import GatewayProcess, wait_until

__all__ = ["address", "api_server", "env", "gw", "upstream"]


def go(gw: GatewayProcess, url: str, cookie: str = "", **headers: str) -> httpx.Response:
    """One navigation to an absolute preview URL (a Location), not following redirects."""
    parts = urlsplit(url)
    label = parts.netloc.split(".", 1)[0]
    assert parts.netloc == f"{label}.{DOMAIN}:{gw.port}", url  # never another host
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with host(gw, label) as client:
        return client.get(target, headers={"cookie": cookie, **NAVIGATION, **headers})


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c.split(";", 1)[0] for c in response.headers.get_list("set-cookie")}


def hop(gw: GatewayProcess, label: str, token: str, back: str, path: str) -> httpx.Response:
    with host(gw, label) as client:
        return client.get(HOP_PATH, params={"t": token, "b": back, "r": path})


def asked(gw: GatewayProcess, sid: str, port: object, path: str = "/") -> str:
    """The main host's hop URL a cookieless navigation to a port host is sent to."""
    query = urlencode({"port": str(port), "r": path})
    return f"http://{sid}.{DOMAIN}:{gw.port}{HOP_PATH}?{query}"


def minted(gw: GatewayProcess, sid: str, port: int, cookie: str, path: str = "/") -> str:
    """A genuine hop token for `{sid}-{port}`, as the main host mints it for `cookie`."""
    response = go(gw, asked(gw, sid, port, path), cookie)
    assert response.status_code == 302, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)["t"][0]


def users_cookie(sid: str, user: str) -> str:
    """A genuine owner's cookie for `sid`'s main host, made out to `user`."""
    return f"pv_{sid}={sign(SECRET, COOKIE_PURPOSE, sid, user, 600)}"


def test_owner_navigation_hops_through_each_open_port(env: Env) -> None:
    gw = env.gw
    sid = env.preview()
    label = f"{sid}-{env.api.port}"
    main = login(gw, sid)
    base = f"http://{sid}.{DOMAIN}:{gw.port}"
    # A subresource or fetch() never hops: only navigations do.
    with host(gw, sid) as client:
        plain = client.get("/headers", headers={"cookie": main, **SUBRESOURCE})
    assert plain.status_code == 200
    first = go(gw, f"{base}/page?x=1", main)
    assert first.status_code == 302
    to_port = first.headers["location"]
    assert to_port.startswith(f"http://{label}.{DOMAIN}:{gw.port}{HOP_PATH}?")
    assert first.headers["cache-control"] == "no-store"
    assert "share" not in to_port and "alice" not in to_port  # the grantee stays in Redis
    mark = set_cookies(first)[f"pv_g_{sid}"]
    # The port host trades the token for its cookie and sends the browser back.
    back = go(gw, to_port)
    assert back.status_code == 302, back.text
    assert back.headers["location"] == f"{base}/page?x=1"
    port_cookie = set_cookies(back)[f"pv_{label}"]
    assert "HttpOnly" in back.headers["set-cookie"] and "Domain" not in back.headers["set-cookie"]
    # With the mark, the page itself; the port answers the cookie's requests.
    page = go(gw, back.headers["location"], f"{main}; {mark}")
    assert page.status_code == 200
    assert get(gw, label, port_cookie).status_code == 200
    # The token was single-use; the mark is bound to its preview and grantee.
    replay = go(gw, to_port)
    assert replay.status_code == 401 and "used already" in replay.text
    other = env.preview()
    moved = mark.replace(f"pv_g_{sid}=", f"pv_g_{other}=")
    assert (
        go(gw, f"http://{other}.{DOMAIN}:{gw.port}/", f"{login(gw, other)}; {moved}").status_code
        == 302
    )


def test_port_host_first_asks_the_main_host(env: Env) -> None:
    gw = env.gw
    sid = env.preview()
    label = f"{sid}-{env.api.port}"
    main = login(gw, sid)
    first = go(gw, f"http://{label}.{DOMAIN}:{gw.port}/deep/path?q=2")
    assert first.status_code == 302
    to_main = first.headers["location"]
    assert to_main == asked(gw, sid, env.api.port, "/deep/path?q=2")
    # Without the main host's cookie, or with another user's: refused.
    assert go(gw, to_main).status_code == 401
    assert go(gw, to_main, users_cookie(sid, "bob")).status_code == 401
    minting = go(gw, to_main, main)
    assert minting.status_code == 302
    traded = go(gw, minting.headers["location"])
    assert traded.status_code == 302
    assert traded.headers["location"] == "/deep/path?q=2"  # a path on the port host itself
    cookie = set_cookies(traded)[f"pv_{label}"]
    assert get(gw, label, cookie).status_code == 200
    # A non-navigation without a cookie is refused as before (no redirect for fetch()).
    with host(gw, label) as client:
        assert client.get("/x", headers=SUBRESOURCE).status_code == 401


def test_hostile_hops_are_refused(env: Env) -> None:
    gw = env.gw
    sid = env.preview()
    other = env.preview()
    label = f"{sid}-{env.api.port}"
    main = login(gw, sid)
    # A token for another host (another preview's port, another port), or altered.
    token = minted(gw, sid, env.api.port, main)
    assert hop(gw, f"{other}-{env.api.port}", token, "port", "/").status_code == 401
    assert hop(gw, f"{sid}-{env.api.port + 1}", token, "port", "/").status_code == 401
    assert hop(gw, label, token, "port", "/elsewhere").status_code == 401  # path is signed
    assert hop(gw, label, token, "main", "/").status_code == 401
    # Return targets that are no path on this host never get as far as the token.
    for path in ("//evil.example/", "http://evil.example/", "/\\evil.example", "evil", "/a b"):
        assert hop(gw, label, token, "port", path).status_code == 400, path
    assert hop(gw, label, token, "elsewhere", "/").status_code == 400
    # The genuine token works once; its replay is refused.
    assert hop(gw, label, token, "port", "/").status_code == 302
    assert hop(gw, label, token, "port", "/").status_code == 401
    # A token minted for another grantee (bob) is no way into alice's port host.
    token = minted(gw, sid, env.api.port, main)
    env.redis.set(keys.port_hop(token.split(".", 1)[0]), "owner:bob")
    refused = hop(gw, label, token, "port", "/")
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    # The main host mints only for an open port, a real port number and a path.
    for port, path, status in (
        (env.api.port + 1, "/", 404),
        ("70000", "/", 400),
        ("x", "/", 400),
        (env.api.port, "//evil.example", 400),
    ):
        assert go(gw, asked(gw, sid, port, path), main).status_code == status, (port, path)
    # Another preview's cookie on this main host gets nothing either.
    moved = login(gw, other).replace(f"pv_{other}=", f"pv_{sid}=")
    assert go(gw, asked(gw, sid, env.api.port), moved).status_code == 401


def test_a_browser_that_keeps_no_cookie_meets_a_limit(env: Env) -> None:
    gw = env.gw
    sid = env.preview()
    main = login(gw, sid)
    statuses = [
        go(gw, asked(gw, sid, env.api.port), main).status_code for _ in range(HOPS_PER_WINDOW + 1)
    ]
    assert statuses == [302] * HOPS_PER_WINDOW + [429]


def test_shares_hop_only_when_they_include_ports(env: Env) -> None:
    gw = env.gw
    sid = env.preview()
    label = f"{sid}-{env.api.port}"
    base = f"http://{sid}.{DOMAIN}:{gw.port}"
    main_only = viewer_cookie(opened(gw, sid, f"preview_share={share(gw, sid)['id']}"))
    # No detour for it, and the hop refuses it plainly.
    assert go(gw, f"{base}/page", main_only).status_code == 200
    to_main = go(gw, f"http://{label}.{DOMAIN}:{gw.port}/").headers["location"]
    refused = go(gw, to_main, main_only)
    assert refused.status_code == 403 and "other ports" in refused.text
    # A share with ports: its viewer hops like the owner, and gets a viewer's cookie there.
    link = share(gw, sid, ports=True)
    viewer = viewer_cookie(opened(gw, sid, f"preview_share={link['id']}"))
    first = go(gw, f"{base}/page", viewer)
    assert first.status_code == 302
    traded = go(gw, first.headers["location"])
    assert traded.status_code == 302
    cookie = set_cookies(traded)[f"pv_s_{label}"]
    assert get(gw, label, cookie).status_code == 200
    assert f"pv_{label}" not in set_cookies(traded)  # never the owner's cookie
    assert link["id"] not in first.headers["location"]  # the capability stays out of URLs
    # Revoked: the port host's viewer cookie is refused like the main host's.
    with api(gw) as alice:
        assert alice.delete(f"/v1/previews/{sid}/shares/{link['id']}").status_code == 204
    wait_until(lambda: get(gw, label, cookie).status_code == 401, 1.0, "revoked on the port")
