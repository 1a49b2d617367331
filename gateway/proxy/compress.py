"""Compressing what dev servers send uncompressed (PREVIEW_COMPRESS).

Vite and most dev servers send JavaScript, CSS, HTML, JSON and SVG as they are: over a
remote link that is several times the bytes. For a client that accepts it, such a
response is compressed on the way, zstd when offered, else gzip, chunk by chunk (each
chunk flushed, so a streamed response is not held back). Never: a body that already has
a Content-Encoding, an event stream (each event must arrive when sent), a partial
response, a HEAD or a bodiless status, or anything under MIN_BYTES by its
Content-Length. A compressed response loses Content-Length (its framing is the stream's),
its ETag becomes weak (the bytes differ) and gets ``Vary: Accept-Encoding``.

What it costs is CPU on the gateway's event loop: bench/bench_pageload.py measures it.
Most modules arrive whole in one piece: those are compressed in one call by one shared
compressor (zstd's frame then states the size, so the browser's decoder sizes its window
to it). Only a body in several pieces gets a stream of its own: a zstd stream of unknown
size allocated megabytes of tables per response (and the browser's decoder as much), at
100 concurrent streams the gateway's CPU and memory went there. Level 1: at a 8 KiB
module a fifth less CPU than level 3 for 3% more bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import zstandard

from gateway.asgi_types import Scope, header

TEXT_TYPES = (
    b"text/html",
    b"text/css",
    b"text/javascript",
    b"text/plain",
    b"application/javascript",
    b"application/json",
    b"application/manifest+json",
    b"image/svg+xml",
)
MIN_BYTES = 1024
ZSTD_LEVEL = 1
GZIP_LEVEL = 5
# A stream's window at most (128 KiB, zstd's windowLog 17): what the browser allocates to
# decode it, and the context's tables here, are sized by it.
ZSTD_WINDOW_LOG = 17
_ZSTD_PARAMS = zstandard.ZstdCompressionParameters.from_level(
    ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG
)
# One-shot compressions only (a call never interleaves with another on one event loop).
_ONE_SHOT = zstandard.ZstdCompressor(compression_params=_ZSTD_PARAMS)

Compressor = Callable[[bytes, bool], bytes]


def encoding_for(scope: Scope) -> bytes | None:
    """The encoding this client accepts that we use: b"zstd", b"gzip" or None."""
    accepted = header(scope, b"accept-encoding")
    if not accepted:
        return None
    offered = {}
    for item in accepted.lower().split(b","):
        name, _, params = item.strip().partition(b";")
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.strip().partition(b"=")
            if key == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        offered[name.strip()] = q
    for encoding in (b"zstd", b"gzip"):
        if offered.get(encoding, 0.0) > 0:
            return encoding
    return None


def compressible(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    if status != 200:
        return False
    kind = b""
    for name, value in headers:
        if name in (b"content-encoding", b"content-range"):
            return False
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
        elif name == b"content-length" and value.isdigit() and int(value) < MIN_BYTES:
            return False
    return kind in TEXT_TYPES


def compressed_headers(
    headers: list[tuple[bytes, bytes]], encoding: bytes
) -> list[tuple[bytes, bytes]]:
    out = []
    vary = False
    for name, value in headers:
        if name == b"content-length":
            continue
        if name == b"etag" and not value.startswith(b"W/"):
            value = b"W/" + value
        if name == b"vary":
            vary = True
            if b"accept-encoding" not in value.lower():
                value += b", Accept-Encoding"
        out.append((name, value))
    if not vary:
        out.append((b"vary", b"Accept-Encoding"))
    out.append((b"content-encoding", encoding))
    return out


def compressor(encoding: bytes) -> Compressor:
    """compress(chunk, last) → the bytes to send now (each chunk flushed). A body given
    whole (its first chunk is its last) is compressed in one call."""
    stream: Compressor | None = None

    def compress(chunk: bytes, last: bool) -> bytes:
        nonlocal stream
        if stream is None:
            if last:
                if encoding == b"zstd":
                    return _ONE_SHOT.compress(chunk)
                return zlib.compress(chunk, GZIP_LEVEL, wbits=31)  # 31: a gzip wrapper
            stream = _stream(encoding)
        return stream(chunk, last)

    return compress


def _stream(encoding: bytes) -> Compressor:
    if encoding == b"zstd":
        zobj = zstandard.ZstdCompressor(compression_params=_ZSTD_PARAMS).compressobj()

        def zstd(chunk: bytes, last: bool) -> bytes:
            flush = (
                zstandard.COMPRESSOBJ_FLUSH_FINISH if last else zstandard.COMPRESSOBJ_FLUSH_BLOCK
            )
            return zobj.compress(chunk) + zobj.flush(flush)

        return zstd
    gobj = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)

    def gzip(chunk: bytes, last: bool) -> bytes:
        return gobj.compress(chunk) + gobj.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    return gzip
