"""A local stand-in for Sentry: a real HTTP server that receives the SDK's envelopes (the
DSN points at it), decompresses and parses them, and keeps the raw bytes for checks."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk

from tests.utils import serving, wait_until


@dataclass
class Envelope:
    raw: bytes
    items: list[tuple[dict[str, Any], Any]]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [payload for header, payload in self.items if header.get("type") == "event"]


@dataclass
class SentryEndpoint:
    port: int
    envelopes: list[Envelope] = field(default_factory=list)

    def dsn(self, project: int = 42) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/{project}"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for envelope in self.envelopes for event in envelope.events]

    @property
    def raw(self) -> bytes:
        return b"\n".join(e.raw for e in self.envelopes)

    def wait_events(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        sentry_sdk.flush(timeout=5)
        wait_until(lambda: len(self.events) >= count, timeout, f"{count} Sentry events")
        return self.events


def parse(raw: bytes) -> Envelope:
    """Envelope: a header line, then items of a header line and a payload (of the
    header's `length`, or up to the next newline)."""

    def line_at(pos: int) -> tuple[bytes, int]:
        end = raw.find(b"\n", pos)
        end = len(raw) if end == -1 else end
        return raw[pos:end], end + 1

    items = []
    _, pos = line_at(0)
    while pos < len(raw):
        line, pos = line_at(pos)
        if not line.strip():
            continue
        header = json.loads(line)
        length = header.get("length")
        if length is None:
            body, pos = line_at(pos)
        else:
            body, pos = raw[pos : pos + length], pos + length + 1
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body
        items.append((header, payload))
    return Envelope(raw, items)


def decode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    return body


@pytest.fixture
def sentry_endpoint() -> Iterator[SentryEndpoint]:
    received: list[Envelope] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            raw = decode(body, self.headers.get("content-encoding", ""))
            received.append(parse(raw))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        try:
            yield SentryEndpoint(server.server_address[1], received)
        finally:
            sentry_sdk.flush(timeout=5)
            sentry_sdk.get_client().close()
            sentry_sdk.init()  # back to a client that sends nothing
