"""A corpus of hostile tokens against a real gateway that accepts HS256, RS256 (PEM key) and
ES256 (JWKS with kids): every one is a 401 with a JSON error that does not echo it, on the
API's `Authorization: Bearer`, on a preview host's `?preview_token=` and as its cookie; and
no token reaches the gateway's log."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis as redis_sync
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.__main__ import MAX_REQUEST_HEAD
from gateway.proxy.signed import sign
from shared import keys
from shared.settings import Settings
from tests.gateway.api_helpers import SECRET, forged, gateway_env, token, valid_claims
from tests.gateway.proxy_fixtures import ProxyEnv
from tests.gateway.test_auth import EC_KEY, RSA_KEY, public_pem
from tests.utils import RedisServer, free_port, run_gateway

SIGNING = "hostile-signing-secret-of-some-length"
ISSUER = "https://app.example"
MAX_HEAD = MAX_REQUEST_HEAD  # more is h11's bare 431


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    return {**valid_claims(), "iss": ISSUER, **extra}


def _jwt(**claims: Any) -> str:
    return token(**{"iss": ISSUER, **claims})


def _good() -> str:
    return _jwt()


def _mangle_body(raw: str) -> str:
    head, _, rest = raw.partition(".")
    body, _, sig = rest.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "root"
    return f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"


def corpus(pem: bytes, jwks: bytes) -> dict[str, str]:
    """name → hostile bearer token (each must be refused)."""
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_ec = ec.generate_private_key(ec.SECP256R1())
    good = _good()
    head, body, sig = good.split(".")
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other_rsa.public_key()))
    return {
        "alg_none": forged({"alg": "none", "typ": "JWT"}, _claims(), None),
        "alg_None": forged({"alg": "None"}, _claims(), None),
        "alg_NONE_with_sig": forged({"alg": "NONE"}, _claims(), None) + sig,
        "alg_missing": forged({"typ": "JWT"}, _claims(), SECRET.encode()),
        "alg_not_a_string": forged({"alg": ["HS256"]}, _claims(), SECRET.encode()),
        "alg_hs512_not_allowed": token(secret=SECRET * 2, algorithm="HS512", iss=ISSUER),
        "hs256_with_rsa_pem": forged({"alg": "HS256"}, _claims(), pem),
        "hs256_with_rsa_pem_stripped": forged({"alg": "HS256"}, _claims(), pem.strip()),
        "hs256_with_jwks": forged({"alg": "HS256", "kid": "ec1"}, _claims(), jwks),
        "rs256_header_hmac_sig": forged({"alg": "RS256"}, _claims(), pem),
        "es256_header_hmac_sig": forged({"alg": "ES256", "kid": "ec1"}, _claims(), jwks),
        "rs256_other_key": token(secret=other_rsa, algorithm="RS256", iss=ISSUER),
        "es256_other_key": token(
            secret=other_ec, algorithm="ES256", iss=ISSUER, headers={"kid": "ec1"}
        ),
        "embedded_jwk": token(
            secret=other_rsa, algorithm="RS256", iss=ISSUER, headers={"jwk": attacker_jwk}
        ),
        "jku_header": token(
            secret=other_rsa,
            algorithm="RS256",
            iss=ISSUER,
            headers={"jku": "http://127.0.0.1:9/jwks.json", "kid": "x"},
        ),
        "wrong_kid": token(secret=EC_KEY, algorithm="ES256", iss=ISSUER, headers={"kid": "nope"}),
        "kid_path_traversal": token(
            secret=EC_KEY, algorithm="ES256", iss=ISSUER, headers={"kid": "../../etc/passwd"}
        ),
        "kid_unicode": token(secret=EC_KEY, algorithm="ES256", iss=ISSUER, headers={"kid": "☃"}),
        "crit_unknown": token(iss=ISSUER, headers={"crit": ["exp-x"], "exp-x": 1}),
        "bad_signature": token(secret="another-secret-of-at-least-thirty-two-bytes", iss=ISSUER),
        "claims_changed": _mangle_body(good),
        "expired": _jwt(ttl=-3600),
        "expired_beyond_leeway": _jwt(ttl=-30),
        "nbf_future": _jwt(nbf=int(time.time()) + 3600),
        "iat_future": _jwt(iat=int(time.time()) + 3600),
        "exp_string": _jwt(exp="tomorrow"),
        "wrong_aud": _jwt(aud="someone-else"),
        "aud_list_without_ours": _jwt(aud=["a", "b"]),
        "wrong_iss": _jwt(iss="https://evil.example"),
        "missing_iss": token(),
        "missing_sub": _jwt(sub=None),
        "missing_exp": _jwt(exp=None),
        "missing_aud": _jwt(aud=None),
        "sub_number": _jwt(sub=12345),
        "sub_empty": _jwt(sub=""),
        "sub_huge": _jwt(sub="a" * 300),
        "truncated_sig": good[:-3],
        "truncated_two_parts": f"{head}.{body}",
        "truncated_head": good[5:],
        "no_signature": f"{head}.{body}.",
        "four_parts": good + ".xyz",
        "bad_base64": "!!!.@@@.###",
        "padded_base64": f"{head}==.{body}.{sig}",
        "header_not_json": f"{_b64(b'not json')}.{body}.{sig}",
        "header_json_array": f"{_b64(b'[1,2]')}.{body}.{sig}",
        "body_not_json": forged({"alg": "HS256"}, _claims(), SECRET.encode()).split(".")[0]
        + f".{_b64(b'nope')}.{sig}",
        "unicode_token": "ünïcødé.☃.✓",
        "just_dots": "..",
        "huge_8k": good + "A" * 9000,
        "huge_48k": "A" * 48_000,  # well under MAX_HEAD with any request around it
    }


@pytest.fixture(scope="module")
def keyfiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("hostile-keys")
    pem = folder / "rsa.pem"
    pem.write_bytes(public_pem(RSA_KEY))
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "ec1", "alg": "ES256", "use": "sig"}]}))
    return pem, jwks


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer, test_image: str, keyfiles: tuple[Path, Path]
) -> Iterator[ProxyEnv]:
    """One gateway for the module: three algorithm families, an issuer, a known signing
    secret, and no failed-authentication limit in the way of the corpus."""
    pem, jwks = keyfiles
    port = free_port()
    values: dict[str, Any] = {
        "jwt_algorithms": "HS256,RS256,ES256",
        "jwt_public_key_file": str(pem),
        "jwt_jwks_file": str(jwks),
        "jwt_issuer": ISSUER,
        "signing_secret": SIGNING,
        "preview_port": port,
    }
    settings = Settings.from_env({}, redis_url=redis_server.url, **values)
    client = redis_sync.Redis.from_url(redis_server.url)
    try:
        with run_gateway(gateway_env(redis_server, test_image, **values), port=port) as gw:
            yield ProxyEnv(gw, client, settings)
    finally:
        for key in client.scan_iter(match=keys.session("*")):
            client.delete(key)
        client.close()


def assert_refused(response: httpx.Response, raw: str, error: str = "invalid_token") -> None:
    assert response.status_code == 401, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    assert len(raw) < 16 or raw[-16:] not in response.text  # the token is not echoed


def test_the_corpus_is_401_on_the_api(env: ProxyEnv, keyfiles: tuple[Path, Path]) -> None:
    pem, jwks = keyfiles
    hostile = corpus(pem.read_bytes(), jwks.read_bytes())
    url = f"{env.gateway.url}/v1/previews"
    for name, raw in hostile.items():
        auth = {"Authorization": f"Bearer {raw}".encode()}
        response = httpx.get(url, headers=auth)
        assert response.status_code == 401, (name, response.text)
        assert_refused(response, raw)
        posted = httpx.post(url, headers=auth, json={})
        assert_refused(posted, raw)
    # The three families do work, so the refusals above are about the tokens.
    ok = [
        _good(),
        token(secret=RSA_KEY, algorithm="RS256", iss=ISSUER),
        token(secret=EC_KEY, algorithm="ES256", iss=ISSUER, headers={"kid": "ec1"}),
    ]
    for raw in ok:
        response = httpx.get(url, headers={"Authorization": f"Bearer {raw}"})
        assert response.status_code == 200, response.text
    log = env.gateway.log()
    leaked = [name for name, raw in hostile.items() if len(raw) > 40 and raw[-40:] in log]
    assert not leaked


def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """Status and body of a request sent as bytes (headers httpx would not send)."""
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(head + b"Connection: close\r\n\r\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    answer = b"".join(chunks)
    return int(answer[9:12]), answer.split(b"\r\n\r\n", 1)[1]


def test_malformed_authorization_headers(env: ProxyEnv) -> None:
    port = env.gateway.port
    good = _good().encode()
    heads = {
        "unicode_bytes": "Bearer ünïcødé☃".encode(),
        "latin1_bytes": b"Bearer \xff\xfe\xfd",
        "two_tokens": b"Bearer " + good + b" " + good,
        "no_scheme": good,
        "basic": b"Basic " + base64.b64encode(b"alice:pw"),
        "empty": b"",
        "only_scheme": b"Bearer",
        "tab_separated": b"Bearer\t" + good,
    }
    for name, value in heads.items():
        head = b"GET /v1/previews HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + value + b"\r\n"
        status, body = raw_request(port, head)
        assert status == 401, (name, status, body[:200])
        parsed = json.loads(body)
        assert set(parsed) == {"error", "detail"} and parsed["error"] == "invalid_token", name
    # Two Authorization headers: refused, never "first one wins" with the second ignored.
    head = b"GET /v1/previews HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer junk\r\n"
    status, _ = raw_request(port, head + b"Authorization: Bearer " + good + b"\r\n")
    assert status == 401


def test_huge_tokens_are_401_or_a_bare_431(env: ProxyEnv) -> None:
    """A head under 64 KiB: our 401; one that leaves more than 64 KiB unparsed after a
    read (surely so from 128 KiB): h11's empty 431 (documented in test_auth). A clean 4xx
    either way, never a 500 or a hang."""
    url = f"{env.gateway.url}/v1/previews"
    for size in (MAX_HEAD - 2048, 2 * MAX_HEAD + 1024, 1024 * 1024):
        raw = "A" * size
        response = httpx.get(url, headers={"Authorization": f"Bearer {raw}"}, timeout=30)
        if size < MAX_HEAD:
            assert_refused(response, raw)
        else:
            assert response.status_code == 431 and response.content == b""
    assert httpx.get(url, headers={"Authorization": f"Bearer {_good()}"}).status_code == 200


def test_a_large_head_arriving_in_pieces_is_read_whole(env: ProxyEnv) -> None:
    """A 48 KiB head sent in two pieces gets the same 401 as one sent at once (hypercorn's
    default let h11 refuse a head over 16 KiB that was incomplete after one read)."""
    raw = "A" * 48_000
    head = (
        f"GET /v1/previews HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {raw}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", env.gateway.port), timeout=10) as sock:
        sock.sendall(head[:30_000])
        sock.settimeout(0.5)
        try:  # refused on the first piece: the answer comes now; else the wait runs out
            early = sock.recv(1024)
        except TimeoutError:
            early = b""
        assert early == b"", early[:100]
        sock.settimeout(10)
        sock.sendall(head[30_000:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"invalid_token" in answer


def _respelled(encoded: str) -> str:
    """The same bytes in another base64 spelling (the unused low bits of the last char)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    for char in alphabet:
        other = encoded[:-1] + char
        if other != encoded and base64.urlsafe_b64decode(other + "=" * (-len(other) % 4)) == (
            decoded
        ):
            return other
    raise AssertionError("no other spelling")


def _preview_tokens(sid: str, pem: bytes, jwks: bytes, where: str) -> dict[str, str]:
    """name → hostile `preview_token` (or cookie value) for the preview `sid` of alice.

    A link token is `nonce.user.exp.mac` signed for `sid/nonce`, a cookie `user.exp.mac`
    for `sid`: the mutations keep the nonce of a link token, so they test the signature."""
    now = int(time.time())
    nonce = secrets.token_urlsafe(12) if where == "query" else ""
    purpose, other = ("open", "cookie") if where == "query" else ("cookie", "open")

    def signed(purpose: str, sid: str, user: str, ttl: int, secret: str = SIGNING) -> str:
        bound = f"{sid}/{nonce}" if nonce else sid
        value = sign(secret, purpose, bound, user, ttl)
        return f"{nonce}.{value}" if nonce else value

    good = signed(purpose, sid, "alice", 60)
    pre = f"{nonce}." if nonce else ""
    user, exp, mac = good.removeprefix(pre).split(".")
    cases = {
        **{f"jwt_{name}": raw for name, raw in corpus(pem, jwks).items()},
        "bob_jwt": _jwt(sub="bob"),
        "alice_jwt": _good(),  # the owner's own JWT: never accepted in a URL (nor cookie)
        "expired_open": signed(purpose, sid, "alice", -5),
        "other_preview": signed(purpose, "0" * 16, "alice", 60),
        "other_user": signed(purpose, sid, "bob", 60),
        # A value made for the other use: a cookie as a link token, a link token as cookie.
        "other_purpose": signed(other, sid, "alice", 60),
        "wrong_secret": signed(purpose, sid, "alice", 60, "guessed-secret"),
        "mac_truncated": good[:-4],
        "mac_empty": f"{pre}{user}.{exp}.",
        "exp_extended": f"{pre}{user}.{now + 10**6}.{mac}",
        "exp_not_a_number": f"{pre}{user}.soon.{mac}",
        "exp_underscored": f"{pre}{user}.{exp[:3]}_{exp[3:]}.{mac}",
        "user_swapped": f"{pre}{_b64(b'bob')}.{exp}.{mac}",
        "user_other_spelling": f"{pre}{_respelled(user)}.{exp}.{mac}",
        "exp_leading_zero": f"{pre}{user}.0{exp}.{mac}",
        "user_bad_base64": f"{pre}!!!.{exp}.{mac}",
        "user_not_utf8": f"{pre}{_b64(bytes([0xFF, 0xFE]))}.{exp}.{mac}",
        "unicode": "ålice.☃.✓",
        "huge": good + "A" * 5000,
        "empty": "",
        "dots": "..",
    }
    if nonce:  # a link token without its nonce (the old format), or with another one
        cases["unbound"] = sign(SIGNING, purpose, sid, "alice", 60)
        cases["nonce_swapped"] = f"{secrets.token_urlsafe(12)}.{user}.{exp}.{mac}"
    return cases


@pytest.mark.parametrize("where", ["query", "cookie"])
def test_the_corpus_is_401_on_a_preview_host(
    env: ProxyEnv, keyfiles: tuple[Path, Path], where: str
) -> None:
    pem, jwks = keyfiles
    sid = env.session("127.0.0.1:9")
    cases = _preview_tokens(sid, pem.read_bytes(), jwks.read_bytes(), where)
    checks: dict[str, Callable[[httpx.Client, str], httpx.Response]] = {
        "query": lambda c, raw: c.get("/", params={"preview_token": raw}),
        "cookie": lambda c, raw: c.get("/", headers={"cookie": f"pv_{sid}={raw}".encode()}),
    }
    error = "invalid_token" if where == "query" else "unauthorized"
    with env.client(sid) as client:
        for name, raw in cases.items():
            if where == "query" and raw == "":
                continue  # an empty token is "no token": the cookie check answers
            response = checks[where](client, raw)
            assert response.status_code == 401, (name, response.status_code, response.text)
            assert_refused(response, raw, error)
            assert "set-cookie" not in response.headers, name
        # The real ones pass (the upstream is down, so the proxy's 502 is the proof).
        opened = client.get("/", params={"preview_token": env.token(sid)})
        assert opened.status_code == 302
        cookie = opened.headers["set-cookie"].split(";", 1)[0]
        assert client.get("/", headers={"cookie": cookie}).status_code == 502
    log = env.gateway.log()
    assert not [n for n, raw in cases.items() if len(raw) > 40 and raw[-40:] in log]


def test_a_cookie_for_one_preview_does_not_open_another(env: ProxyEnv) -> None:
    mine, other = env.session("127.0.0.1:9"), env.session("127.0.0.1:9", user="bob")
    with env.login(mine) as client:
        value = str(client.headers["cookie"]).split("=", 1)[1]
    with env.client(other) as client:
        stolen = client.get("/", headers={"cookie": f"pv_{other}={value}"})
        assert_refused(stolen, value, "unauthorized")
        # Alice's own JWT does not open bob's preview either.
        assert client.get("/", params={"preview_token": _good()}).status_code == 401
