"""JWT authentication: the verifier in-process, and every attack against the real gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.api.auth import AuthConfigError, Authenticator
from gateway.errors import ApiError
from shared.settings import Settings
from tests.gateway.api_helpers import SECRET, bearer, forged, token, valid_claims
from tests.gateway.conftest import GatewayFactory
from tests.utils import GatewayProcess

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.fixture(scope="module")
def rsa_pem_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "rsa.pem"
    path.write_bytes(public_pem(RSA_KEY))
    return path


def hs_auth(**overrides: Any) -> Authenticator:
    return Authenticator(Settings.from_env({}, **{"jwt_secret": SECRET, **overrides}))


def refused(auth: Authenticator, raw: str) -> str:
    with pytest.raises(ApiError) as caught:
        auth.verify(raw)
    assert caught.value.status == 401 and caught.value.error == "invalid_token"
    return caught.value.detail


# --- the verifier ------------------------------------------------------------------------


def test_valid_token_names_user_and_scopes() -> None:
    user = hs_auth().verify(token("alice", scope="admin read"))
    assert user.id == "alice" and user.admin and "read" in user.scopes
    assert not hs_auth().verify(token("bob")).admin


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: token(ttl=-120), "token expired"),
        (lambda: token(aud="someone-else"), "wrong audience"),
        (lambda: token(secret="another-secret-of-at-least-thirty-two-bytes"), "bad signature"),
        (lambda: token(sub=None), "missing claim: sub"),
        (lambda: token(exp=None), "missing claim: exp"),
        (lambda: token(aud=None), "missing claim: aud"),
        (lambda: token(sub=""), "sub must be a non-empty string"),
        (lambda: token(nbf=2_000_000_000 * 2), "token not yet valid"),
        (
            lambda: forged({"alg": "none", "typ": "JWT"}, valid_claims(), None),
            "algorithm not allowed",
        ),
        (lambda: forged({"alg": "None"}, valid_claims(), None), "algorithm not allowed"),
        (lambda: token(secret=SECRET * 2, algorithm="HS512"), "algorithm not allowed"),
        (lambda: "not-a-jwt", "malformed token"),
        (lambda: "a.b.c", "malformed token"),
        (lambda: "x" * 9000, "token too large"),
    ],
)
def test_each_failure_is_named(make: Any, detail: str) -> None:
    assert refused(hs_auth(), make()) == detail


def test_expired_within_leeway_still_passes() -> None:
    assert hs_auth(jwt_leeway=30).verify(token(ttl=-5)).id == "alice"


def test_issuer_is_checked_when_configured() -> None:
    auth = hs_auth(jwt_issuer="https://app.example")
    assert auth.verify(token(iss="https://app.example")).id == "alice"
    assert refused(auth, token(iss="https://evil.example")) == "wrong issuer"
    assert refused(auth, token()) == "missing claim: iss"


def test_hs_rs_confusion_is_refused(rsa_pem_file: Path) -> None:
    """An HS256 token "signed" with the RSA public key (which attackers have) as secret."""
    attack = forged({"alg": "HS256", "typ": "JWT"}, valid_claims(), rsa_pem_file.read_bytes())
    rs_only = hs_auth(jwt_algorithms=("RS256",), jwt_public_key_file=str(rsa_pem_file))
    assert refused(rs_only, attack) == "algorithm not allowed"
    # With both families allowed, HS tokens are checked with the shared secret only.
    both = hs_auth(jwt_algorithms=("HS256", "RS256"), jwt_public_key_file=str(rsa_pem_file))
    assert refused(both, attack) == "bad signature"
    good = token(secret=RSA_KEY, algorithm="RS256")
    assert both.verify(good).id == "alice" and rs_only.verify(good).id == "alice"


def test_es256_from_a_jwks_file_by_kid(tmp_path: Path) -> None:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    auth = hs_auth(jwt_algorithms=("ES256",), jwt_jwks_file=str(jwks))
    good = token(secret=EC_KEY, algorithm="ES256", headers={"kid": "k1"})
    assert auth.verify(good).id == "alice"
    unknown = token(secret=EC_KEY, algorithm="ES256", headers={"kid": "k2"})
    assert refused(auth, unknown) == "no key for this token"
    other = ec.generate_private_key(ec.SECP256R1())
    assert refused(auth, token(secret=other, algorithm="ES256", headers={"kid": "k1"})) == (
        "bad signature"
    )


def test_configurations_that_cannot_work_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="no RSA public key"):
        hs_auth(jwt_algorithms=("RS256",))
    with pytest.raises(AuthConfigError, match="unsupported"):
        hs_auth(jwt_algorithms=("HS256", "XX1"))
    with pytest.raises(AuthConfigError, match="shared secret"):
        hs_auth(jwt_secret=public_pem(RSA_KEY).decode())
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(AuthConfigError, match="PUBLIC_KEY_FILE"):
        hs_auth(jwt_algorithms=("RS256",), jwt_public_key_file=str(tmp_path / "bad.pem"))


# --- against the real gateway ------------------------------------------------------------


def assert_401(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "invalid_token", "detail": detail}


def test_attacks_on_the_gateway_are_401_json(gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/v1/previews"
    cases = {
        "token expired": token(ttl=-120),
        "wrong audience": token(aud="other"),
        "bad signature": token(secret="wrong-secret-but-still-thirty-two-bytes!"),
        "algorithm not allowed": forged({"alg": "none"}, valid_claims(), None),
        "malformed token": "garbage.garbage.garbage",
        "missing claim: sub": token(sub=None),
    }
    for detail, raw in cases.items():
        assert_401(httpx.get(url, headers={"Authorization": f"Bearer {raw}"}), detail)
    assert_401(httpx.get(url), "missing Authorization: Bearer token")
    assert_401(
        httpx.get(url, headers={"Authorization": "Basic YWxpY2U6cHc="}),
        "expected Authorization: Bearer <token>",
    )
    # 10 KB: refused by us, not by the server's header limit.
    assert_401(
        httpx.get(url, headers={"Authorization": "Bearer " + "A" * 10_240}), "token too large"
    )
    assert_401(httpx.post(url, json={}, headers={"Authorization": "Bearer x"}), "malformed token")
    assert httpx.get(url, headers=bearer()).json() == {"previews": []}
    # Tokens never reach the log.
    assert token(ttl=-120)[:40] not in gateway.log()


def test_headers_over_the_servers_limit_are_a_bare_431(gateway: GatewayProcess) -> None:
    """Up to what hypercorn reads in one go (64 KiB) the app answers 401 JSON; a bigger
    request head is refused by h11 itself with an empty 431: still a clean 4xx, never a 500
    or a hang."""
    url = f"{gateway.url}/v1/previews"
    assert_401(
        httpx.get(url, headers={"Authorization": "Bearer " + "A" * 60_000}), "token too large"
    )
    assert httpx.get(url, headers={"Authorization": "Bearer " + "A" * 200_000}).status_code == 431


def test_rs256_gateway_refuses_confusion_and_accepts_rs256(
    start_gateway: GatewayFactory, rsa_pem_file: Path
) -> None:
    gw = start_gateway(jwt_algorithms="RS256", jwt_public_key_file=str(rsa_pem_file))
    url = f"{gw.url}/v1/previews"
    attack = forged({"alg": "HS256"}, valid_claims(), rsa_pem_file.read_bytes())
    assert_401(
        httpx.get(url, headers={"Authorization": f"Bearer {attack}"}), "algorithm not allowed"
    )
    assert_401(httpx.get(url, headers=bearer()), "algorithm not allowed")
    ok = httpx.get(url, headers=bearer(secret=RSA_KEY, algorithm="RS256"))
    assert ok.status_code == 200, ok.text


def test_operator_endpoints_need_the_admin_scope(gateway: GatewayProcess) -> None:
    for path in ("/v1/pool", "/v1/admin/previews"):
        denied = httpx.get(gateway.url + path, headers=bearer("alice"))
        assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
        allowed = httpx.get(gateway.url + path, headers=bearer("root", scope="admin"))
        assert allowed.status_code == 200, allowed.text


def test_repeated_failures_from_one_address_are_rate_limited(
    start_gateway: GatewayFactory,
) -> None:
    gw = start_gateway(rate_limit_auth_failures="3/minute")
    bad = {"Authorization": "Bearer nope"}
    codes = [httpx.get(f"{gw.url}/v1/previews", headers=bad).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    limited = httpx.get(f"{gw.url}/v1/previews", headers=bad)
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert httpx.get(f"{gw.url}/v1/previews", headers=bearer()).status_code == 200
