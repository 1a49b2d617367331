"""Which key checks a JWT of each allowed algorithm: HS* the shared secret, RS*/PS*/ES* a
public key. The API verifies tokens with it (``gateway.api.auth``); the start-up check
for built-in secrets (``gateway.observability.exposure``) asks whether the shared secret
is in use at all."""

from __future__ import annotations

FAMILIES = {
    "HS256": "HMAC",
    "HS384": "HMAC",
    "HS512": "HMAC",
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
}
