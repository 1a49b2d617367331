"""Hostile HTTP against the preview proxy, over raw sockets: CRLF injection in forwarded
headers and the path, and request smuggling (conflicting Content-Length/Transfer-Encoding,
obfuscated chunked, bad chunk sizes). The upstream is a real Node server that records every
request it parsed; after each attack a victim's request goes through the same pooled
upstream connection, so a smuggled request would show up in the record or in the victim's
answer."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httptools
import httpx
import pytest

from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_env, spawn_upstream
from tests.utils import free_port

__all__ = ["proxy_env"]

# A dev server that records what its parser (llhttp, as in every Node dev server) saw.
RECORDER = r"""
const http = require('http');
const seen = [];
http.createServer((req, res) => {
  if (req.url === '/__seen') {
    res.writeHead(200, {'content-type': 'application/json'});
    return res.end(JSON.stringify(seen));
  }
  let bytes = 0;
  req.on('data', (d) => { bytes += d.length; });
  req.on('end', () => {
    seen.push({method: req.method, url: req.url, headers: req.rawHeaders, bytes});
    res.writeHead(200, {'content-type': 'application/json'});
    res.end(JSON.stringify({url: req.url, bytes}));
  });
}).on('clientError', (err, sock) => {
  seen.push({error: err.code || String(err)});
  sock.destroy();
}).listen(+process.argv[1], '127.0.0.1');
"""
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
ABORTED = "HPE_INVALID_EOF_STATE"


@pytest.fixture(scope="module")
def recorder() -> Iterator[Upstream]:
    port = free_port()
    upstream = spawn_upstream(
        ["node", "-e", RECORDER, str(port)], port, "/__seen", "recording upstream"
    )
    yield upstream
    upstream.process.kill()
    upstream.process.wait()


def seen(upstream: Upstream) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"http://{upstream.address}/__seen").json()
    return found


@pytest.fixture(scope="module")
def target(proxy_env: ProxyEnv, recorder: Upstream) -> tuple[ProxyEnv, str, str]:
    """(env, preview host, cookie header) of a ready preview served by the recorder."""
    sid = proxy_env.session(recorder.address)
    with proxy_env.login(sid) as client:
        cookie = str(client.headers["cookie"])
    return proxy_env, proxy_env.host(sid), cookie


def exchange(port: int, raw: bytes, timeout: float = 10.0, eof: bool = False) -> bytes:
    """Send raw bytes (then end our side if `eof`); read one response, to its end by its
    own framing or until the gateway closes. Empty: the connection was closed unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(raw)
        if eof:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """One response from `sock`, to its end by its own framing or until it closes."""
    done: list[bool] = []

    class Ended:
        def on_message_complete(self) -> None:
            done.append(True)

    parser = httptools.HttpResponseParser(Ended())
    chunks = []
    try:
        while not done and (data := sock.recv(65536)):
            chunks.append(data)
            parser.feed_data(data)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def body_of(answer: bytes) -> Any:
    """The JSON body of one (possibly chunked) response."""
    parts: list[bytes] = []

    class Collect:
        def on_body(self, body: bytes) -> None:
            parts.append(body)

    httptools.HttpResponseParser(Collect()).feed_data(answer)
    return json.loads(b"".join(parts))


def head(host: str, cookie: str, path: str = "/echo", method: str = "POST") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n".encode()


def victim_gets_own_answer(env: ProxyEnv, host: str, cookie: str, marker: str) -> None:
    """A normal request after the attack is answered for itself (the upstream connection
    the attack used is the one the pool hands out next)."""
    for _ in range(3):
        answer = httpx.get(
            f"{env.gateway.url}/victim-{marker}", headers={"host": host, "cookie": cookie}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["url"] == f"/victim-{marker}"


def assert_nothing_smuggled(upstream: Upstream, since: int) -> None:
    """No smuggled request, and no parse error but a request cut short (a body the gateway
    refused mid-stream is abandoned: HPE_INVALID_EOF_STATE, never a second request)."""
    records = seen(upstream)[since:]
    assert not [r for r in records if "smuggled" in str(r.get("url", ""))], records
    assert not [r for r in records if r.get("error", ABORTED) != ABORTED], records


CONFLICTS = {
    # Content-Length shorter than the chunked body: the rest would be a second request.
    "cl_short_te_chunked": (
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        b"%x\r\n%b\r\n0\r\n\r\n" % (len(b"abcd" + SMUGGLED), b"abcd" + SMUGGLED),
    ),
    "te_first_then_cl": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        b"%x\r\n%b\r\n0\r\n\r\n" % (len(b"xyz" + SMUGGLED), b"xyz" + SMUGGLED),
    ),
    # Content-Length longer than the body: the next request would become its tail.
    "cl_long_te_chunked": (
        b"Content-Length: 300\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        b"3\r\nabc\r\n0\r\n\r\n",
    ),
    "cl_zero_te_chunked": (
        b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
    ),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_content_length_with_transfer_encoding_is_refused(
    target: tuple[ProxyEnv, str, str], recorder: Upstream, case: str
) -> None:
    env, host, cookie = target
    before = len(seen(recorder))
    headers, body = CONFLICTS[case]
    answer = exchange(env.gateway.port, head(host, cookie) + headers + body)
    assert status_of(answer) == 400, answer[:300]
    assert b'"error": "bad_request"' in answer
    assert len(seen(recorder)) == before  # refused before the upstream saw anything
    victim_gets_own_answer(env, host, cookie, case)
    assert_nothing_smuggled(recorder, before)


BAD_FRAMING = {
    "double_cl_conflicting": b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    "cl_list_conflicting": b"Content-Length: 4, 40\r\n\r\nabcd",
    "cl_signed": b"Content-Length: +4\r\n\r\nabcd",
    "cl_hex": b"Content-Length: 0x4\r\n\r\nabcd",
    "te_chunked_identity": b"Transfer-Encoding: chunked, identity\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    "te_identity_chunked": b"Transfer-Encoding: identity, chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    "te_xchunked": b"Transfer-Encoding: xchunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    "te_twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_vertical_tab": b"Transfer-Encoding:\x0bchunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    "te_space_before_colon": b"Transfer-Encoding : chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    "chunk_size_negative": b"Transfer-Encoding: chunked\r\n\r\n-1\r\nabcd\r\n0\r\n\r\n",
    "chunk_size_0x": b"Transfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n",
    # A chunk the client never finishes: it hangs up instead.
    "chunk_size_huge": b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\nabcd\r\n",
    "chunk_size_not_hex": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
    "chunk_too_long_for_size": b"Transfer-Encoding: chunked\r\n\r\n2\r\nabcd" + SMUGGLED,
    "header_bare_cr": b"X-Evil: a\rInjected: 1\r\n\r\n",
    "header_nul": b"X-Evil: a\x00b\r\n\r\n",
    "header_name_space": b"X Evil: a\r\n\r\n",
}


@pytest.mark.parametrize("case", list(BAD_FRAMING))
def test_malformed_framing_is_refused_before_the_upstream(
    target: tuple[ProxyEnv, str, str], recorder: Upstream, case: str
) -> None:
    env, host, cookie = target
    before = len(seen(recorder))
    raw = head(host, cookie) + b"Connection: close\r\n" + BAD_FRAMING[case]
    answer = exchange(env.gateway.port, raw, eof=case == "chunk_size_huge")
    # h11 refuses these itself: 400, or 501 for a transfer coding it does not implement;
    # an empty answer (connection closed) is a refusal too.
    assert answer == b"" or status_of(answer) in (400, 501), answer[:300]
    # The upstream got no complete request (at most one cut short by the refusal).
    assert not [r for r in seen(recorder)[before:] if "url" in r], seen(recorder)[before:]
    victim_gets_own_answer(env, host, cookie, case)
    assert_nothing_smuggled(recorder, before)


def test_lenient_but_unambiguous_framing_is_normalised(
    target: tuple[ProxyEnv, str, str], recorder: Upstream
) -> None:
    """Whitespace around chunked, equal duplicate lengths and an obs-folded header are
    understood one way only and reach the upstream as one clean request."""
    env, host, cookie = target
    start = len(seen(recorder))
    cases = {
        "/ows": b"Transfer-Encoding:  chunked \r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        "/upper": b"Transfer-Encoding: CHUNKED\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        "/same-cl": b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        "/ext": b"Transfer-Encoding: chunked\r\n\r\n4;name=value\r\nabcd\r\n0\r\n\r\n",
    }
    for path, rest in cases.items():
        before = len(seen(recorder))
        raw = head(host, cookie, path) + b"Connection: close\r\n" + rest
        answer = exchange(env.gateway.port, raw)
        assert status_of(answer) == 200, (path, answer[:300])
        assert body_of(answer) == {"url": path, "bytes": 4}, path
        assert len(seen(recorder)) == before + 1
    assert_nothing_smuggled(recorder, start)


def test_connection_cannot_strip_the_content_length(
    target: tuple[ProxyEnv, str, str], recorder: Upstream
) -> None:
    """`Connection: content-length` (hop-by-hop abuse) must not drop the body's framing."""
    env, host, cookie = target
    before = len(seen(recorder))
    raw = head(host, cookie, "/hop") + (
        b"Connection: close, content-length\r\nContent-Length: 4\r\n\r\nabcd"
    )
    answer = exchange(env.gateway.port, raw)
    assert status_of(answer) == 200, answer[:300]
    assert body_of(answer) == {"url": "/hop", "bytes": 4}
    victim_gets_own_answer(env, host, cookie, "hop")
    assert_nothing_smuggled(recorder, before)


def test_crlf_cannot_inject_headers_upstream(
    target: tuple[ProxyEnv, str, str], recorder: Upstream
) -> None:
    env, host, cookie = target
    port = env.gateway.port
    start = len(seen(recorder))
    # Encoded CR LF in the path and query stay encoded: no header appears upstream.
    path = "/p%0d%0aX-Injected:%20path?q=%0d%0aX-Injected:%20query"
    answer = exchange(port, head(host, cookie, path, "GET") + b"Connection: close\r\n\r\n")
    assert status_of(answer) == 200, answer[:300]
    last = seen(recorder)[-1]
    assert last["url"] == path
    names = [n.lower() for n in last["headers"][::2]]
    assert "x-injected" not in names
    # Raw CR/LF in the request line, Host and forwarded headers never get through.
    attacks = [
        f"GET /a\rX-Injected: 1 HTTP/1.1\r\nHost: {host}\r\n".encode(),
        f"GET /a HTTP/1.1\r\nHost: {host}\rX-Injected: 1\r\n".encode(),
        head(host, cookie, "/a", "GET") + b"X-Forwarded-Host: evil\rX-Injected: 1\r\n",
        head(host, cookie, "/a", "GET") + b"X-Forwarded-For: 1.2.3.4\r\x00X-Injected: 1\r\n",
        head(host, cookie, "/a", "GET") + b"X-Forwarded-Proto: https\n\rX-Injected: 1\r\n",
    ]
    before = len(seen(recorder))
    for raw in attacks:
        answer = exchange(port, raw + b"Connection: close\r\n\r\n")
        assert answer == b"" or status_of(answer) == 400, (raw, answer[:300])
    assert len(seen(recorder)) == before
    # Spoofed forwarding headers (and header-looking values) are replaced, not appended to.
    spoof = head(host, cookie, "/spoof", "GET") + (
        b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n"
        b"X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6;host=evil\r\n"
        b"X-Note: a%0d%0aX-Injected: 1\r\nConnection: close\r\n\r\n"
    )
    assert status_of(exchange(port, spoof)) == 200
    record = seen(recorder)[-1]
    pairs = list(zip(record["headers"][::2], record["headers"][1::2], strict=True))
    lowered = [(n.lower(), v) for n, v in pairs]
    assert ("x-forwarded-for", "127.0.0.1") in lowered
    assert ("x-forwarded-host", host) in lowered
    assert ("x-forwarded-proto", "http") in lowered
    assert ("host", host) in lowered
    assert "forwarded" not in [n for n, _ in lowered]
    assert [n for n, _ in lowered].count("x-forwarded-for") == 1
    assert "x-injected" not in [n for n, _ in lowered]
    assert_nothing_smuggled(recorder, start)


def test_request_target_reaches_the_upstream_in_origin_form(
    target: tuple[ProxyEnv, str, str], recorder: Upstream
) -> None:
    """An absolute-form target (a proxy request) or a second Host header cannot point the
    dev server elsewhere: it sees a path, and our Host."""
    env, host, cookie = target
    port = env.gateway.port
    start = len(seen(recorder))
    absolute = f"GET http://evil.example/abs?x=1 HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    answer = exchange(port, absolute.encode() + b"Connection: close\r\n\r\n")
    if status_of(answer) == 200:
        record = seen(recorder)[-1]
        assert record["url"] == "/abs?x=1", record
        assert (
            dict(zip(record["headers"][::2], record["headers"][1::2], strict=True))["host"] == host
        )
    else:
        assert status_of(answer) == 400, answer[:300]
    double = (
        head(host, cookie, "/double", "GET") + b"Host: evil.example\r\nConnection: close\r\n\r\n"
    )
    assert status_of(exchange(port, double)) == 400
    assert not [r for r in seen(recorder)[start:] if r.get("url") == "/double"]
    assert_nothing_smuggled(recorder, start)


def test_unread_request_bodies_do_not_wedge_the_connection(
    target: tuple[ProxyEnv, str, str],
) -> None:
    """A refusal that never reads the body (401 from the API, the smuggling 400) must still
    end the exchange: the keep-alive connection serves its next request, and one that
    asked to close is closed (hypercorn used to block on its full app queue)."""
    env, host, cookie = target
    port = env.gateway.port
    refused = (
        b"PUT /v1/previews/x/files HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: 12\r\n\r\n[null, null]"
    )
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        for _ in range(3):
            sock.sendall(refused)
            assert status_of(read_one(sock)) == 401
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status_of(read_one(sock)) == 200
    for body in (b"abcd", b"a" * (1 << 20)):
        raw = head(host, cookie) + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % 4
        raw += b"Connection: close\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            sock.sendall(raw)
            answer = b""
            while data := sock.recv(65536):  # to the close (a timeout fails the test)
                answer += data
        assert status_of(answer) == 400


def read_one(sock: socket.socket) -> bytes:
    """One response from a keep-alive connection, by its framing."""
    done: list[bool] = []

    class Ended:
        def on_message_complete(self) -> None:
            done.append(True)

    parser = httptools.HttpResponseParser(Ended())
    answer = b""
    while not done:
        data = sock.recv(65536)
        assert data, "connection closed"
        parser.feed_data(data)
        answer += data
    return answer
