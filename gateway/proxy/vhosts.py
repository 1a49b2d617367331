"""Which host names are which: previews, the API, or nothing of ours.

- A host under PREVIEW_DOMAIN (the domain itself included, any case, a trailing dot
  ignored) is only ever a preview: ``{id}.{domain}`` is that preview, ``{id}-{port}.{domain}``
  (one DNS label: one wildcard certificate covers it) another port of it, and anything
  else there is an unknown preview (404). The API, ``/admin``, ``/metrics`` and
  ``/openapi.json`` never answer on the user-content domain.
- The API answers on the hosts in PREVIEW_API_HOSTS; empty (the default) means
  PREVIEW_PUBLIC_URL's host, ``localhost`` and any IP literal (what health checks,
  Prometheus and the tests send). A DNS-rebinding page reaches the gateway under its own
  name, which is none of these: 421. ``*`` accepts any host (as before this rule).
- ``/healthz`` and ``/readyz`` answer on any host that is not a preview's: load balancers
  probe by address or by names we cannot know, and they reveal nothing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.asgi_types import Scope, header
from shared.settings import Settings

PROBES = frozenset({"/healthz", "/readyz"})


def public_host(settings: Settings, sid: str) -> str:
    """`{id}.{domain}` with `:port` unless the port is the scheme's default (or 0)."""
    default = 443 if settings.preview_scheme == "https" else 80
    port = settings.preview_port
    suffix = f":{port}" if port and port != default else ""
    return f"{sid}.{settings.domain}{suffix}"


PORT_LABEL = re.compile(r"([a-z0-9]+)-([1-9][0-9]{0,4})")


@dataclass(frozen=True)
class Destination:
    kind: str  # "preview", "api" or "refused"
    sid: str = ""  # for a preview: its id, or "" when the name is not a preview's
    port: int | None = None  # another port of it ({id}-{port}); None: the main one

    @property
    def label(self) -> str:
        """The host's first label: what its cookies and tokens are bound to."""
        return self.sid if self.port is None else f"{self.sid}-{self.port}"


def preview_label(label: str) -> Destination:
    """`{id}` or `{id}-{port}` (a port 1 to 65535, no leading zero); else no preview."""
    if label and "." not in label and "-" not in label:
        return Destination("preview", label)
    found = PORT_LABEL.fullmatch(label)
    if found is None or int(found[2]) > 65535:
        return Destination("preview")
    return Destination("preview", found[1], int(found[2]))


def host_name(raw: bytes) -> str:
    """The host part of a Host header, lower-case, without port or trailing dot."""
    host = raw.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


class HostRules:
    def __init__(self, settings: Settings) -> None:
        self.domain = settings.domain.lower().rstrip(".")
        self.suffix = "." + self.domain
        self.any_api_host = "*" in settings.api_hosts
        public = (urlsplit(settings.public_url).hostname or "").lower()
        named = {h.lower().rstrip(".") for h in settings.api_hosts if h != "*"}
        self.api_hosts = named or {public, "localhost"} - {""}
        self.ip_literals = not named

    def classify_name(self, raw: str) -> Destination:
        """A preview's id (and port) from a host name (`host[:port]`), else no preview."""
        host = host_name(raw.encode("latin-1"))
        if host == self.domain or host.endswith(self.suffix):
            return preview_label(host[: -len(self.suffix)] if host != self.domain else "")
        return Destination("refused")

    def classify(self, scope: Scope) -> Destination:
        raw = header(scope, b"host")
        if raw is None:
            return Destination("api")  # HTTP/1.0 without Host: no name to rebind
        host = host_name(raw)
        if host == self.domain or host.endswith(self.suffix):
            return preview_label(host[: -len(self.suffix)] if host != self.domain else "")
        if self.any_api_host or host in self.api_hosts or scope.get("path") in PROBES:
            return Destination("api")
        if self.ip_literals and _ip_literal(host):
            return Destination("api")
        return Destination("refused")


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
