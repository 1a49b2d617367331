"""The port relay's handshake, which the gateway and the supervisor agree on.

When the gateway cannot route to a container's own address (PREVIEW_DIRECT_UPSTREAM=off,
a remote engine), the user's other ports are reached through one fixed container port,
published at creation like the dev server's (never one per user port): the supervisor's
relay there (supervisor/relay.py) greets each connection with a random challenge, the
gateway answers with the port it wants and an HMAC of both under the container's relay
secret, and the relay then connects to that port on the container's loopback, only while
it is one the heartbeat reports (the user's own listening ports), and says ``OK``.

The secret is derived from PREVIEW_SIGNING_SECRET and the container's id, so every
gateway replica knows it without a lookup; the supervisor gets it in its environment
(``PREVIEW_RELAY_SECRET``, which no process of the user inherits). A challenge is used
once per connection, so a recorded answer opens nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

RELAY_PORT = 65432  # in the container; above Linux's ephemeral range (32768-60999)
GREETING = b"PVRELAY1 "
OK = b"OK\n"
REFUSED = b"NO\n"
MAX_LINE = 128  # bytes of a greeting or an answer, newline included
HANDSHAKE_TIMEOUT = 5.0


def container_secret(signing_secret: str, cid: str) -> str:
    """The relay secret of one container (hex)."""
    message = f"port-relay\n{cid}".encode()
    return hmac.new(signing_secret.encode(), message, hashlib.sha256).hexdigest()


def challenge() -> str:
    return secrets.token_hex(16)


def greeting(nonce: str) -> bytes:
    return GREETING + nonce.encode() + b"\n"


def read_greeting(line: bytes) -> str | None:
    """The challenge in a relay's greeting, or None when it is not one."""
    if not line.startswith(GREETING) or not line.endswith(b"\n"):
        return None
    nonce = line[len(GREETING) : -1].decode("ascii", "replace")
    return nonce if len(nonce) == 32 and all(c in "0123456789abcdef" for c in nonce) else None


def _mac(secret: str, nonce: str, port: int) -> str:
    return hmac.new(secret.encode(), f"{nonce}:{port}".encode(), hashlib.sha256).hexdigest()


def answer(secret: str, nonce: str, port: int) -> bytes:
    """The gateway's answer: the port it wants, proven with the container's secret."""
    return f"{port} {_mac(secret, nonce, port)}\n".encode()


def check(secret: str, nonce: str, line: bytes) -> int | None:
    """The port a genuine answer to `nonce` asks for; None for anything else."""
    raw_port, _, mac = line.rstrip(b"\n").decode("ascii", "replace").partition(" ")
    if not raw_port.isdigit() or len(raw_port) > 5 or not 0 < int(raw_port) < 65536:
        return None
    port = int(raw_port)
    return port if hmac.compare_digest(mac, _mac(secret, nonce, port)) else None
