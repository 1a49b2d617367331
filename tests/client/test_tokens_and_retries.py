"""The token helper as the gateway's verifier sees it (HS256, RS256, ES256), and the
client's retry rule against a small HTTP server answering what a gateway answers under
load (no gateway needed to make it say 429 or 503 on cue)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.api.auth import Authenticator
from gateway.errors import ApiError as GatewayApiError
from preview_client import (
    GatewayUnreachable,
    PreviewClient,
    RateLimitedError,
    UnavailableError,
    mint_token,
)
from shared.settings import Settings
from tests.gateway.test_auth import EC_KEY, RSA_KEY, public_pem
from tests.utils import free_port, serving

SECRET = "client-test-secret-of-at-least-32-bytes"


def private_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize(("algorithm", "key"), [("RS256", RSA_KEY), ("ES256", EC_KEY)])
def test_asymmetric_tokens_verify(tmp_path: Path, algorithm: str, key: Any) -> None:
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(key))
    settings = Settings.from_env(
        {}, jwt_algorithms=(algorithm,), jwt_public_key_file=str(pem), jwt_issuer="backend"
    )
    auth = Authenticator(settings)
    token = mint_token(private_pem(key), "alice", algorithm=algorithm, issuer="backend")
    assert auth.verify(token).id == "alice" and not auth.verify(token).admin
    admin = mint_token(private_pem(key), "ops", algorithm=algorithm, issuer="backend", admin=True)
    assert auth.verify(admin).admin
    with pytest.raises(GatewayApiError, match="wrong issuer"):
        auth.verify(mint_token(private_pem(key), "alice", algorithm=algorithm, issuer="x"))


def test_hs256_token_and_refusals() -> None:
    auth = Authenticator(Settings.from_env({}, jwt_secret=SECRET))
    assert auth.verify(mint_token(SECRET, "bob", ttl=60)).id == "bob"
    with pytest.raises(GatewayApiError, match="bad signature"):
        auth.verify(mint_token(SECRET + "x", "bob"))
    with pytest.raises(ValueError, match="PEM"):
        mint_token(private_pem(RSA_KEY), "bob", algorithm="HS256")
    with pytest.raises(ValueError):
        mint_token(SECRET, "", ttl=60)
    with pytest.raises(ValueError):
        mint_token(SECRET, "bob", algorithm="none")


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next scripted (status, headers, body)."""

    def __init__(self, script: list[tuple[int, dict[str, str], dict[str, Any]]]) -> None:
        self.script = script
        self.seen: list[tuple[str, float]] = []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, time.monotonic()))
        status, headers, body = self.server.script.pop(0)
        raw = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(raw))}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with serving(Scripted([])) as server:
        yield server


PREVIEW = {"id": "p1", "project_id": "x", "state": "ready", "url": "u", "open_url": "o"}
LIMITED = {"error": "rate_limited", "detail": "slow down"}


def test_429_and_503_are_retried_after_retry_after(scripted: Scripted) -> None:
    scripted.script += [(429, {"Retry-After": "1"}, LIMITED), (503, {}, {}), (200, {}, PREVIEW)]
    url = f"http://127.0.0.1:{scripted.server_address[1]}"
    with PreviewClient(url, "t") as client:
        assert client.get("p1").state == "ready"
    times = [t for _, t in scripted.seen]
    assert len(times) == 3 and times[1] - times[0] >= 0.95  # Retry-After honoured


def test_what_is_not_retried(scripted: Scripted) -> None:
    url = f"http://127.0.0.1:{scripted.server_address[1]}"
    with PreviewClient(url, "t", max_retry_wait=5) as client:
        # A start that may have been handled is never sent twice.
        scripted.script += [(502, {}, {"error": "bad_gateway", "detail": "upstream"})]
        with pytest.raises(UnavailableError) as bad:
            client.start("p", template="node-basic")
        assert bad.value.error == "bad_gateway" and bad.value.detail == "upstream"
        # A wait longer than the client accepts: the error, with the wait it asked for.
        scripted.script += [(429, {"Retry-After": "60"}, LIMITED)]
        with pytest.raises(RateLimitedError) as limited:
            client.list()
        assert limited.value.retry_after == 60 and limited.value.error == "rate_limited"
        # The concurrency limit frees with a stop, not with time.
        body = {"error": "too_many_previews", "detail": "3 running", "limit": 3, "active": []}
        scripted.script += [(429, {"Retry-After": "1"}, body)]
        with pytest.raises(RateLimitedError) as full:
            client.start("p", template="node-basic")
        assert full.value.body["limit"] == 3
    assert [m for m, _ in scripted.seen] == ["POST", "GET", "POST"]


def test_gateway_down_is_one_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with PreviewClient(url, "t", max_retries=1) as client:
        with pytest.raises(GatewayUnreachable, match="connection refused"):
            client.list()
