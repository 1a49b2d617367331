"""Hostile uploads through the real API into one real preview container (node-basic):
escaping paths, links out (in one archive, across two uploads, and planted on disk by user
code), hard links out, devices and FIFOs, a zstd bomb and a flood of entries. Each is refused
with a 4xx JSON error (or bounded); afterwards nothing outside /workspace changed, the
preview still serves, and an ordinary write still works."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import zstandard
from redis import Redis as SyncRedis

from shared import keys
from shared.redis_types import text
from tests.gateway.api_helpers import bearer, gateway_env, remove_containers, start_body
from tests.gateway.test_api import container_file, wait_ready
from tests.gateway.test_archives import make_tar
from tests.utils import GatewayProcess, RedisServer, run_gateway

pytestmark = pytest.mark.docker

MAX_UNPACKED = 8 << 20
MARK = "pvhostile"  # in every name an attack tries to create outside the workspace


@dataclass
class Preview:
    gateway: GatewayProcess
    sid: str
    cid: str
    redis: SyncRedis

    @property
    def base(self) -> str:
        return f"{self.gateway.url}/v1/previews/{self.sid}"

    def put(self, path: str, content: bytes, **params: str) -> httpx.Response:
        return httpx.put(
            f"{self.base}/{path}", content=content, params=params, headers=bearer(), timeout=120
        )

    def sh(self, script: str, user: str = "root") -> str:
        done = subprocess.run(
            ["docker", "exec", "-u", user, self.cid, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def commands(self) -> int:
        return int(self.redis.xlen(keys.commands(self.cid)))


@pytest.fixture(scope="module")
def preview(redis_server: RedisServer, test_image: str) -> Iterator[Preview]:
    client = SyncRedis.from_url(redis_server.url)
    env = gateway_env(redis_server, test_image, max_unpacked_bytes=MAX_UNPACKED)
    try:
        with run_gateway(env) as gateway:
            started = httpx.post(
                f"{gateway.url}/v1/previews", json=start_body(), headers=bearer(), timeout=60
            )
            assert started.status_code == 202, started.text
            sid = started.json()["id"]
            wait_ready(gateway, sid, timeout=120)
            cid = text(client.hget(keys.session(sid), "container"))
            yield Preview(gateway, sid, cid, client)
    finally:
        remove_containers(redis_server)
        client.close()


def outside_state(preview: Preview) -> list[str]:
    """What an escape would change: system files' hashes, the names in /, /tmp and /cache,
    and anything named MARK outside the workspace."""
    found = preview.sh(
        "sha256sum /etc/passwd /etc/shadow /etc/hosts /usr/local/bin/node 2>&1;"
        f" find / -xdev -name '*{MARK}*' -not -path '/workspace/*' 2>&1;"
        f" find /cache /tmp -name '*{MARK}*' 2>&1; ls -A / /tmp /cache 2>&1"
    )
    return found.splitlines()


def blk_and_others() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in ((f"{MARK}-blk", tarfile.BLKTYPE), (f"{MARK}-cont", tarfile.CONTTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.devmajor, info.devminor = 8, 0
            archive.addfile(info)
    return buffer.getvalue()


def zstd_bomb() -> bytes:
    """Under 64 KiB on the wire, 64 MiB (8x the limit) unpacked."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        info = tarfile.TarInfo(f"{MARK}-bomb.bin")
        info.size = 64 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    return zstandard.ZstdCompressor(level=19).compress(raw.getvalue())


def hostile_archives() -> dict[str, tuple[bytes, int]]:
    """name → (archive, expected status)."""
    out = f"../../tmp/{MARK}"
    return {
        "dotdot": (make_tar(("file", f"{out}-dotdot", "x")), 400),
        "dotdot_inner": (make_tar(("file", f"a/../../{MARK}", "x")), 400),
        "absolute": (make_tar(("file", f"/tmp/{MARK}-abs", "x")), 400),
        "absolute_etc": (make_tar(("file", "/etc/passwd", f"{MARK}::0:0::/:/bin/sh\n")), 400),
        "symlink_absolute": (make_tar(("sym", "lnk", "/tmp"), ("file", f"lnk/{MARK}", "x")), 400),
        "symlink_relative_out": (make_tar(("sym", "lnk", "../../tmp")), 400),
        "symlink_then_file": (
            make_tar(("sym", "d", "."), ("sym", "d/up", "../..")),
            400,
        ),
        # Inside by spelling, outside on disk: s -> . makes s/.. the workspace's parent.
        "symlink_chain": (make_tar(("sym", "s", "."), ("sym", f"{MARK}-t", "s/..")), 400),
        "symlink_chain_write": (
            make_tar(("sym", "s", "."), ("sym", "t", "s/.."), ("file", f"t/tmp/{MARK}", "x")),
            400,
        ),
        "hardlink_out": (make_tar(("hard", f"{MARK}-hl", "../../etc/passwd")), 400),
        "hardlink_absolute": (make_tar(("hard", f"{MARK}-hl", "/etc/passwd")), 400),
        "char_device": (make_tar(("chr", f"{MARK}-null", b"")), 400),
        "fifo": (make_tar(("fifo", f"{MARK}-fifo", b"")), 400),
        "block_device": (blk_and_others(), 400),
        "zstd_bomb": (zstd_bomb(), 413),
        "plain_over_limit": (make_tar(("file", f"{MARK}-big", bytes(MAX_UNPACKED + 1))), 413),
        "truncated": (make_tar(("file", f"{MARK}-cut", "x" * 5000))[:1500], 400),
        "not_tar": (b"PK\x03\x04 a zip, not a tar" * 40, 400),
        "zstd_garbage": (b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 4, 400),
    }


def test_hostile_archives_are_refused_before_the_container(preview: Preview) -> None:
    before = outside_state(preview)
    commands = preview.commands()
    for name, (data, status) in hostile_archives().items():
        for mode in ("merge", "replace"):
            response = preview.put("files", data, mode=mode)
            assert response.status_code == status, (name, mode, response.text)
            body = response.json()
            assert isinstance(body["error"], str) and isinstance(body["detail"], str), body
    assert preview.commands() == commands  # none of it reached the supervisor
    assert outside_state(preview) == before


def test_links_on_disk_are_never_written_through(preview: Preview) -> None:
    """Links the gateway cannot see in the upload: one from an earlier (valid) archive,
    and ones user code (as `app`) planted pointing out. The supervisor refuses to write
    through them (409) and replaces a link named as the file itself."""
    before = outside_state(preview)
    valid = make_tar(("dir", "lib", b""), ("sym", "inner", "lib"))
    assert preview.put("files", valid).status_code == 200
    preview.sh(
        f"ln -sfn /tmp /workspace/{MARK}-out; ln -sfn /etc/passwd /workspace/{MARK}-pw;"
        f" ln -sfn .. /workspace/{MARK}-up",
        user="app",
    )
    refused: dict[str, Any] = {
        "file via archive link": preview.put(f"files/inner/{MARK}.txt", b"x"),
        "archive via archive link": preview.put("files", make_tar(("file", "inner/y", "y"))),
        "file via planted link": preview.put(f"files/{MARK}-out/{MARK}.txt", b"x"),
        "archive via planted link": preview.put(
            "files", make_tar(("file", f"{MARK}-up/tmp/{MARK}", "x"))
        ),
        "dir via planted link": preview.put(
            "files", make_tar(("dir", f"{MARK}-out/{MARK}-dir", b""))
        ),
    }
    for name, response in refused.items():
        assert response.status_code == 409, (name, response.text)
        assert response.json()["error"] == "command_failed", name
    assert container_file(preview.cid, "lib/y").startswith("<missing")
    # Writing to the link's own name replaces the link; /etc/passwd is untouched.
    assert preview.put(f"files/{MARK}-pw", b"replaced\n").status_code == 200
    assert preview.sh(f"stat -c %F /workspace/{MARK}-pw").strip() == "regular file"
    assert outside_state(preview) == before
    preview.sh(f"rm -rf /workspace/{MARK}-* /workspace/inner /workspace/lib")


def test_the_preview_is_intact_afterwards(preview: Preview) -> None:
    state = httpx.get(preview.base, headers=bearer()).json()
    assert state["state"] == "ready", state
    ok = preview.put("files/src/after.txt", b"still fine\n")
    assert ok.status_code == 200, ok.text
    assert container_file(preview.cid, "src/after.txt") == "still fine\n"
    merged = preview.put("files", make_tar(("file", "src/again.txt", "again")), mode="merge")
    assert merged.status_code == 200 and merged.json()["files"] == 1
    assert preview.sh("stat -c %U /workspace/src/again.txt").strip() == "app"


def many_entries(count: int) -> bytes:
    """`count` empty files, their headers stamped from one template (tarfile would take
    longer to write them than the gateway takes to refuse them)."""
    template = tarfile.TarInfo("f0000000")
    block = bytearray(template.tobuf(tarfile.USTAR_FORMAT))
    out = bytearray()
    for i in range(count):
        block[0:8] = b"f%07d" % i
        block[148:156] = b"        "
        block[148:156] = b"%06o\0 " % sum(block)
        out += block
    out += bytes(1024)
    return zstandard.ZstdCompressor().compress(bytes(out))


@pytest.mark.slow
def test_a_flood_of_entries_is_refused(preview: Preview) -> None:
    """200,001 empty files: ~0.5 MiB compressed, refused at the entry limit."""
    data = many_entries(200_001)
    assert len(data) < 2 << 20
    listing = preview.sh("ls -la /workspace")
    response = preview.put("files", data)
    # Refused at the entry limit, or sooner at the size limit (headers count too).
    assert response.status_code in (400, 413), response.text
    assert response.json()["error"] in ("invalid_archive", "payload_too_large")
    assert preview.sh("ls -la /workspace") == listing
