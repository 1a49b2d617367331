"""Which address is the client's (gateway/proxy/clients.py): the rightmost X-Forwarded-For hop
that is not a trusted proxy, and only when the TCP peer is one."""

from __future__ import annotations

import pytest

from gateway.proxy.clients import ClientResolver
from shared.settings import Settings, SettingsError

TRUSTED = ("10.0.0.0/8", "::1", "fd00::/8")


def resolved(peer: str, *forwarded: str, proto: str | None = None) -> tuple[str, str]:
    headers = [(b"x-forwarded-for", f.encode()) for f in forwarded]
    if proto:
        headers.append((b"x-forwarded-proto", proto.encode()))
    scope = {"type": "http", "client": (peer, 5555), "scheme": "http", "headers": headers}
    ClientResolver(TRUSTED).resolve(scope)
    return scope["client"][0], scope["scheme"]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", ("1.2.3.4",), "203.0.113.9"),  # an untrusted peer's word is ignored
        ("10.0.0.1", (), "10.0.0.1"),
        ("10.0.0.1", ("1.2.3.4",), "1.2.3.4"),
        ("10.0.0.1", ("6.6.6.6, 1.2.3.4",), "1.2.3.4"),  # the client's own entry is left
        ("10.0.0.1", ("6.6.6.6", "1.2.3.4, 10.0.0.7"), "1.2.3.4"),  # two proxies, two lines
        ("10.0.0.1", ("10.0.0.9, 10.0.0.7",), "10.0.0.9"),  # all trusted: the leftmost
        ("10.0.0.1", ("1.2.3.4, garbage",), "10.0.0.1"),  # garbage: the last trusted hop
        ("10.0.0.1", ("[2001:db8::1]:443",), "2001:db8::1"),
        ("10.0.0.1", ("1.2.3.4:8080",), "1.2.3.4"),
        ("::1", ("2001:DB8::2",), "2001:db8::2"),
        ("fd00::5", ("",), "fd00::5"),
    ],
)
def test_the_client_address(peer: str, forwarded: tuple[str, ...], client: str) -> None:
    assert resolved(peer, *forwarded)[0] == client


def test_the_scheme_from_a_trusted_proxy_only() -> None:
    assert resolved("10.0.0.1", proto="https")[1] == "https"
    assert resolved("10.0.0.1", proto="gopher")[1] == "http"
    assert resolved("203.0.113.9", proto="https")[1] == "http"


def test_nothing_is_trusted_by_default() -> None:
    assert Settings().trusted_proxies == ()
    with pytest.raises(SettingsError, match="PREVIEW_TRUSTED_PROXIES"):
        Settings.from_env({"PREVIEW_TRUSTED_PROXIES": "10.0.0.0/8,proxy.internal"})
