"""Reset's restore of app's home and the shared temporary directories (supervisor/scrub.py),
on directories of the test's own: what user code planted goes, symlinks are removed and
never followed, locked directories are no obstacle, root's own entries stay."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from supervisor import scrub


def own(path: Path, owner: tuple[int, int]) -> None:
    os.lchown(path, *owner)


def test_restore_leaves_nothing_app_wrote_and_follows_no_symlink(
    tmp_path: Path, sup_app_user: str
) -> None:
    if not sup_app_user:
        pytest.skip("needs root and a real app user")
    entry = pwd.getpwnam(sup_app_user)
    owner = (entry.pw_uid, entry.pw_gid)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("root's")
    skel = tmp_path / "skel"
    (skel / ".config").mkdir(parents=True)
    (skel / ".bashrc").write_text("# image\n")
    (skel / ".config" / "kept").write_text("image")

    home = tmp_path / "home"
    (home / ".config" / "evil").mkdir(parents=True)
    (home / ".bashrc").write_text("# image\nnode ~/x.js\n")
    (home / ".npmrc").write_text("node-options=--require=/home/app/x.js\n")
    (home / ".config" / "evil" / "x").write_text("x")
    (home / "outside-link").symlink_to(outside)
    for path in [home, *home.rglob("*")]:
        own(path, owner)
    (home / ".config" / "evil").chmod(0)
    home.chmod(0o500)

    shared = tmp_path / "tmp"
    (shared / "root-dir").mkdir(parents=True)
    (shared / "root-file").write_text("root's")
    (shared / "root-dir" / "planted").write_text("x")
    own(shared / "root-dir" / "planted", owner)
    (shared / "locked" / "deeper").mkdir(parents=True)
    (shared / "locked" / "deeper" / "x").write_text("x")
    (shared / "link").symlink_to(outside / "precious")
    for path in [shared / "locked", *(shared / "locked").rglob("*"), shared / "link"]:
        own(path, owner)
    (shared / "locked" / "deeper").chmod(0)
    (shared / "locked").chmod(0)
    workspace = tmp_path / "workspace"
    workspace.mkdir(mode=0o700)

    missing = tmp_path / "not-mounted"
    scrub.restore(home, workspace, owner, shared=[shared, missing], skeleton=skel)

    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == [
        ".bashrc",
        ".config",
        ".config/kept",
    ]
    assert (home / ".bashrc").read_text() == "# image\n"
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [home, *home.rglob("*")]} == {owner}
    assert sorted(p.name for p in shared.iterdir()) == ["root-dir", "root-file"]
    assert list((shared / "root-dir").iterdir()) == []
    assert (outside / "precious").read_text() == "root's"  # links removed, not followed
    for directory in (home, workspace):
        st = directory.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (owner[0], 0o755)
