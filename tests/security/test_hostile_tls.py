"""The security suites' key cases against the TLS listener: request smuggling over TLS
(HTTP/1.1 by ALPN, and HTTP/2 frames that an HTTP/1.1 dev server would read two ways),
hostile tokens and cookies on a preview host over HTTP/2, and one preview's cookie
against another. The upstream is the recording Node server of test_hostile_proxy: a
smuggled request would show up in its record."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import Any

import h2.events as h2events
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection

from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_gateway
from tests.gateway.tls_fixtures import TlsFiles, tls_files
from tests.security.test_hostile_proxy import (
    CONFLICTS,
    SMUGGLED,
    assert_nothing_smuggled,
    head,
    read_answer,
    recorder,
    seen,
    status_of,
)
from tests.utils import RedisServer

__all__ = ["recorder", "tls_files"]


@pytest.fixture(scope="module")
def tls_target(
    redis_server: RedisServer, tls_files: TlsFiles, recorder: Upstream
) -> Iterator[tuple[ProxyEnv, str, str]]:
    """(env, preview host, cookie header) of a preview served by the recorder, reached
    on the gateway's TLS listener."""
    with proxy_gateway(redis_server, tls=tls_files) as env:
        sid = env.session(recorder.address)
        with env.login(sid) as client:
            cookie = str(client.headers["cookie"])
        yield env, env.host(sid), cookie


def tls_socket(env: ProxyEnv, host: str, alpn: str) -> ssl.SSLSocket:
    context = env.ssl_context()
    context.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", env.port), 10)
    sock = context.wrap_socket(raw, server_hostname=host.rsplit(":", 1)[0])
    assert sock.selected_alpn_protocol() == alpn
    return sock


def tls_exchange(env: ProxyEnv, host: str, raw: bytes) -> bytes:
    """Raw HTTP/1.1 bytes over TLS; one response, to its end or until the gateway closes."""
    with tls_socket(env, host, "http/1.1") as sock:
        sock.sendall(raw)
        return read_answer(sock)


def victim_over_h2(env: ProxyEnv, host: str, cookie: str, marker: str) -> None:
    """A normal request after the attack gets its own answer (same pooled upstream)."""
    sid = host.split(".", 1)[0]
    with env.client(sid) as client:
        for _ in range(3):
            answer = client.get(f"/victim-{marker}", headers={"cookie": cookie})
            assert (answer.status_code, answer.http_version) == (200, "HTTP/2"), answer.text
            assert answer.json()["url"] == f"/victim-{marker}"


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_content_length_with_transfer_encoding_over_tls(
    tls_target: tuple[ProxyEnv, str, str], recorder: Upstream, case: str
) -> None:
    env, host, cookie = tls_target
    before = len(seen(recorder))
    headers, body = CONFLICTS[case]
    answer = tls_exchange(env, host, head(host, cookie) + headers + body)
    assert status_of(answer) == 400, answer[:300]
    assert len(seen(recorder)) == before
    victim_over_h2(env, host, cookie, case)
    assert_nothing_smuggled(recorder, before)


def h2_request(
    env: ProxyEnv, host: str, headers: list[tuple[str, str]], body: bytes = b""
) -> list[Any]:
    """Send one HTTP/2 request with header validation off on our side (a hostile client
    can send any bytes); the events the gateway answered with, until the stream ends or
    the connection closes."""
    config = H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = H2Connection(config)
    conn.initiate_connection()
    events: list[Any] = []
    with tls_socket(env, host, "h2") as sock:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not data:
                break
            for event in conn.receive_data(data):
                events.append(event)
            sock.sendall(conn.data_to_send())
            ends = (h2events.StreamEnded, h2events.StreamReset, h2events.ConnectionTerminated)
            if any(isinstance(e, ends) for e in events):
                break
    return events


def base(host: str, cookie: str, method: str = "POST") -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "https"),
        (":authority", host),
        (":path", "/echo"),
        ("cookie", cookie),
    ]


H2_ATTACKS = {
    # A header an HTTP/1.1 hop would read as two: the smuggled request in a value.
    "crlf_in_value": [("x-evil", "a\r\n\r\n" + SMUGGLED.decode())],
    "lf_in_value": [("x-evil", "a\nTransfer-Encoding: chunked")],
    # Connection-specific headers are forbidden in HTTP/2 (RFC 9113 8.2.2).
    "transfer_encoding": [("transfer-encoding", "chunked")],
    "connection": [("connection", "keep-alive, content-length")],
    # A Content-Length the DATA frames contradict.
    "content_length_short": [("content-length", "4")],
    "uppercase_name": [("Content-Length", "4")],
}


@pytest.mark.parametrize("case", list(H2_ATTACKS))
def test_hostile_http2_frames_never_reach_the_dev_server_as_two_requests(
    tls_target: tuple[ProxyEnv, str, str], recorder: Upstream, case: str
) -> None:
    env, host, cookie = tls_target
    before = len(seen(recorder))
    body = b"abcd" + SMUGGLED
    events = h2_request(env, host, base(host, cookie) + H2_ATTACKS[case], body)
    statuses = [
        dict(e.headers).get(":status") for e in events if isinstance(e, h2events.ResponseReceived)
    ]
    refused = any(
        isinstance(e, h2events.StreamReset | h2events.ConnectionTerminated) for e in events
    )
    assert refused or statuses in (["400"], []), (case, events)
    records = seen(recorder)[before:]
    # Nothing, or the one request with its body whole: never a second one.
    assert all(r["url"] == "/echo" and r["bytes"] == len(body) for r in records), records
    assert len(records) <= 1
    victim_over_h2(env, host, cookie, case)
    assert_nothing_smuggled(recorder, before)


def test_tokens_and_cookies_over_http2(tls_target: tuple[ProxyEnv, str, str]) -> None:
    env, _, cookie = tls_target
    other = env.session("127.0.0.1:9", user="bob")
    value = cookie.split("=", 1)[1]
    with env.client(other) as client:
        # Alice's cookie value under bob's preview's name, a forged token, a stale one.
        stolen = client.get("/", headers={"cookie": f"__Host-pv_{other}={value}"})
        assert (stolen.status_code, stolen.http_version) == (401, "HTTP/2")
        assert stolen.json()["error"] == "unauthorized"
        assert value not in stolen.text
        for token in ("x" * 5000, "a.b.c", env.token(other, user="alice")):
            refused = client.get("/", params={"preview_token": token})
            assert refused.status_code in (401, 429), refused.text
            assert token not in refused.text
    assert value not in env.gateway.log()
