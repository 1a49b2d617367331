"""Users' JWTs (pyjwt): who is calling, and may they use operator endpoints.

The key is chosen by the token's algorithm family, never by the token alone: HS* tokens are
checked with the shared secret, RS*/PS*/ES* tokens with the configured public key or JWKS.
An algorithm outside the allowlist is refused before any key is touched, so neither
``alg: none`` nor an HMAC "signed" with the public key (HS/RS confusion) can pass.
Tokens never reach a log line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import InvalidSubjectError
from starlette.requests import HTTPConnection

from gateway.errors import ApiError
from shared.jwt_algorithms import FAMILIES
from shared.settings import Settings

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32  # RFC 7518 3.2 for HS256
MAX_TOKEN_BYTES = 8192  # far above any real token; bigger ones are refused unparsed
_DETAILS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (InvalidSubjectError, "sub must be a non-empty string"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
]


class AuthConfigError(ValueError):
    """The JWT settings cannot work (missing key file, unknown algorithm...)."""


@dataclass(frozen=True)
class User:
    id: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


def invalid(detail: str) -> ApiError:
    return ApiError(401, "invalid_token", detail, headers={"WWW-Authenticate": "Bearer"})


def _public_keys(settings: Settings) -> dict[str, list[Any]]:
    """Family ("RSA"/"EC") -> key objects, from the PEM file and/or the JWKS file."""
    found: dict[str, list[Any]] = {"RSA": [], "EC": []}
    if settings.jwt_public_key_file:
        try:
            key = load_pem_public_key(Path(settings.jwt_public_key_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise AuthConfigError(f"PREVIEW_JWT_PUBLIC_KEY_FILE: {exc}") from None
        if isinstance(key, rsa.RSAPublicKey):
            found["RSA"].append(key)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            found["EC"].append(key)
        else:
            raise AuthConfigError("PREVIEW_JWT_PUBLIC_KEY_FILE: not an RSA or EC public key")
    if settings.jwt_jwks_file:
        try:
            jwks = jwt.PyJWKSet.from_json(Path(settings.jwt_jwks_file).read_text())
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise AuthConfigError(f"PREVIEW_JWT_JWKS_FILE: {exc}") from None
        for jwk in jwks.keys:
            if jwk.key_type in found and jwk.public_key_use in (None, "sig"):
                found[jwk.key_type].append(jwk)
    return found


class Authenticator:
    """Verifies bearer tokens against the configured algorithms and keys."""

    def __init__(self, settings: Settings) -> None:
        unknown = [a for a in settings.jwt_algorithms if a not in FAMILIES]
        if unknown:
            raise AuthConfigError(f"PREVIEW_JWT_ALGORITHMS: unsupported {', '.join(unknown)}")
        self.algorithms = frozenset(settings.jwt_algorithms)
        families = {FAMILIES[a] for a in self.algorithms}
        self.secret = settings.jwt_secret
        if "HMAC" in families and (not self.secret or "-----BEGIN" in self.secret):
            raise AuthConfigError("PREVIEW_JWT_SECRET must be a shared secret for HS* tokens")
        if "HMAC" in families and len(self.secret.encode()) < MIN_SECRET_BYTES:
            log.warning(
                "PREVIEW_JWT_SECRET is shorter than %d bytes: fine for development only",
                MIN_SECRET_BYTES,
            )
        self.keys = _public_keys(settings)
        for family in families - {"HMAC"}:
            if not self.keys[family]:
                raise AuthConfigError(
                    f"{family} algorithms are allowed but no {family} public key is configured"
                )
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer or None
        self.leeway = settings.jwt_leeway
        self.required = ["exp", "sub", "aud"] + (["iss"] if self.issuer else [])

    def _key(self, alg: str, kid: object) -> Any:
        family = FAMILIES[alg]
        if family == "HMAC":
            return self.secret
        candidates = [k for k in self.keys[family] if getattr(k, "algorithm_name", alg) == alg]
        if kid is not None:
            exact = [k for k in candidates if getattr(k, "key_id", None) == kid]
            candidates = exact or [k for k in candidates if getattr(k, "key_id", None) is None]
        if len(candidates) != 1:
            raise invalid("no key for this token" if not candidates else "token needs a kid")
        return candidates[0]

    def verify(self, token: str) -> User:
        """The user a token names; ApiError 401 naming what was wrong otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise invalid("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise invalid("algorithm not allowed")
        key = self._key(alg, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": self.required},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise invalid(f"missing claim: {exc.claim}") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            detail = next((d for kind, d in _DETAILS if isinstance(exc, kind)), "invalid token")
            raise invalid(detail) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 256:
            raise invalid("sub must be a non-empty string")
        scope = claims.get("scope", "")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        return User(sub, scopes)


def bearer_token(conn: HTTPConnection) -> str:
    """The token of `Authorization: Bearer <token>`; ApiError 401 when absent or malformed."""
    header = conn.headers.get("authorization")
    if header is None:
        raise invalid("missing Authorization: Bearer token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise invalid("expected Authorization: Bearer <token>")
    return token.strip()


def authenticate(conn: HTTPConnection) -> User:
    """The caller, from the app's Authenticator; cached on the request."""
    cached = conn.scope.get("pv.user")
    if isinstance(cached, User):
        return cached
    authenticator: Authenticator = conn.app.state.authenticator
    user = authenticator.verify(bearer_token(conn))
    conn.scope["pv.user"] = user
    return user


def describe(settings: Settings) -> str:
    """A one-line, secret-free summary for the start-up log."""
    return json.dumps(
        {
            "algorithms": list(settings.jwt_algorithms),
            "audience": settings.jwt_audience,
            "issuer": settings.jwt_issuer or None,
            "public_key": bool(settings.jwt_public_key_file),
            "jwks": bool(settings.jwt_jwks_file),
        }
    )
