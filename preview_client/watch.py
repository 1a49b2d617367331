"""Noticing saved files by polling their mtimes (no dependency, works on every file
system, including network mounts where inotify is silent). A burst of saves (an editor's
"save all", a formatter) is sent as one batch once the folder is quiet again."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from preview_client.ignore import project_files

Snapshot = dict[str, tuple[int, int]]


class Watcher:
    def __init__(self, root: Path, interval: float = 0.25, quiet: float = 0.15) -> None:
        self.root = root
        self.interval = interval
        self.quiet = quiet  # how long the folder must stay unchanged to end a batch
        self.snapshot = self.scan()

    def scan(self) -> Snapshot:
        found: Snapshot = {}
        for relative in project_files(self.root):
            try:
                info = os.stat(self.root / relative)
            except OSError:
                continue
            found[relative] = (info.st_mtime_ns, info.st_size)
        return found

    def changed(self) -> list[str]:
        """Files new or modified since the last look (deletions cannot be sent: the API
        writes files, it does not remove them)."""
        current = self.scan()
        changed = [name for name, mark in current.items() if self.snapshot.get(name) != mark]
        self.snapshot = current
        return sorted(changed)

    def next_batch(self, keep_going: Callable[[], bool] = lambda: True) -> list[str]:
        """Block until something changed and the folder is quiet; [] when `keep_going`
        turned false first."""
        batch: set[str] = set()
        while keep_going():
            found = self.changed()
            if found:
                batch.update(found)
                time.sleep(self.quiet)
                continue
            if batch:
                return sorted(batch)
            time.sleep(self.interval)
        return sorted(batch)
