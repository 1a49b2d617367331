"""What a folder's preview is made of: .gitignore honoured (by git in a work tree, by the
matcher elsewhere, the two agreeing), dependencies and build output never sent, links out
of the folder left behind, and the upload limit enforced before anything is sent."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from gateway.containers import archives
from preview_client import ArchiveTooLarge, pack, pack_folder, project_files
from preview_client.ignore import IgnoreFile, walk

TREE = {
    ".gitignore": "*.log\n!keep.log\n/secret.env\nlogs/\ndocs/**/*.tmp\n\\#hash\n",
    "package.json": "{}",
    "src/main.js": "x",
    "src/.gitignore": "generated/\n",
    "src/generated/big.js": "g",
    "a.log": "l",
    "keep.log": "k",
    "secret.env": "s",
    "sub/secret.env": "not anchored: kept",
    "logs/today.txt": "l",
    "docs/a/b/c.tmp": "t",
    "docs/a/b/c.md": "m",
    "#hash": "h",
    "node_modules/vite/index.js": "dep",
    "src/node_modules/x.js": "dep",
    "dist/assets/app.js": "build",
    ".next/cache/x": "build",
    ".svelte-kit/x": "build",
    "build.js": "a file named like a build folder is kept",
}
KEPT = [
    ".gitignore",
    "build.js",
    "docs/a/b/c.md",
    "keep.log",
    "package.json",
    "src/.gitignore",
    "src/main.js",
    "sub/secret.env",
]


def make_tree(root: Path) -> Path:
    for name, content in TREE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def test_gitignore_matcher_and_git_agree(tmp_path: Path) -> None:
    plain = make_tree(tmp_path / "plain")
    assert walk(plain) == KEPT
    assert project_files(plain) == KEPT
    repo = make_tree(tmp_path / "repo")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert project_files(repo) == KEPT  # git's own answer
    # A tracked file deleted from the work tree is not sent (it no longer exists).
    subprocess.run(["git", "-C", str(repo), "add", "package.json"], check=True)
    (repo / "package.json").unlink()
    assert "package.json" not in project_files(repo)


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.js", "a/b/c.js", False, True),
        ("/top.js", "a/top.js", False, None),
        ("a/*.js", "a/b/c.js", False, None),
        ("a/**/c.js", "a/b/d/c.js", False, True),
        ("**/cache", "x/y/cache", True, True),
        ("out/", "out", False, None),
        ("out/", "out", True, True),
        ("file[0-9].txt", "file7.txt", False, True),
        ("file[!0-9].txt", "file7.txt", False, None),
        ("?.md", "ab.md", False, None),
    ],
)
def test_gitignore_patterns(pattern: str, path: str, is_dir: bool, ignored: bool | None) -> None:
    assert IgnoreFile(pattern).verdict(path, is_dir) is ignored


def test_archive_passes_the_gateways_checks_and_leaves_links_out(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "app")
    os.symlink("src/main.js", root / "inside-link.js")
    os.symlink("/etc/passwd", root / "outside-link")
    os.symlink("../../etc", root / "up-link")
    packed = pack_folder(root)
    summary = archives.check(packed, 10**8)
    assert summary.files == len(KEPT) and summary.format == "tar.zst"
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {"inside-link.js": "src/main.js"}  # the links out stay behind


def test_over_the_limit_is_refused_before_sending(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    (root / "video.bin").write_bytes(os.urandom(300_000))
    with pytest.raises(ArchiveTooLarge) as refused:
        pack_folder(root, limit=100_000)
    assert "upload limit" in str(refused.value) and ".gitignore" in str(refused.value)
    (root / ".gitignore").write_text("*.bin\n")
    assert len(pack_folder(root, limit=100_000)) < 1000  # ignored: fits


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        pack_folder(tmp_path / "nope")


def test_git_absent_falls_back_to_the_matcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_tree(tmp_path / "repo")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert shutil.which("git")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert project_files(repo) == KEPT


def test_watcher_batches_saves_and_never_sends_a_link_target(tmp_path: Path) -> None:
    from preview_client.dev import ProgressView, _send
    from preview_client.watch import Watcher

    root = make_tree(tmp_path / "app")
    outside = tmp_path / "private-key"
    outside.write_text("PRIVATE")
    watcher = Watcher(root, interval=0.01, quiet=0.01)
    assert watcher.changed() == []
    (root / "src" / "main.js").write_text("saved")
    (root / "src" / "new.js").write_text("new")
    (root / "a.log").write_text("ignored")
    (root / "node_modules" / "vite" / "index.js").write_text("never")
    assert watcher.next_batch() == ["src/main.js", "src/new.js"]

    class Recorder:
        """Stands in for the client: records what would be sent."""

        max_upload_bytes = 10**6

        def __init__(self) -> None:
            self.sent: list[tuple[str, Any]] = []

        def write_file(self, sid: str, path: str, data: bytes) -> int:
            self.sent.append(("file", (path, data)))
            return len(data)

        def upload_files(self, sid: str, folder: Path, files: list[str]) -> None:
            self.sent.append(("archive", pack(folder, files)))

    os.symlink(outside, root / "key")
    assert watcher.next_batch() == ["key"]
    client = Recorder()
    _send(client, "sid", root, ["key"], ProgressView(io.StringIO(), False))  # type: ignore[arg-type]
    kind, archive = client.sent[0]
    assert kind == "archive"
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive)).read()
    assert b"PRIVATE" not in raw
    _send(client, "sid", root, ["src/main.js"], ProgressView(io.StringIO(), False))  # type: ignore[arg-type]
    assert client.sent[1] == ("file", ("src/main.js", b"saved"))
