"""Built-in secrets are for one machine only: the start-up check of gateway and controller.

``PREVIEW_JWT_SECRET`` and ``PREVIEW_SIGNING_SECRET`` have defaults so that a checkout runs
with no set-up, but those defaults are printed in the source: anyone who can reach a
gateway using them can mint an admin token or a preview cookie. So a process refuses a
built-in secret unless everything it shows to the network stays on this machine:

- the gateway: every address it listens on is loopback (127.0.0.0/8, ::1, ``localhost``,
  a unix socket) and so are its public names (``PREVIEW_PUBLIC_URL``, ``PREVIEW_DOMAIN``:
  a gateway on 127.0.0.1 behind a reverse proxy for ``example.com`` serves the world);
- the controller (it verifies no token itself, but it is started from the same
  environment as the gateways of its deployment): its Redis, its Docker hosts, its
  metrics address and the public names are all on loopback, i.e. the whole deployment is
  this machine. A deployment beyond it fails at start-up in every process, not only in
  whichever gateway happens to be exposed.

``PREVIEW_JWT_SECRET`` counts only while an HS* algorithm is allowed: a deployment on
RS256/ES256 keys never uses it. ``scripts/run`` generates its own secrets (``.state/``), so
a local run never depends on this rule.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from shared.jwt_algorithms import FAMILIES
from shared.settings import Settings, SettingsError

GENERATE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
# The built-in values, from the one place they are defined.
_DEFAULTS = Settings()


class ExposedDefaults(SettingsError):
    """A built-in secret in a process that is reachable beyond this machine."""


def builtin_secrets(settings: Settings) -> list[str]:
    """The settings this deployment uses that still hold their published built-in value."""
    found = []
    hmac = any(FAMILIES.get(a) == "HMAC" for a in settings.jwt_algorithms)
    if hmac and settings.jwt_secret == _DEFAULTS.jwt_secret:
        found.append("PREVIEW_JWT_SECRET")
    if settings.signing_secret == _DEFAULTS.signing_secret:
        found.append("PREVIEW_SIGNING_SECRET")
    return found


def is_loopback_host(host: str) -> bool:
    """True for a loopback address or a name that only ever means this machine.

    ``localhost`` and ``*.localhost`` are loopback by RFC 6761 (browsers never resolve
    them elsewhere); any other name is resolved and must give loopback addresses only."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if not host:
        return False  # an empty host is the wildcard for every server we use
    if host == "localhost" or host.endswith(".localhost"):
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos
    )


def bind_host(bind: str) -> str | None:
    """The host of one hypercorn bind (``host:port``, ``[v6]:port``, ``unix:path``,
    ``fd://N``); None when it is a unix socket (only this machine can connect)."""
    bind = bind.strip()
    if bind.startswith("unix:"):
        return None
    if bind.startswith("fd://"):
        return ""  # an inherited socket: its address is unknown here, so not loopback
    if bind.startswith("["):
        return bind[1 : bind.find("]")] if "]" in bind else bind
    return bind.rsplit(":", 1)[0] if ":" in bind else bind


def _url_host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _public_names(settings: Settings) -> list[str]:
    out = []
    if not is_loopback_host(_url_host(settings.public_url)):
        out.append(f"PREVIEW_PUBLIC_URL={settings.public_url}")
    if not is_loopback_host(settings.domain):
        out.append(f"PREVIEW_DOMAIN={settings.domain}")
    return out


def gateway_exposure(settings: Settings, binds: Iterable[str]) -> list[str]:
    """What makes this gateway reachable beyond this machine (empty: nothing)."""
    out = []
    for bind in binds:
        host = bind_host(bind)
        if host is not None and not is_loopback_host(host):
            out.append(f"listens on {bind}")
    return out + _public_names(settings)


def _redis_host(url: str) -> str | None:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "unix":
        return None
    return _url_host(url)


def controller_exposure(settings: Settings) -> list[str]:
    """What puts this controller's deployment beyond this machine (empty: nothing)."""
    out = []
    # With sentinels, the URL's host is a placeholder: the sentinels name the master.
    redis_host = None if settings.redis_sentinels else _redis_host(settings.redis_url)
    if redis_host is not None and not is_loopback_host(redis_host):
        out.append(f"Redis on {redis_host}")
    for sentinel in settings.redis_sentinels:
        host = bind_host(sentinel)
        if host is not None and not is_loopback_host(host):
            out.append(f"a Redis Sentinel on {sentinel}")
    for host in settings.docker_hosts:
        if host.startswith("tcp://") and not is_loopback_host(_url_host(host)):
            out.append(f"Docker host {host}")
    metrics = settings.controller_metrics_bind
    metrics_host = bind_host(metrics) if metrics else None
    if metrics_host is not None and not is_loopback_host(metrics_host):
        out.append(f"metrics on {metrics}")
    return out + _public_names(settings)


def refusal(what: str, secrets: list[str], exposure: list[str]) -> str:
    """The message a process stops with (names the settings, never their values)."""
    one = len(secrets) == 1
    return (
        f"refusing to start: {' and '.join(secrets)} "
        f"{'has its built-in value' if one else 'have their built-in values'} (published in "
        f"the source) while {what} beyond this machine ({'; '.join(exposure)}). "
        f"Set {'it' if one else 'each'} to a secret of your own, the same on every gateway and "
        f"controller; generate one with: {GENERATE}"
    )


def check_gateway(settings: Settings, binds: Iterable[str]) -> None:
    found = builtin_secrets(settings)
    exposure = gateway_exposure(settings, binds) if found else []
    if exposure:
        raise ExposedDefaults(refusal("this gateway is reachable", found, exposure))


def check_controller(settings: Settings) -> None:
    found = builtin_secrets(settings)
    exposure = controller_exposure(settings) if found else []
    if exposure:
        raise ExposedDefaults(refusal("this deployment reaches", found, exposure))


def listening_binds() -> list[str]:
    """This process's server sockets, as binds (``host:port``, ``unix:path``).

    For ``hypercorn gateway.asgi:app --bind ...``: hypercorn's command line binds its
    sockets before it imports the application (and listens on them only after), and its
    bind options never reach us, so the sockets themselves are the truth: every stream
    socket bound to an address and connected to nothing. Linux only (``/proc``)."""
    binds = []
    with contextlib.suppress(OSError):
        fds = os.listdir("/proc/self/fd")
        for name in fds:
            with contextlib.suppress(OSError, ValueError):
                if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                    continue
                with socket.socket(fileno=os.dup(int(name))) as sock:
                    bind = _server_bind(sock)
                    if bind:
                        binds.append(bind)
    return binds


def _server_bind(sock: socket.socket) -> str | None:
    if sock.type != socket.SOCK_STREAM:
        return None
    try:
        sock.getpeername()
        return None  # connected: a client's or an accepted connection, not a server
    except OSError:
        pass
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}" if address else None
    if sock.family == socket.AF_INET6 and address[1]:
        return f"[{address[0]}]:{address[1]}"
    if sock.family == socket.AF_INET and address[1]:
        return f"{address[0]}:{address[1]}"
    return None
