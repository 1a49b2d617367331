"""HTTP reverse proxy to one preview's dev server, as a raw ASGI handler.

Streams both ways, strips hop-by-hop headers (and the ones `Connection` names), sets
X-Forwarded-*, removes our auth cookie and never decompresses. Upstream refusals are retried
briefly (a dev server that has just become ready may still be binding), then 502; upstream
silence is 504. Browsers get a small HTML page, API clients JSON.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from gateway.asgi_types import Receive, Scope, Send, header
from gateway.proxy.compress import compressed_headers, compressible, compressor, encoding_for
from gateway.proxy.cookies import strip_ours, upstream_set_cookie
from gateway.proxy.pages import error_page
from gateway.proxy.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamRefused,
    UpstreamResponse,
    UpstreamTimeout,
    serialize_head,
)

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# Replaced by us (Host, X-Forwarded-*) or never passed on (Expect: we do not relay 100s).
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
}
REFUSED_RETRIES = (0.1, 0.25, 0.5)
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


class AmbiguousFraming(ValueError):
    """The request's body length can be read two ways (request smuggling)."""


def upstream_headers(
    scope: Scope, public_host: bytes, public_scheme: str = "http"
) -> tuple[list[tuple[bytes, bytes]], bool, bool]:
    """Headers for the upstream request; (headers, has_body, chunked). The Cookie header
    keeps only the dev server's own cookies (``strip_ours``).

    Content-Length together with Transfer-Encoding is refused (RFC 9112 6.3 lets a server
    reject it): h11 frames the body by the chunks, a dev server given the Content-Length
    would not, and the difference is a request smuggled onto a pooled connection. And
    `Connection` may not name Content-Length: dropping it would unframe the body.
    """
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    named = _connection_tokens(raw)
    named.discard(b"content-length")
    out: list[tuple[bytes, bytes]] = [(b"host", public_host)]
    has_length = framed = chunked = False
    for name, value in raw:
        if name in _REQUEST_DROP or name in named:
            if name == b"transfer-encoding":
                chunked = True
            continue
        if name == b"content-length":
            framed = True
            has_length = value != b"0"
        elif name == b"cookie":
            value = strip_ours(value)
            if not value:
                continue
        out.append((name, value))
    if chunked and framed:
        raise AmbiguousFraming("Content-Length and Transfer-Encoding together are ambiguous")
    if not framed and scope.get("http_version") == "2" and scope["method"] not in _NO_BODY:
        # HTTP/2 frames a body by its DATA frames and may send it without Content-Length
        # (a streamed upload): the dev server gets it chunked. (h2 itself refused any
        # Transfer-Encoding and a Content-Length its DATA frames contradict.)
        chunked = True
    client = scope.get("client")
    if client:
        out.append((b"x-forwarded-for", client[0].encode()))
    # The scheme of the preview's public URL (a TLS proxy in front may reach us in http).
    https = scope.get("scheme") == "https" or public_scheme == "https"
    out.append((b"x-forwarded-proto", b"https" if https else b"http"))
    out.append((b"x-forwarded-host", public_host))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    return out, has_length or chunked, chunked


# Hop-by-hop, plus Date: hypercorn adds its own, and two Date headers confuse caches.
_RESPONSE_DROP = HOP_BY_HOP | {b"date"}


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = _connection_tokens(headers)
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP or lower in named:
            continue
        if lower == b"set-cookie":
            kept = upstream_set_cookie(value)  # host-only, never one of ours
            if kept is None:
                continue
            value = kept
        out.append((lower, value))
    return out


def target(scope: Scope) -> bytes:
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    if not path.startswith(b"/") and path != b"*":
        # Absolute form ("GET http://elsewhere/x"): the dev server gets the path only; its
        # host is the preview's, never one the client names.
        path = urlsplit(path).path
        if not path.startswith(b"/"):
            path = b"/" + path
    query: bytes = scope.get("query_string", b"")
    return path + b"?" + query if query else path


class ClientGone(UpstreamError):
    """The client stopped sending (or broke the framing of) its body midway."""


async def request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the request body ended early")
        chunk: bytes = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def wants_html(scope: Scope) -> bool:
    return b"text/html" in (header(scope, b"accept") or b"")


async def proxy_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    pool: UpstreamPool,
    address: str,
    public_host: bytes,
    public_scheme: str = "http",
    compress: bool = False,
) -> int:
    """Relay one request to `address`; returns the status sent to the client. With
    `compress`, uncompressed text bodies are compressed for clients that accept it."""
    try:
        headers, has_body, chunked = upstream_headers(scope, public_host, public_scheme)
    except AmbiguousFraming as exc:
        close = [(b"connection", b"close")]
        return await error_page(scope, send, 400, "bad_request", str(exc), False, close)
    method: bytes = scope["method"].encode()
    head = serialize_head(method, target(scope), headers)
    body = request_body(receive) if has_body else None
    try:
        response = await _send_with_retry(pool, address, head, body, chunked, method == b"HEAD")
    except ClientGone as exc:  # the client's fault, not the dev server's: no 502
        return await error_page(scope, send, 400, "bad_request", str(exc), False)
    except UpstreamError as exc:
        # The address is for our log only: upstream errors' messages never hold it, and
        # the page says what happened in the dev server's terms.
        log.info("upstream failed address=%s: %s", address, exc)
        status, error = 502, "upstream_error"
        if isinstance(exc, UpstreamTimeout):
            status, error = 504, "upstream_timeout"
        elif isinstance(exc, UpstreamRefused):
            error = "upstream_refused"
        return await error_page(scope, send, status, error, str(exc), wants_html(scope))
    try:
        headers = response_headers(response.headers)
        encode = None
        encoding = encoding_for(scope) if compress and method != b"HEAD" else None
        if encoding is not None and compressible(response.status, headers):
            headers, encode = compressed_headers(headers, encoding), compressor(encoding)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        # One chunk behind, so the last one goes out with more_body=False: a small module
        # costs hypercorn two sends, not three.
        pending = b""
        try:
            async for chunk in response.body():
                if pending:
                    data = encode(pending, False) if encode else pending
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                pending = chunk
        except UpstreamError as exc:
            # Headers are out: the response is left unended, and hypercorn_compat cuts the
            # connection (HTTP/1.1) or resets the stream (HTTP/2), so the client sees a
            # broken transfer rather than a short body that looks whole.
            log.info("upstream broke mid-response address=%s: %s", address, exc)
            return response.status
        data = encode(pending, True) if encode else pending
        await send({"type": "http.response.body", "body": data, "more_body": False})
    finally:
        response.release()
    return response.status


async def _send_with_retry(
    pool: UpstreamPool,
    address: str,
    head: bytes,
    body: AsyncIterator[bytes] | None,
    chunked: bool,
    head_only: bool,
) -> UpstreamResponse:
    for delay in (*REFUSED_RETRIES, None):
        try:
            return await pool.request(address, head, body, chunked, head_only)
        except UpstreamRefused:
            # Refused happens at connect, before any body byte is read: safe to retry.
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
