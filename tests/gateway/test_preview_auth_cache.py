"""gateway.proxy.preview_auth remembers Cookie headers it verified (a page's modules all
carry the same one): never longer than the cookie lives, never for another user, never
for a header it did not verify, and never unbounded."""

from __future__ import annotations

import time

import pytest

from gateway.proxy import preview_auth
from gateway.proxy.preview_auth import VERIFIED_HEADER_MAX, PreviewAuth
from gateway.proxy.signed import sign
from shared.settings import Settings

SECRET = "cache-test-secret"
SID = "a" * 16


def scope_with(*cookie_headers: str) -> dict[str, object]:
    return {"headers": [(b"cookie", h.encode()) for h in cookie_headers]}


def cookie(user: str, ttl: int, sid: str = SID) -> str:
    return f"pv_{sid}={sign(SECRET, preview_auth.COOKIE_PURPOSE, sid, user, ttl)}"


@pytest.fixture
def auth() -> PreviewAuth:
    return PreviewAuth(Settings.from_env({}, signing_secret=SECRET))


def test_a_verified_header_is_remembered_for_its_user_only(auth: PreviewAuth) -> None:
    scope = scope_with(cookie("alice", 60))
    assert auth.cookie_ok(SID, "alice", scope)
    assert auth.cookie_ok(SID, "alice", scope)  # from memory
    assert not auth.cookie_ok(SID, "bob", scope)
    assert not auth.cookie_ok("b" * 16, "alice", scope)  # another preview's host
    # A header that differs at all is verified afresh: a forged signature fails.
    forged = cookie("alice", 60)[:-2] + "xx"
    assert not auth.cookie_ok(SID, "alice", scope_with(forged))


def test_a_remembered_cookie_ends_when_it_expires(
    auth: PreviewAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    scope = scope_with(cookie("alice", 5))
    assert auth.cookie_ok(SID, "alice", scope)
    later = time.time() + 6
    monkeypatch.setattr(time, "time", lambda: later)  # the signature checks it too
    assert not auth.cookie_ok(SID, "alice", scope)


def test_junk_and_long_headers_are_not_remembered(auth: PreviewAuth) -> None:
    junk = scope_with(f"pv_{SID}=junk")
    assert not auth.cookie_ok(SID, "alice", junk)
    long = scope_with(f"pad={'x' * VERIFIED_HEADER_MAX}; {cookie('alice', 60)}")
    assert auth.cookie_ok(SID, "alice", long)
    assert auth._verified == {}
