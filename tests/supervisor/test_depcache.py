"""The host dependency cache through real supervisors and real npm installs: a fresh
install is packed, the next start restores it; a corrupt archive falls back to an
install and is replaced; two starts of one new project pack once; the volume stays under
its bound."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.messages import CommandResult
from supervisor.depcache import archive
from supervisor.depcache.cachevolume import CacheVolume
from tests.supervisor.conftest import SupervisorProcess, b64, make_dir, temporary_user
from tests.supervisor.test_daemon import get, prepare_args
from tests.utils import async_wait_until

PACKAGE_JSON = {
    "name": "cache-demo",
    "version": "1.0.0",
    "private": True,
    "scripts": {"dev": "node server.js"},
    "dependencies": {"is-number": "7.0.0", "semver": "7.6.3"},
}
LOCKFILE = {
    "name": "cache-demo",
    "version": "1.0.0",
    "lockfileVersion": 3,
    "requires": True,
    "packages": {
        "": {
            "name": "cache-demo",
            "version": "1.0.0",
            "dependencies": {"is-number": "7.0.0", "semver": "7.6.3"},
        },
        "node_modules/is-number": {
            "version": "7.0.0",
            "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz",
            "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004"
            "MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
            "license": "MIT",
            "engines": {"node": ">=0.12.0"},
        },
        "node_modules/semver": {
            "version": "7.6.3",
            "resolved": "https://registry.npmjs.org/semver/-/semver-7.6.3.tgz",
            "integrity": "sha512-oVekP1cKtI+CTDvHWYFUcMtsK/00wmAEfyqKfNdARm8u1wNVhSgaX7A8"
            "d4UuIlUI5e84iEwOhs7ZPYRmzU9U6A==",
            "license": "ISC",
            "bin": {"semver": "bin/semver.js"},
            "engines": {"node": ">=10"},
        },
    },
}
SERVER = (
    "const semver = require('semver'), isNumber = require('is-number');\n"
    "require('http').createServer((q, s) => s.end(`semver ${semver.inc('1.2.3', 'minor')} "
    "${isNumber(5)}`)).listen(Number(process.env.PORT));\n"
)
ANSWER = "semver 1.3.0 true"


def project_files() -> dict[str, str]:
    files = {
        "package.json": json.dumps(PACKAGE_JSON),
        "package-lock.json": json.dumps(LOCKFILE, indent=2),
        "server.js": SERVER,
    }
    return {path: b64(text) for path, text in files.items()}


async def start(sup: SupervisorProcess, session: str, **extra: Any) -> CommandResult:
    assert (await sup.send("write_files", {"files": project_files()})).ok
    result = await sup.send("prepare", prepare_args(session_id=session, **extra), timeout=120)
    assert result.ok, (result, sup.log()[-3000:])
    return result


def cache_dir(sup: SupervisorProcess) -> Path:
    return Path(sup.env["PREVIEW_CACHE_DIR"])


def archives(cache: Path) -> list[Path]:
    return sorted((cache / "deps/v1").glob("*/*.tar.zst"))


async def wait_log(
    sup: SupervisorProcess, pattern: str, count: int = 1, timeout: float = 60
) -> None:
    async def seen() -> bool:
        return len(re.findall(pattern, sup.log())) >= count

    await async_wait_until(seen, timeout, f"{count}x {pattern!r} in the supervisor log")


def valid(path: Path) -> archive.ArchiveInfo:
    fd = os.open(path, os.O_RDONLY)
    try:
        info = archive.read_info(fd)
        for _ in archive.decompressed(fd, info):
            pass
        return info
    finally:
        os.close(fd)


async def test_installed_then_restored_from_the_host_cache(
    sup_factory: Any, sup_app_user: str
) -> None:
    sup: SupervisorProcess = sup_factory()
    cache = cache_dir(sup)
    first = await start(sup, "s1")
    assert first.result["dependencies"] == "installed"
    report = first.result["dependency_cache"]
    assert report["scope"] == "shared" and report["pack"] == "packing", report
    assert get(sup) == ANSWER
    await wait_log(sup, r"packed npm-node\d+-")
    [stored] = archives(cache)
    assert stored.name == report["key"] + ".tar.zst" and valid(stored).entries > 50
    # The npm tarballs of the install, taken back into the host store, by their sha512.
    store = cache / "npm"

    async def harvested() -> bool:
        return len(list(store.glob("*/*"))) == 2

    await async_wait_until(harvested, 20, "two npm tarballs in the host store")
    for tarball in store.glob("*/*"):
        assert hashlib.sha512(tarball.read_bytes()).hexdigest() == tarball.name
    if sup_app_user:  # user code can neither read nor write the host's archives
        for private in (cache / "deps", cache / "npm"):
            st = private.stat()
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700

    assert (await sup.send("reset", {"keep_node_modules": False})).ok
    assert list(sup.workspace.iterdir()) == []
    started = time.monotonic()
    second = await start(sup, "s2")
    assert second.result["dependencies"] == "restored", second.result
    assert second.result["dependency_cache"]["restore_ms"] >= 0
    # Unpacked from the archive; a tree is kept beside it only where reflinks work (not
    # on this test's filesystem, as a rule), and nothing half-made is ever left.
    assert second.result["dependency_cache"]["restored_by"] == "restored"
    assert list((cache / "deps/ttmp").iterdir()) == []
    assert get(sup) == ANSWER
    print(f"\nrestored start: {time.monotonic() - started:.2f}s {second.result['timings_ms']}")
    bin_link = sup.workspace / "node_modules/.bin/semver"
    assert os.readlink(bin_link) == "../semver/bin/semver.js" and os.access(bin_link, os.X_OK)
    if sup_app_user:
        uid = pwd.getpwnam(sup_app_user).pw_uid
        for path in [sup.workspace / "node_modules", *(sup.workspace / "node_modules").rglob("*")]:
            assert path.lstat().st_uid == uid, path
    assert "restored from the host cache" in "\n".join(
        (await sup.send("logs", {"lines": 50})).result["lines"]
    )

    # The environment is part of the key: a miss. Installed offline, which only works
    # because the install's fresh npm cache was seeded from the host's tarballs.
    assert (await sup.send("reset", {"keep_node_modules": False})).ok
    third = await start(sup, "s3", env={"npm_config_offline": "true"})
    assert third.result["dependencies"] == "installed"
    assert third.result["dependency_cache"]["key"] != report["key"]
    assert get(sup) == ANSWER


async def test_corrupt_archive_falls_back_to_an_install_and_is_replaced(
    sup_factory: Any,
) -> None:
    sup: SupervisorProcess = sup_factory()
    await start(sup, "s1")
    await wait_log(sup, r"packed npm-node")
    [stored] = archives(cache_dir(sup))
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF  # same size, same trailer: only the checksum knows
    stored.write_bytes(bytes(damaged))

    assert (await sup.send("reset", {"keep_node_modules": False})).ok
    second = await start(sup, "s2")
    assert second.result["dependencies"] == "installed", second.result
    assert get(sup) == ANSWER  # a working node_modules, not half a restored one
    assert re.search(r"corrupt archive npm-node\S+ removed: zstd: .*checksum", sup.log())
    lines = (await sup.send("logs", {"lines": 100})).result["lines"]
    assert any("the cached node_modules archive was bad" in line for line in lines)
    await wait_log(sup, r"packed npm-node", count=2)  # and a good one took its place
    [replaced] = archives(cache_dir(sup))
    # A new file, readable to its end (a freed inode number may be reused: not a test).
    assert replaced.read_bytes() != bytes(damaged) and valid(replaced).entries > 50
    leftovers = [p.name for p in sup.workspace.iterdir() if p.name.startswith(".node_modules")]
    assert leftovers == []


@pytest.fixture(scope="session")
def second_app_user(sup_app_user: str) -> Iterator[str]:
    """Each supervisor kills every process of its app user around an install (in a
    container those are its own); two on one host need a user each."""
    if not sup_app_user:
        yield ""
        return
    with temporary_user() as name:
        yield name


async def test_two_starts_of_one_new_project_pack_it_once(
    sup_factory: Any, second_app_user: str
) -> None:
    shared = make_dir("pv-sup-shared-cache-")
    try:
        one: SupervisorProcess = sup_factory(PREVIEW_CACHE_DIR=str(shared))
        two: SupervisorProcess = sup_factory(
            PREVIEW_CACHE_DIR=str(shared), PREVIEW_APP_USER=second_app_user
        )
        results = await asyncio.gather(start(one, "s1"), start(two, "s2"))
        assert [r.result["dependencies"] for r in results] == ["installed", "installed"]
        done = r"packed npm-node|skipped: already in the cache"
        await asyncio.gather(wait_log(one, done), wait_log(two, done))
        logs = one.log() + two.log()
        assert len(re.findall(r"packed npm-node", logs)) == 1, logs[-4000:]
        assert len(re.findall(r"skipped: already in the cache", logs)) == 1
        assert len(archives(shared)) == 1 and list((shared / "deps/tmp").iterdir()) == []
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["rm", "-rf", str(shared)], check=False)


def fake_key(n: int) -> str:
    return f"npm-node0-x8664-{n:02x}" + hashlib.sha1(str(n).encode()).hexdigest()[2:]


def aged(path: Path, age: float) -> Path:
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def fake_archive(volume: CacheVolume, n: int, size: int, age: float) -> Path:
    path = volume.archive_path(fake_key(n))
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return aged(path, age)


def test_eviction_removes_the_least_recently_used_first() -> None:
    root = make_dir("pv-sup-evict-")
    try:
        volume = CacheVolume.open(root)
        paths = [fake_archive(volume, n, 1000, age) for n, age in enumerate([50, 40, 30, 20])]
        os.utime(paths[0])  # the oldest was just restored: now the most recent
        usage = volume.evict(2500)
        assert usage.bytes == 2000 and usage.removed == 2
        assert [p.exists() for p in paths] == [True, False, False, True]
        assert volume.evict(0).bytes == 0 and not any(p.exists() for p in paths)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def fake_tree(volume: CacheVolume, n: int, size: int, age: float) -> Path:
    """A tree as ``store_tree`` leaves it: a directory and its size beside it."""
    path = volume.tree_path(fake_key(n))
    (path / "pkg").mkdir(parents=True)
    (path / "pkg/index.js").write_bytes(b"x" * 10)
    path.with_name(path.name + ".bytes").write_text(f"{size}\n")
    return aged(path, age)


def test_eviction_counts_trees_by_their_size_and_removes_them_whole() -> None:
    root = make_dir("pv-sup-evict-")
    try:
        volume = CacheVolume.open(root)
        old_tree = fake_tree(volume, 1, 5000, 50)
        archive_path = fake_archive(volume, 2, 1000, 40)
        new_tree = fake_tree(volume, 3, 3000, 30)
        assert volume.usage().bytes == 9000 and volume.usage().files == 3
        usage = volume.evict(3500)
        assert (usage.removed, usage.freed, usage.bytes) == (2, 6000, 3000)
        assert not old_tree.exists() and not archive_path.exists() and new_tree.exists()
        assert not old_tree.with_name(old_tree.name + ".bytes").exists()
        assert list(volume.tree_tmp.iterdir()) == []  # renamed aside, then removed
        volume.drop_tree(new_tree.name)
        assert volume.usage().files == 0
        # A tree without its size (a damaged volume) goes at the next trim, bound or not.
        sizeless = fake_tree(volume, 4, 100, 10)
        sizeless.with_name(sizeless.name + ".bytes").unlink()
        kept = fake_archive(volume, 5, 100, 20)
        assert volume.evict(10_000).removed == 1
        assert not sizeless.exists() and kept.exists()
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


async def test_a_pack_keeps_the_volume_under_its_bound(sup_factory: Any) -> None:
    bound = 200_000
    sup: SupervisorProcess = sup_factory(start=False, PREVIEW_CACHE_MAX_BYTES=str(bound))
    volume = CacheVolume.open(cache_dir(sup))
    fakes = [fake_archive(volume, n, 60_000, age) for n, age in enumerate([400, 300, 200, 100])]
    sup.start()
    await start(sup, "s1")
    await wait_log(sup, r"packed npm-node")
    await wait_log(sup, r"cache trimmed")
    assert volume.usage().bytes <= bound
    [ours] = [p for p in archives(cache_dir(sup)) if p not in fakes]
    kept = [p.exists() for p in fakes]
    assert kept == sorted(kept) and not kept[0]  # the oldest went first
    assert ours.exists()
