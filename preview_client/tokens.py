"""Minting user tokens for the gateway, as the app backend does (pyjwt).

HS256 signs with the secret shared with the gateway (`PREVIEW_JWT_SECRET`); RS256 and ES256
sign with the backend's private key, whose public half the gateway holds
(`PREVIEW_JWT_PUBLIC_KEY_FILE` or a JWKS file; name the key with `key_id` when the JWKS
has several).
"""

from __future__ import annotations

import time
from typing import Any

import jwt

ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
DEFAULT_AUDIENCE = "preview-gateway"


def mint_token(
    key: str | bytes,
    sub: str,
    *,
    algorithm: str = "HS256",
    ttl: int = 3600,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str | None = None,
    admin: bool = False,
    key_id: str | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A token for user `sub`, valid `ttl` seconds. `key`: the shared secret for HS*, a
    PEM private key for RS*/ES*. `admin` adds the operator scope."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
    if not sub:
        raise ValueError("sub must be a non-empty user id")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    if algorithm.startswith("HS") and b"-----BEGIN" in (
        key if isinstance(key, bytes) else key.encode()
    ):
        raise ValueError("HS* tokens are signed with the shared secret, not a PEM key")
    now = int(time.time())
    payload: dict[str, Any] = {**(claims or {}), "sub": sub, "aud": audience}
    payload.update(iat=now, exp=now + ttl)
    if issuer:
        payload["iss"] = issuer
    if admin:
        payload["scope"] = "admin"
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)
