"""`previewctl preview DIR` as a person uses it: a real Vite app folder is started through
the API, its page renders in Chromium, a local edit with --watch shows without a reload,
Ctrl-C stops the preview and frees the slot; bad input is one line and a non-zero exit."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from preview_client import Event, NotFoundError, PreviewClient
from preview_client.dev import ProgressView, project_id_for
from tests.e2e.conftest import Stack
from tests.gateway.api_helpers import token
from tests.utils import ROOT, GatewayProcess, free_port, wait_until

VITE_TEMPLATE = ROOT / "supervisor" / "templates" / "vite-vanilla"
EDITED_MAIN = """
document.querySelector("h1").textContent = "Edited on my disk";
if (import.meta.hot) { import.meta.hot.accept(); }
"""


def command_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # PREVIEW_STATE_DIR: no run record of this checkout's scripts/run may leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    return {**base, "PYTHONPATH": str(ROOT), "PREVIEW_STATE_DIR": str(tmp_path), **extra}


def previewctl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "preview", *args],
        env=command_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("previewctl: ")
    return lines[0]


def test_bad_input_is_one_clear_line(gateway: GatewayProcess, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text("{}")
    url = gateway.url

    missing = previewctl(tmp_path, str(tmp_path / "nope"), "--url", url, "--token", token("eve"))
    assert "no such folder" in one_line(missing) and missing.returncode == 2

    down = previewctl(tmp_path, str(app), "--url", f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the gateway" in one_line(down)

    expired = previewctl(tmp_path, str(app), "--url", url, "--token", token("eve", ttl=-60))
    assert "token expired" in one_line(expired)

    (app / "assets.bin").write_bytes(os.urandom(200_000))
    big = previewctl(
        tmp_path,
        str(app),
        "--url",
        url,
        PREVIEW_TOKEN=token("eve"),
        PREVIEW_MAX_UPLOAD_BYTES="100000",
    )
    assert "upload limit" in one_line(big) and ".gitignore" in one_line(big)
    with PreviewClient(url, token("eve")) as client:
        assert client.list() == []  # refused before anything started: no slot taken

    # A project whose dev server dies: the reason, and its slot given back.
    broken = tmp_path / "broken"
    broken.mkdir()
    scripts = {"dev": "echo the dev server gives up >&2; exit 3"}
    (broken / "package.json").write_text(json.dumps({"name": "b", "scripts": scripts}))
    failed = previewctl(tmp_path, str(broken), "--url", url, PREVIEW_TOKEN=token("eve"))
    assert "failed" in one_line(failed) and failed.returncode == 1
    assert "stopped" in failed.stdout
    with PreviewClient(url, token("eve")) as client:
        assert client.list() == []


def test_progress_bar_on_a_terminal_and_lines_otherwise() -> None:
    events = [
        Event("1-0", "progress", {"step": "files", "percent": 100, "message": "12 files"}),
        Event("2-0", "progress", {"step": "dependencies", "percent": 40, "message": "npm"}),
        Event("3-0", "progress", {"step": "dependencies", "percent": 100, "message": "done"}),
        Event("4-0", "warning", {"type": "slow", "message": "install is slow"}),
        Event("5-0", "progress", {"step": "devserver", "percent": 100, "message": "up"}),
        Event("6-0", "ready", {}),
    ]
    terminal, plain = io.StringIO(), io.StringIO()
    for out, tty in ((terminal, True), (plain, False)):
        view = ProgressView(out, tty)
        for event in events:
            view(event)
    assert "\r[2/3] dependencies [#########---------------]  40% npm" in terminal.getvalue()
    assert "[3/3] devserver" in terminal.getvalue() and terminal.getvalue().endswith("\n")
    assert plain.getvalue().splitlines() == [
        "files: 12 files",
        "dependencies: npm",
        "warning: install is slow",
        "devserver: up",
    ]
    assert project_id_for(Path("/x/My App (copy)")) == "My-App--copy"


class Output:
    """A subprocess's stdout, read line by line in a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def find(self, text: str) -> str | None:
        return next((line for line in self.lines if text in line), None)


@pytest.mark.slow
def test_vite_folder_renders_hot_reloads_and_stops(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    app = tmp_path / "my-vite-app"
    shutil.copytree(VITE_TEMPLATE, app)
    (app / ".gitignore").write_text("secret.env\n")
    (app / "secret.env").write_text("TOPSECRET=1\n")
    (app / "node_modules" / "vite").mkdir(parents=True)
    (app / "node_modules" / "vite" / "package.json").write_text("not json: never sent")
    user_token = stack.token("dana")
    # --open goes through webbrowser, which runs $BROWSER: here a script noting the URL.
    opened = tmp_path / "opened.txt"
    fake_browser = tmp_path / "browser.sh"
    fake_browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    fake_browser.chmod(0o755)
    env = command_env(
        tmp_path,
        PREVIEW_TOKEN=user_token,
        PREVIEW_PUBLIC_URL=stack.gateway.url,
        BROWSER=f"{fake_browser} %s",
    )
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "preview", str(app), "--watch", "--open"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = Output(process.stdout)
    try:
        open_url = wait_until(lambda: out.find("preview_token="), 300, "open_url printed")
        print(f"previewctl preview of a Vite folder: ready in {time.monotonic() - began:.1f}s")
        wait_until(lambda: opened.exists() and opened.read_text().strip() == open_url, 10, "--open")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        phases = [line.split(":")[0] for line in out.lines if ":" in line]
        assert [p for p in phases if p in ("files", "dependencies", "devserver")] == [
            "files",
            "dependencies",
            "devserver",
        ], out.lines
        sid = open_url.split("//", 1)[1].split(".", 1)[0]

        context = browser.new_context()
        page = context.new_page()
        page.goto(open_url)
        page.wait_for_selector("text=Hello from Vite", timeout=30_000)
        page.evaluate("window.__notReloaded = true")
        secret = page.evaluate("fetch('/secret.env').then(r => r.text())")
        assert "TOPSECRET" not in secret  # .gitignore'd: never uploaded

        wait_until(lambda: out.find("watching for saved files"), 10, "watching")
        (app / "main.js").write_text(EDITED_MAIN)
        page.wait_for_selector("text=Edited on my disk", timeout=30_000)
        assert page.evaluate("window.__notReloaded === true"), "reloaded instead of HMR"
        assert out.find("sent main.js")
        context.close()

        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=60) == 130
        out.thread.join(timeout=10)
        assert out.find(f"stopped {sid}"), out.lines
        stderr = process.stderr.read() if process.stderr else ""
        assert "Traceback" not in stderr, stderr
        with PreviewClient(stack.gateway.url, user_token) as client:
            assert client.list() == []  # the slot is free
            with pytest.raises(NotFoundError):
                client.get(sid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_a_terminal_gets_the_bar_and_detach_keeps_the_preview(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    app = tmp_path / "site"
    app.mkdir()
    server = "require('http').createServer((q, s) => s.end('hi')).listen(process.env.PORT)"
    (app / "server.js").write_text(server)
    scripts = {"dev": "node server.js"}
    (app / "package.json").write_text(json.dumps({"name": "site", "scripts": scripts}))
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "preview", str(app), "--detach"],
            env=command_env(tmp_path, PREVIEW_TOKEN=token("fay"), PREVIEW_PUBLIC_URL=gateway.url),
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
        )
        os.close(secondary)
        screen = b""
        while chunk := _read(primary):
            screen += chunk
        assert process.wait(timeout=30) == 0, screen
    finally:
        os.close(primary)
    text = screen.decode(errors="replace")
    assert "\r[1/3] files" in text and "\r[3/3] devserver" in text and "100%" in text, text
    assert "Traceback" not in text
    with PreviewClient(gateway.url, token("fay")) as client:
        (kept,) = client.list()  # --detach: still running
        assert kept.state == "ready" and kept.project_id == "site"
        client.stop(kept.id)


def _read(fd: int) -> bytes:
    """What the terminal shows next; b"" once the program closed it."""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: every writer closed the terminal
        return b""
