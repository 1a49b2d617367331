"""Which files of a folder make its preview: `.gitignore` honoured, dependencies and build
output always left out (the container installs and builds its own).

In a git work tree git itself answers (`git ls-files --cached --others --exclude-standard`:
tracked files plus untracked ones not ignored, with every ignore source git knows).
Elsewhere a small matcher reads the `.gitignore` files: patterns with `*`, `?`, `[...]`,
`**`, a leading or inner `/` anchoring to the file's folder, a trailing `/` for folders
only, `!` re-including; an excluded folder is not entered, so nothing under it comes
back (git's rule too).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Never uploaded, whatever .gitignore says: installed dependencies and build output.
ALWAYS_SKIP = frozenset(
    {
        ".git",
        "node_modules",
        ".next",
        ".nuxt",
        ".output",
        ".svelte-kit",
        ".vite",
        ".turbo",
        ".parcel-cache",
        ".cache",
        "dist",
        "build",
        "out",
        "coverage",
        ".vercel",
        ".netlify",
    }
)


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    negated: bool
    folders_only: bool


def _translate(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i) and (i == 0 or glob[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in glob[i + 2 :]:
            end = glob.index("]", i + 2)
            body = glob[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def parse_rule(line: str) -> Rule | None:
    """One .gitignore line as a rule; None for blanks and comments."""
    line = line.rstrip("\n").rstrip("\r")
    if not line.endswith("\\ "):
        line = line.rstrip(" ")
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated or line.startswith("\\!") or line.startswith("\\#"):
        line = line[1:]
    folders_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    line = line.lstrip("/")
    prefix = "" if anchored else "(?:.*/)?"
    return Rule(re.compile(f"^{prefix}{_translate(line)}$"), negated, folders_only)


class IgnoreFile:
    """The rules of one .gitignore, matching paths relative to its folder."""

    def __init__(self, text: str) -> None:
        self.rules = [r for r in map(parse_rule, text.splitlines()) if r is not None]

    def verdict(self, relative: str, is_dir: bool) -> bool | None:
        """True ignored, False re-included, None when no rule speaks (last one wins)."""
        for rule in reversed(self.rules):
            if rule.folders_only and not is_dir:
                continue
            if rule.regex.match(relative):
                return not rule.negated
        return None


def _read_rules(folder: Path) -> IgnoreFile | None:
    try:
        return IgnoreFile((folder / ".gitignore").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def walk(root: Path) -> list[str]:
    """Files under `root` (relative, `/`-separated, sorted) that .gitignore keeps."""
    found: list[str] = []
    # Each folder sees the .gitignore files of itself and its parents (deepest decides).
    stack: list[tuple[Path, list[tuple[str, IgnoreFile]]]] = [(root, [])]
    while stack:
        folder, inherited = stack.pop()
        rel_folder = folder.relative_to(root).as_posix()
        base = "" if rel_folder == "." else rel_folder + "/"
        own = _read_rules(folder)
        scopes = [*inherited, (base, own)] if own else inherited
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and entry.name in ALWAYS_SKIP:
                continue
            relative = base + entry.name
            if _ignored(scopes, relative, is_dir):
                continue
            if is_dir:
                stack.append((Path(entry.path), scopes))
            elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                found.append(relative)
    return sorted(found)


def _ignored(scopes: list[tuple[str, IgnoreFile]], relative: str, is_dir: bool) -> bool:
    for base, rules in reversed(scopes):
        verdict = rules.verdict(relative[len(base) :], is_dir)
        if verdict is not None:
            return verdict
    return False


def git_files(root: Path) -> list[str] | None:
    """The files git would keep, relative to `root`; None when `root` is not in a work
    tree (or git is missing)."""
    if shutil.which("git") is None:
        return None
    try:
        inside = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
            cwd=root,
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = {n.decode("utf-8", "surrogateescape") for n in listed.stdout.split(b"\0") if n}
    return sorted(n for n in names if not _skipped(n) and os.path.lexists(root / n))


def _skipped(relative: str) -> bool:
    return any(part in ALWAYS_SKIP for part in relative.split("/")[:-1])


def project_files(root: Path) -> list[str]:
    """The files of the project in `root`, relative and sorted: git's list in a work tree
    (a file deleted but still tracked is left out), else the .gitignore walk."""
    listed = git_files(root)
    return walk(root) if listed is None else listed
