"""Preview auth cookies, and keeping the dev servers' cookies away from them.

Every preview host shares the parent domain PREVIEW_DOMAIN, so a page of preview A could
otherwise set a cookie for all of them: shadow B's auth cookie with junk (B answers 401)
or pile up kilobytes of cookies that every other preview then sends (431). So:

- a dev server's ``Set-Cookie`` loses its ``Domain`` (host-only: it reaches its own
  preview only), and one named like ours (``pv_*``, ``__Host-pv_*``, any case) is dropped;
- on the way in, any valid auth cookie among duplicates is accepted (a page's JavaScript
  can still set parent-domain junk with ``document.cookie``; it comes first in the header
  when it is older);
- on https the cookie is ``__Host-pv_{id}`` (Secure, Path=/, no Domain), which the browser
  lets no other host set or shadow;
- the login response expires parent-domain cookies the request carried, so an owner whose
  preview drowns in another page's cookies gets it back by opening it again.
"""

from __future__ import annotations

from collections.abc import Iterator

OUR_PREFIXES = ("pv_", "__host-pv_", "__secure-pv_")
HOST_PREFIX = "__Host-"
# Auth cookies verified per request at most (an HMAC each). Junk with a longer Path is sent
# before ours, one per path level, so a deep path's worth.
MAX_CANDIDATES = 64
MAX_EXPIRED = 64  # parent-domain cookie names expired by one login response at most


def cookie_name(sid: str, https: bool, kind: str = "pv_") -> str:
    """The owner's cookie (``pv_``), a share viewer's (``pv_s_``) or the notice's seen mark
    (``pv_n_``) for one host: all named like ours, so never sent to nor set by a dev server."""
    return f"{HOST_PREFIX}{kind}{sid}" if https else f"{kind}{sid}"


def is_ours(name: str) -> bool:
    return name.strip().lower().startswith(OUR_PREFIXES)


def pairs(headers: list[tuple[bytes, bytes]]) -> Iterator[tuple[str, str]]:
    """(name, value) of every cookie in the request's Cookie headers, in order."""
    for key, raw in headers:
        if key != b"cookie":
            continue
        for part in bytes(raw).decode("latin-1").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                yield name.strip(), value.strip()


def candidates(headers: list[tuple[bytes, bytes]], sid: str, kind: str = "pv_") -> list[str]:
    """Values of every cookie named as this preview's (either spelling), first to last."""
    names = {cookie_name(sid, False, kind), cookie_name(sid, True, kind)}
    found = [value for name, value in pairs(headers) if name in names]
    return found[:MAX_CANDIDATES]


def strip_ours(header: bytes) -> bytes:
    """A Cookie header without any cookie named like ours: they never reach a dev server."""
    kept = []
    for part in header.split(b";"):
        part = part.strip()
        if part and not is_ours(part.partition(b"=")[0].decode("latin-1")):
            kept.append(part)
    return b"; ".join(kept)


def upstream_set_cookie(value: bytes) -> bytes | None:
    """A dev server's Set-Cookie made host-only, or None when it is named like ours.

    A nameless cookie (``=pv_x=junk``) is sent by browsers as its bare value, which reads
    as ``pv_x=junk``: its name is taken from the value then.
    """
    pair, _, attributes = value.partition(b";")
    apparent = pair.strip().lstrip(b"=").partition(b"=")[0]
    if is_ours(apparent.decode("latin-1")):
        return None
    kept = [pair]
    for attribute in attributes.split(b";"):
        if attribute.partition(b"=")[0].strip().lower() != b"domain":
            kept.append(attribute)
    return b";".join(kept)


def expire_parent_cookies(
    headers: list[tuple[bytes, bytes]], domain: str, secure: bool
) -> list[tuple[bytes, bytes]]:
    """Set-Cookie headers that delete, for ``domain`` and Path=/, every cookie the request
    carried.

    No cookie is ever set for the parent domain legitimately (ours are host-only, dev
    servers' are made host-only), so each such cookie is another page's planting (a junk
    ``pv_{id}`` shadowing ours among them); a host-only cookie of the same name is a
    different cookie and stays. Both the plain and the partitioned (CHIPS) jar are
    cleared: a page in an iframe plants in the latter. (``__Host-`` cookies cannot have a
    Domain, so none is on the parent.)
    """
    names: list[str] = []
    for name, _ in pairs(headers):
        if name not in names and _token(name) and not name.lower().startswith("__host-"):
            names.append(name)
    tail = f"; Domain={domain}; Path=/; Max-Age=0"
    if secure:
        tail += "; Secure; SameSite=None"
    out = []
    for name in names[:MAX_EXPIRED]:
        out.append((b"set-cookie", f"{name}={tail}".encode("latin-1")))
        if secure:
            out.append((b"set-cookie", f"{name}={tail}; Partitioned".encode("latin-1")))
    return out


def _token(name: str) -> bool:
    """A name we can write back in a Set-Cookie as is (RFC 6265 token characters)."""
    return bool(name) and all(33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?={}' for c in name)
