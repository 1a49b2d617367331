"""Logging: JSON lines with lifted fields, text on a terminal, secrets redacted, rotation."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from gateway.observability.logs import JsonFormatter, TextFormatter, configure_logging
from shared.redact import public_url, redact, scrub, url_secrets
from shared.settings import Settings

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def make_record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"failed with Authorization: Bearer {JWT}")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("gateway.test", logging.INFO, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        (f"token {JWT} used", JWT),
        ("GET /x?preview_token=abc123def&x=1", "abc123def"),
        ("redis://:s3cr3tpw@10.0.0.1:6379/0", "s3cr3tpw"),
        ("redis://pvc-1:hunter2@host:6379", "hunter2"),
        ("Authorization: Bearer opaque-token-value", "opaque-token-value"),
        ("cookie: pv_abc=signedvalue; other=1", "signedvalue"),
        ("sent Cookie: session=xyz789", "xyz789"),
        ("password=letmein and secret=shh", "letmein"),
        # Git URLs: a token as the user name, and GitLab's query token.
        ("fetching https://ghp_tokenvalue1@github.com/o/r.git", "ghp_tokenvalue1"),
        ("fatal: https://h/r.git?private_token=glpat-abc123/ not valid", "glpat-abc123"),
    ],
)
def test_redact_removes_secrets(raw: str, secret: str) -> None:
    assert secret not in redact(raw)
    assert "[redacted]" in redact(raw)


def test_a_git_urls_credentials_in_any_form() -> None:
    url = "https://bob:p%40ss-word@git.example.com/team/app.git?private_token=tok-123&ref=main"
    secrets = url_secrets(url)
    assert {"bob", "p%40ss-word", "p@ss-word", "tok-123"} <= set(secrets)
    shown = public_url(url)
    assert shown.startswith("https://git.example.com/team/app.git?private_token=")
    # git quotes the URL percent-decoded, or only the user name, or only the query.
    echoed = "bob@git.example.com p@ss-word 'https://git.example.com/?private_token=tok-123'"
    assert all(secret not in scrub(echoed, secrets) for secret in secrets)
    assert all(secret not in shown for secret in secrets)


def test_redact_leaves_ordinary_text() -> None:
    line = "preview started sid=abc user=alice project=p1 from_pool=True acquire_ms=12"
    assert redact(line) == line


def test_json_lines_lift_lifecycle_fields_and_redact() -> None:
    record = make_record(
        "preview start failed sid=%s user=%s reason=%r url=%s",
        "s1",
        "alice",
        "Module not found: 'react-dom'",
        f"http://x/?preview_token={JWT}",
        exc=True,
    )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["sid"] == "s1" and entry["user"] == "alice"
    assert entry["reason"] == "Module not found: 'react-dom'"
    assert entry["level"] == "info" and entry["logger"] == "gateway.test"
    assert JWT not in line
    assert "RuntimeError" in entry["exc"]


def test_extra_fields_are_kept() -> None:
    record = make_record("hello")
    record.sid = "s9"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["sid"] == "s9"


def test_text_on_a_terminal_json_otherwise(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        tty = Tty()
        configure_logging(Settings.from_env({}), stream=tty)
        logging.getLogger("t").warning("user=alice token=%s", JWT)
        assert "WARNING t user=alice" in tty.getvalue()
        assert JWT not in tty.getvalue()

        pipe = io.StringIO()
        configure_logging(Settings.from_env({}), stream=pipe)
        logging.getLogger("t").warning("plain")
        assert json.loads(pipe.getvalue())["message"] == "plain"
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], level = saved
        root.setLevel(level)


def test_log_file_is_json_and_rotated(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    settings = Settings.from_env(
        {}, log_file=str(path), log_file_max_bytes=2000, log_file_backups=2, log_format="text"
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(settings, stream=io.StringIO())
        for i in range(60):
            logging.getLogger("rot").info("line %d password=%s", i, "topsecret")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], level = saved
        root.setLevel(level)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    for name in files:
        text = (tmp_path / name).read_text()
        assert "topsecret" not in text
        assert all(json.loads(line)["logger"] == "rot" for line in text.splitlines())
    assert all((tmp_path / n).stat().st_size <= 2000 for n in files)


def test_text_formatter_redacts_tracebacks() -> None:
    out = TextFormatter().format(make_record("boom", exc=True))
    assert "RuntimeError" in out and JWT not in out
