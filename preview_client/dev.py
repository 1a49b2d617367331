"""`previewctl preview DIR`: a folder's preview in one command, with the public client only.

Packs the folder (refused before any call when over the upload limit), starts it as an
`archive` preview, shows the start's phases (a bar on a terminal, a line per phase
otherwise), prints `open_url`, then keeps the preview until Ctrl-C (which stops it and
frees the slot); with `watch`, each batch of saved files is sent so the dev server
hot-reloads.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from preview_client.archive import pack_folder
from preview_client.errors import (
    AuthError,
    GatewayUnreachable,
    NotFoundError,
    PreviewClientError,
    TooLargeError,
)
from preview_client.models import STEPS, Event
from preview_client.sync import PreviewClient
from preview_client.watch import Watcher

CHECK_EVERY = 10.0  # seconds between looks at the preview while idle (stopped elsewhere?)
BAR = 24


class ProgressView:
    """Renders start events: a redrawn bar on a terminal, one plain line per phase else."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.step: str | None = None
        self.drawn = False

    def __call__(self, event: Event) -> None:
        if event.type == "progress" and event.step:
            self.progress(event)
        elif event.type == "warning":
            self.line(f"warning: {event.message or event.data.get('type', '')}")
        elif event.type in ("ready", "error"):
            self.finish()

    def progress(self, event: Event) -> None:
        new_step = event.step != self.step
        if new_step:
            self.finish()
            self.step = event.step
        if not self.tty:
            if new_step:
                self.line(f"{event.step}: {event.message}".rstrip(": "))
            return
        number = STEPS.index(event.step) + 1 if event.step in STEPS else 0
        filled = BAR * event.percent // 100
        bar = "#" * filled + "-" * (BAR - filled)
        head = f"[{number}/{len(STEPS)}] {event.step:<12}"
        text = f"{head} [{bar}] {event.percent:>3}% {event.message}"
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.out.write("\r" + text[:width].ljust(width))
        self.out.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False

    def line(self, text: str) -> None:
        self.finish()
        self.out.write(text + "\n")
        self.out.flush()


@dataclass
class Options:
    folder: Path
    project_id: str
    open_browser: bool = False
    watch: bool = False
    detach: bool = False


def project_id_for(folder: Path) -> str:
    """A valid project id from a folder's name (the API's pattern: letters, digits and
    ._:@- , starting with a letter or digit)."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in folder.name)
    name = name.strip("._-")[:100]
    return name or "project"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_preview(client: PreviewClient, options: Options, out: TextIO) -> int:
    """The command's body; PreviewClientError for the caller to print as one line. Once
    the preview exists, any way out but --detach stops it (Ctrl-C, a failed start, an
    error): a preview nobody watches would hold one of the user's slots."""
    view = ProgressView(out, out.isatty())
    archive = pack_folder(options.folder, client.max_upload_bytes)  # before taking a slot
    preview = client.start(options.project_id, archive=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # a stopped command stops its preview
    keep = False
    try:
        sent = client.upload_archive(preview.id, archive)
        view.line(f"preview {preview.id}: {sent.files} files of {options.folder} sent")
        ready = client.wait_ready(preview.id, on_event=view)
        view.finish()
        out.write(f"ready: {ready.url}\n{ready.open_url}\n")
        out.flush()
        if options.open_browser:
            webbrowser.open(ready.open_url)
        if options.detach:
            keep = True
            return 0
        what = "watching for saved files; " if options.watch else ""
        out.write(f"{what}Ctrl-C stops the preview\n")
        out.flush()
        _keep(client, preview.id, options, view)
        return 1  # _keep returns only when the preview is gone
    except KeyboardInterrupt:
        view.finish()
        return 130
    finally:
        if not keep:
            _stop(client, preview.id, out)


def _stop(client: PreviewClient, preview_id: str, out: TextIO) -> None:
    try:
        client.stop(preview_id)
    except NotFoundError:
        return
    except PreviewClientError as exc:
        out.write(f"could not stop {preview_id}: {exc}\n")
        return
    out.write(f"stopped {preview_id}\n")
    out.flush()


def _keep(client: PreviewClient, preview_id: str, options: Options, view: ProgressView) -> None:
    """Until the preview disappears (or Ctrl-C): send saved files, look at the preview."""
    watcher = Watcher(options.folder) if options.watch else None
    checked = time.monotonic()

    def before_next_check() -> bool:
        return time.monotonic() - checked < CHECK_EVERY

    try:
        while True:
            if watcher is not None:
                batch = watcher.next_batch(before_next_check)
                if batch:
                    _send(client, preview_id, options.folder, batch, view)
            else:
                time.sleep(CHECK_EVERY)
            if not before_next_check():
                checked = time.monotonic()
                client.get(preview_id)
    except NotFoundError:
        view.line(f"preview {preview_id} was stopped elsewhere")


def _send(
    client: PreviewClient, preview_id: str, folder: Path, batch: list[str], view: ProgressView
) -> None:
    """One file as itself, several (or a link) as an archive: a link goes as a link, and
    one leading out of the folder not at all (never its target's content: `key ->
    ~/.ssh/id_rsa` in a cloned repo must not reach the container)."""
    try:
        if len(batch) == 1 and not (folder / batch[0]).is_symlink():
            client.write_file(preview_id, batch[0], (folder / batch[0]).read_bytes())
        else:
            client.upload_files(preview_id, folder, batch)
    except NotFoundError:
        raise
    except (PreviewClientError, OSError) as exc:
        # One failed save (a file over the limit, a container restarting) must not end
        # the session: say so and keep watching; the next save sends the file again.
        view.line(f"not sent ({', '.join(batch[:3])}): {exc}")
        return
    shown = ", ".join(batch[:5]) + (f" (+{len(batch) - 5})" if len(batch) > 5 else "")
    view.line(f"sent {shown}")


def user_name() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "developer"


def describe(exc: PreviewClientError) -> str:
    """The one line to show for a failure, saying what to do where we can."""
    if isinstance(exc, AuthError) and exc.status == 401:
        return f"the gateway refused the token: {exc.detail} (pass a fresh one with --token)"
    if isinstance(exc, GatewayUnreachable):
        return f"{exc}: is the gateway running (scripts/run)? --url names another one"
    if isinstance(exc, TooLargeError):
        return f"the gateway refused the upload: {exc.detail}: add large files to .gitignore"
    return str(exc)


def run(
    options: Options,
    url: str,
    token: str,
    max_upload_bytes: int,
    out: TextIO,
    err: TextIO,
) -> int:
    """`previewctl preview`: 0 (detached) or 130 (stopped with Ctrl-C) on success; one
    line on `err` and 1 (2 for a bad folder) otherwise."""
    if not options.folder.is_dir():
        err.write(f"previewctl: {options.folder}: no such folder\n")
        return 2
    try:
        with PreviewClient(url, token, max_upload_bytes=max_upload_bytes) as client:
            return run_preview(client, options, out)
    except PreviewClientError as exc:
        err.write(f"previewctl: {describe(exc)}\n")
        return 1
    except OSError as exc:  # the folder vanished or became unreadable meanwhile
        err.write(f"previewctl: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write("previewctl: interrupted\n")
        return 130
