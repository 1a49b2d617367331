"""PREVIEW_COMPRESS (on by default): uncompressed text from the dev server is compressed for
clients that accept it (zstd, else gzip), streamed; never an encoded body, an event
stream, a HEAD, or for a client that does not ask."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest
import zstandard

from gateway.proxy.compress import ZSTD_WINDOW_LOG, compressible
from tests.gateway.proxy_fixtures import ProxyEnv, Upstream, proxy_env, proxy_gateway, upstream
from tests.utils import RedisServer

__all__ = ["proxy_env", "upstream"]


@pytest.fixture(scope="module")
def compressing(redis_server: RedisServer) -> Iterator[ProxyEnv]:
    with proxy_gateway(redis_server, compress=True) as env:
        yield env


def raw_get(
    env: ProxyEnv, sid: str, path: str, accept: str | None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    with env.login(sid) as client:
        headers = {"accept-encoding": accept} if accept is not None else {"accept-encoding": ""}
        with client.stream(method, path, headers=headers) as response:
            body = b"".join(response.iter_raw())
            return response.status_code, dict(response.headers), body


def expected_module(kb: int) -> bytes:
    return b"".join(b'export const v%d = "%s";\n' % (i, b"x" * 1000) for i in range(kb))


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [("gzip, deflate, br, zstd", "zstd"), ("gzip", "gzip"), ("zstd;q=0, gzip;q=0.5", "gzip")],
)
def test_text_is_compressed_for_clients_that_accept_it(
    compressing: ProxyEnv, upstream: Upstream, accept: str, encoding: str
) -> None:
    sid = compressing.session(upstream.address)
    status, headers, body = raw_get(compressing, sid, "/module.js?kb=200", accept)
    assert status == 200
    assert headers["content-encoding"] == encoding
    assert "content-length" not in headers
    assert headers["etag"] == 'W/"m1"' and "accept-encoding" in headers["vary"].lower()
    plain = (
        zstandard.ZstdDecompressor().decompressobj().decompress(body)
        if encoding == "zstd"
        else gzip.decompress(body)
    )
    assert plain == expected_module(200)
    assert len(body) < len(plain) / 10


def test_a_whole_module_is_one_frame_of_its_size_and_a_stream_has_a_small_window(
    compressing: ProxyEnv, upstream: Upstream
) -> None:
    """A module the dev server sends whole is compressed in one call: the zstd frame
    states its size (the browser's decoder needs no more); a streamed one has a window
    of ZSTD_WINDOW_LOG at most, not zstd's megabytes for a stream of unknown size."""
    sid = compressing.session(upstream.address)
    _, headers, whole = raw_get(compressing, sid, "/module.js?kb=8&whole=1", "zstd")
    assert headers["content-encoding"] == "zstd"
    assert zstandard.ZstdDecompressor().decompress(whole) == expected_module(8)
    assert zstandard.get_frame_parameters(whole).content_size == len(expected_module(8))
    _, headers, streamed = raw_get(compressing, sid, "/module.js?kb=300", "zstd")
    assert headers["content-encoding"] == "zstd"
    params = zstandard.get_frame_parameters(streamed)
    assert params.window_size <= 1 << ZSTD_WINDOW_LOG
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(streamed)
    assert plain == expected_module(300)
    _, headers, gzipped = raw_get(compressing, sid, "/module.js?kb=8&whole=1", "gzip")
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(gzipped) == expected_module(8)


@pytest.mark.parametrize(
    ("path", "accept", "method"),
    [
        ("/module.js?kb=200", None, "GET"),  # the client did not ask
        ("/gzip", "gzip, zstd", "GET"),  # encoded by the dev server already
        ("/events", "gzip, zstd", "GET"),  # an event stream: each event when sent
        ("/big?mb=1", "gzip, zstd", "GET"),  # not text
        ("/module.js?kb=200", "gzip, zstd", "HEAD"),
    ],
)
def test_left_as_the_dev_server_sent_it(
    compressing: ProxyEnv, upstream: Upstream, path: str, accept: str | None, method: str
) -> None:
    sid = compressing.session(upstream.address)
    status, headers, body = raw_get(compressing, sid, path, accept, method)
    assert status == 200
    assert headers.get("content-encoding") in (None, "gzip" if path == "/gzip" else None)
    if path == "/events":
        assert body == b"data: first\n\ndata: second\n\n"
    if path == "/gzip":
        assert gzip.decompress(body) == b"compressed body"


def test_on_by_default_and_off_when_set_to_0(
    redis_server: RedisServer, proxy_env: ProxyEnv, upstream: Upstream
) -> None:
    sid = proxy_env.session(upstream.address)
    status, headers, _ = raw_get(proxy_env, sid, "/module.js?kb=4", "gzip, zstd")
    assert status == 200 and headers["content-encoding"] == "zstd"
    with proxy_gateway(redis_server, compress=False) as plain:
        sid = plain.session(upstream.address)
        status, headers, body = raw_get(plain, sid, "/module.js?kb=4", "gzip, zstd")
    assert status == 200 and "content-encoding" not in headers
    assert body == expected_module(4)


def test_what_is_worth_compressing() -> None:
    js = (b"content-type", b"text/javascript; charset=utf-8")
    assert compressible(200, [js])
    assert not compressible(200, [js, (b"content-length", b"100")])  # under 1 KiB
    assert not compressible(206, [js, (b"content-range", b"bytes 0-99/5000")])
    assert not compressible(304, [js])
    assert not compressible(200, [(b"content-type", b"image/png")])
