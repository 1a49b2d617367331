"""What a framework needs in its environment for a restored build cache to be used.

Next.js salts its webpack cache's version with the Server Actions encryption key
(``serverReferenceHashSalt`` in the cache's ``version``). Outside Docker it keeps that key
in ``.next/cache/config.json``; inside Docker (``/.dockerenv``, as in every preview
container) it makes a new one at every start, so a restored ``.next/cache/webpack`` never
matched and every start compiled everything again ("Restored pack ..., but version
doesn't match"). ``NEXT_SERVER_ACTIONS_ENCRYPTION_KEY`` is Next's own setting for a key
that stays: we keep one per owner in ``.next/cache``, so it travels with the build cache
(``buildcache``: the same user's same project only) and is made afresh with it.

The file lives in the workspace, which user code writes: it is written by ``app`` and
read without following links, only when ``app`` owns it, and only in the form we write
(the key is the user's own, nothing of ours).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import secrets
import stat
import subprocess

from supervisor.context import Context
from supervisor.workspace import open_dir

log = logging.getLogger(__name__)

NEXT_KEY_ENV = "NEXT_SERVER_ACTIONS_ENCRYPTION_KEY"
NEXT_KEY_DIR = (".next", "cache")
NEXT_KEY_FILE = "preview-server-actions-key"
KEY_BYTES = 32  # AES-256-GCM, as Next generates its own


def _valid(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == KEY_BYTES
    except (binascii.Error, ValueError):
        return False


def read_next_key(ctx: Context) -> str | None:
    """The key kept in the workspace, if it is a file of ``app``'s in our format."""
    try:
        root = os.open(ctx.config.workspace, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        parent = open_dir(root, list(NEXT_KEY_DIR), create=False)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        fd = os.open(NEXT_KEY_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (ctx.user.uid is not None and st.st_uid != ctx.user.uid):
            return None
        text = os.read(fd, 128).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return text if _valid(text) else None


def write_next_key(ctx: Context, key: str) -> bool:
    """Write ``key`` as ``app`` (so ``.next`` stays ``app``'s, and a link planted on the
    way reaches only what ``app`` could write anyway)."""
    directory = "/".join(NEXT_KEY_DIR)
    script = 'umask 077 && mkdir -p -- "$1" && cat > "$1/$2"'
    env = {"PATH": "/usr/bin:/bin"}
    try:
        done = subprocess.run(
            ["sh", "-c", script, "sh", directory, NEXT_KEY_FILE],
            input=key.encode(),
            cwd=ctx.config.workspace,
            env=env,
            capture_output=True,
            timeout=10,
            **ctx.user.spawn_kwargs(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("Next.js key not kept: %s", exc)
        return False
    if done.returncode != 0:
        log.info("Next.js key not kept: %s", done.stderr.decode(errors="replace")[-200:])
        return False
    return True


def next_key(ctx: Context) -> str:
    """The owner's kept key, or a new one kept for the next start."""
    key = read_next_key(ctx)
    if key is None:
        key = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
        write_next_key(ctx, key)
    return key


async def environment(ctx: Context, framework: str | None) -> dict[str, str]:
    """Variables for the dev server that keep ``framework``'s build cache usable; the
    project's own environment (the ``env`` of the start) overrides them."""
    if framework != "next":
        return {}
    return {NEXT_KEY_ENV: await asyncio.to_thread(next_key, ctx)}
