"""The gateway's own TLS listener: HTTP/2 and HTTP/1.1 by ALPN for previews and the API,
beside the plain http listener; the run script's local CA; clear answers to plain http on
the TLS port and clear start-up errors for a bad certificate or key."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.events as h2events
import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection, TextMessage

from shared.settings import Settings
from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_gateway, upstream
from tests.gateway.test_proxy_ws import WsUpstream, cookie_for, ws_upstream
from tests.gateway.tls_fixtures import TlsFiles, make_local_tls, tls_files
from tests.utils import ROOT, RedisServer, free_port

__all__ = ["tls_files", "upstream", "ws_upstream"]


@pytest.fixture(scope="module")
def tls_env(redis_server: RedisServer, tls_files: TlsFiles) -> Iterator[ProxyEnv]:
    with proxy_gateway(redis_server, tls=tls_files) as env:
        yield env


def test_the_run_script_makes_its_ca_and_certificate_once(tmp_path: Path) -> None:
    first = make_local_tls(tmp_path)
    assert "creating a local certificate authority" in first.stderr
    files = TlsFiles(tmp_path)
    made = {p: p.stat().st_mtime_ns for p in (files.ca, files.cert, files.key)}
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca), str(files.cert)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(files.cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:*.preview.localhost" in names and "DNS:localhost" in names

    again = make_local_tls(tmp_path)  # idempotent: nothing is made twice
    assert "creating" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in made} == made

    # Another preview domain: a new certificate from the same CA.
    other = make_local_tls(tmp_path, PREVIEW_DOMAIN="previews.example.test")
    assert "creating a local certificate authority" not in other.stderr
    assert files.ca.stat().st_mtime_ns == made[files.ca]
    assert files.cert.stat().st_mtime_ns != made[files.cert]


def test_tls_turns_preview_urls_to_https() -> None:
    env = {"PREVIEW_TLS_CERT": "/c.pem", "PREVIEW_TLS_KEY": "/k.pem"}
    settings = Settings.from_env({**env, "PREVIEW_TLS_BIND": "0.0.0.0:9443"})
    assert (settings.preview_scheme, settings.preview_port) == ("https", 9443)
    plain = Settings.from_env({"PREVIEW_BIND": "127.0.0.1:8181"})
    assert (plain.preview_scheme, plain.preview_port) == ("http", 8080)  # as before
    # Behind a TLS proxy (an explicit scheme and port) nothing is derived.
    behind = Settings.from_env({"PREVIEW_PREVIEW_SCHEME": "https", "PREVIEW_PREVIEW_PORT": "0"})
    assert (behind.preview_scheme, behind.preview_port) == ("https", 0)


def test_previews_and_the_api_over_http2(tls_env: ProxyEnv, upstream: Upstream) -> None:
    sid = tls_env.session(upstream.address)
    with tls_env.client(sid) as first:
        login = first.get("/", params={"preview_token": tls_env.token(sid)})
    assert login.http_version == "HTTP/2"
    assert login.status_code == 302, login.text
    cookie = login.headers["set-cookie"]
    assert cookie.startswith("__Host-pv_") and "Secure" in cookie and "SameSite=None" in cookie
    with tls_env.login(sid) as client:
        page = client.get("/")
        assert page.http_version == "HTTP/2"
        assert "hello from the dev server" in page.text
        seen = client.get("/headers").json()["headers"]
        assert seen["x-forwarded-proto"] == "https"
        assert seen["host"] == tls_env.host(sid)
        # A body without Content-Length (HTTP/2 frames it by DATA frames) arrives whole.
        body = b"x" * 300_000
        echoed = client.post("/echo", content=iter([body[:100_000], body[100_000:]])).json()
        assert echoed["bytes"] == len(body) and echoed["te"] == "chunked"
    with httpx.Client(verify=tls_env.ssl_context(), http2=True) as api:
        health = api.get(f"https://localhost:{tls_env.port}/healthz")
        assert (health.status_code, health.http_version) == (200, "HTTP/2")
    # The plain listener still serves the same preview.
    plain = httpx.get(
        f"{tls_env.gateway.url}/?preview_token={tls_env.token(sid)}",
        headers={"host": f"{sid}.preview.localhost:{tls_env.gateway.port}"},
    )
    assert plain.status_code == 302 and plain.http_version == "HTTP/1.1"


def test_http11_when_the_client_offers_only_that(tls_env: ProxyEnv, upstream: Upstream) -> None:
    sid = tls_env.session(upstream.address)
    with tls_env.client(sid, http2=False) as first:
        login = first.get("/", params={"preview_token": tls_env.token(sid)})
    assert (login.status_code, login.http_version) == (302, "HTTP/1.1")


def test_plain_http_to_the_tls_port_is_told_so(tls_env: ProxyEnv) -> None:
    answer = httpx.get(f"http://127.0.0.1:{tls_env.port}/v1/previews", timeout=10)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "https_required",
        "detail": "this port speaks HTTPS (TLS): use an https:// URL",
    }
    # Neither garbage nor a silent connection holds the listener: others are served.
    with socket.create_connection(("127.0.0.1", tls_env.port), 10):
        with socket.create_connection(("127.0.0.1", tls_env.port), 10) as garbage:
            garbage.sendall(b"\x16\x03\x01\x00\x05hello")
            garbage.recv(100)
            with httpx.Client(verify=tls_env.ssl_context(), http2=True) as api:
                assert api.get(f"https://localhost:{tls_env.port}/healthz").status_code == 200


def test_a_client_that_does_not_trust_the_certificate_fails_the_handshake(
    tls_env: ProxyEnv,
) -> None:
    context = ssl.create_default_context()  # the system's CAs only
    with socket.create_connection(("127.0.0.1", tls_env.port), 10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="x.preview.localhost")
    # A name the certificate does not cover is refused by the client too.
    strict = ssl.create_default_context(cafile=tls_env.tls_ca)
    with socket.create_connection(("127.0.0.1", tls_env.port), 10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            strict.wrap_socket(raw, server_hostname="evil.example")


def bad_files(tmp_path: Path, tls: TlsFiles) -> dict[str, tuple[str, str, str]]:
    """case → (cert, key, what the error names)."""
    other_key = tmp_path / "other.key"
    subprocess.run(
        ["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(other_key)],
        check=True,
        capture_output=True,
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    cert, key = str(tls.cert), str(tls.key)
    return {
        "missing": ("/nonexistent/cert.pem", key, "PREVIEW_TLS_CERT: cannot read /nonexistent"),
        "key_as_cert": (key, key, f"PREVIEW_TLS_CERT: {key} holds no PEM certificate"),
        "cert_as_key": (cert, cert, f"PREVIEW_TLS_KEY: {cert} holds no PEM private key"),
        "mismatch": (cert, str(other_key), f"the key {other_key} does not match"),
        "not_a_certificate": (str(junk), key, f"{junk}"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "key_as_cert", "cert_as_key", "mismatch", "not_a_certificate"]
)
def test_a_bad_certificate_or_key_stops_the_start_naming_the_file(
    tmp_path: Path, tls_files: TlsFiles, case: str
) -> None:
    cert, key, named = bad_files(tmp_path, tls_files)[case]
    port = free_port()
    env = {
        **os.environ,
        "PREVIEW_BIND": f"127.0.0.1:{free_port()}",
        "PREVIEW_TLS_BIND": f"127.0.0.1:{port}",
        "PREVIEW_TLS_CERT": cert,
        "PREVIEW_TLS_KEY": key,
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(OSError):  # nothing was bound
        socket.create_connection(("127.0.0.1", port), 1).close()


async def test_hmr_websocket_over_http2_extended_connect(
    tls_env: ProxyEnv, ws_upstream: WsUpstream
) -> None:
    """RFC 8441: a WebSocket on an HTTP/2 stream (what Chromium opens on an h2 connection
    whose server allows it) is relayed like an HTTP/1.1 upgrade: subprotocol, messages
    both ways, the close code and reason."""
    sid = tls_env.session(ws_upstream.address)
    host = tls_env.host(sid)
    cookie = cookie_for(tls_env, sid)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        tls_env.port,
        ssl=tls_files_context(tls_env, ("h2",)),
        server_hostname=host.rsplit(":", 1)[0],
    )
    h2c = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    h2c.initiate_connection()
    events: list[Any] = []

    async def until(kind: type, stream_ended: bool = False) -> Any:
        while True:
            writer.write(h2c.data_to_send())
            await writer.drain()
            for event in events:
                if isinstance(event, kind):
                    events.remove(event)
                    return event
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the gateway closed the connection"
            for event in h2c.receive_data(data):
                if isinstance(event, h2events.DataReceived):
                    h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                events.append(event)

    settings = await until(h2events.RemoteSettingsChanged)
    assert settings.changed_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL].new_value == 1
    h2c.send_headers(
        1,
        [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/hmr?x=1"),
            (":authority", host),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "vite-hmr"),
            ("origin", f"https://{host}"),
            ("cookie", cookie),
        ],
    )
    response = await until(h2events.ResponseReceived)
    head = dict(response.headers)
    assert head[":status"] == "200", head
    assert head["sec-websocket-protocol"] == "vite-hmr"
    ws = WsConnection(ConnectionType.CLIENT)

    async def receive() -> Any:
        while True:
            for message in ws.events():
                return message
            data = await until(h2events.DataReceived)
            ws.receive_data(data.data)

    h2c.send_data(1, ws.send(TextMessage("hello over h2")))
    assert (await receive()).data == "hello over h2"
    h2c.send_data(1, ws.send(CloseConnection(4002, "later")))
    closed = await receive()
    assert isinstance(closed, CloseConnection)
    writer.write(h2c.data_to_send())
    await writer.drain()
    await wait_for(lambda: (4002, "later") in ws_upstream.closes, "close code at the upstream")
    assert ws_upstream.hosts[-1] == host
    writer.close()


def tls_files_context(env: ProxyEnv, alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = env.ssl_context()
    context.set_alpn_protocols(list(alpn))
    return context


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)
