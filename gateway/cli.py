"""Operator CLI (``previewctl``): development tokens now; sessions, pool and hosts later."""

from __future__ import annotations

import argparse
import sys
import time

import jwt

from shared.settings import Settings


def mint_token(settings: Settings, sub: str, ttl: int, admin: bool) -> str:
    """An HS256 token as the app backend would issue it (for local development)."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": sub,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if admin:
        claims["scope"] = "admin"
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="previewctl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="mint a development JWT (HS256, PREVIEW_JWT_SECRET)")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--admin", action="store_true", help="add the admin scope")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "token":
        print(mint_token(settings, args.sub, args.ttl, args.admin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
