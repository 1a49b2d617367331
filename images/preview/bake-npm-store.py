#!/usr/bin/env python3
"""Lay out the npm tarballs that npm lockfiles pin, for a template image's baked store
(supervisor/depcache/npmstore.py, BAKED): OUT/<first two hex digits>/<sha512 hex>.

    bake-npm-store.py OUT CACHE LOCKFILE...

Only public-registry packages with a sha512 integrity, and only those this image can use
(Linux, x64, glibc: a lockfile lists every platform's optional binaries). Each tarball is
downloaded once into CACHE (reused by later builds), checked against its sha512, and
hard-linked or copied into OUT. Standard library only: it runs with the host's python3.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org/"


def usable(entry: dict[str, object]) -> bool:
    """Installable on this image (linux x64 glibc), as npm would decide."""
    for key, want in (("os", "linux"), ("cpu", "x64"), ("libc", "glibc")):
        allowed = entry.get(key)
        if isinstance(allowed, list) and allowed:
            if want not in allowed and not all(str(a).startswith("!") for a in allowed):
                return False
            if f"!{want}" in allowed:
                return False
    return True


def wanted(lockfile: Path) -> dict[str, str]:
    """sha512 hex -> tarball URL."""
    packages = json.loads(lockfile.read_text()).get("packages") or {}
    found: dict[str, str] = {}
    for name, entry in packages.items():
        if not name or not isinstance(entry, dict) or not usable(entry):
            continue
        resolved, integrity = entry.get("resolved"), str(entry.get("integrity") or "")
        if not isinstance(resolved, str) or not resolved.startswith(REGISTRY):
            continue
        for part in integrity.split():
            if part.startswith("sha512-"):
                found[base64.b64decode(part[7:]).hex()] = resolved
    return found


def fetch(url: str, digest: str, cache: Path) -> Path:
    cached = cache / digest[:2] / digest
    if cached.exists() and hashlib.sha512(cached.read_bytes()).hexdigest() == digest:
        return cached
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    if hashlib.sha512(data).hexdigest() != digest:
        raise SystemExit(f"{url}: sha512 does not match its lockfile")
    cached.parent.mkdir(parents=True, exist_ok=True)
    temp = cached.with_suffix(".tmp")
    temp.write_bytes(data)
    os.replace(temp, cached)
    return cached


def main() -> int:
    out, cache, *lockfiles = (Path(a) for a in sys.argv[1:])
    tarballs: dict[str, str] = {}
    for lockfile in lockfiles:
        tarballs.update(wanted(lockfile))
    total = 0
    for digest, url in sorted(tarballs.items()):
        source = fetch(url, digest, cache)
        target = out / digest[:2] / digest
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        total += target.stat().st_size
    print(f"{len(tarballs)} tarballs, {total >> 20} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
