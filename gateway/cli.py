"""Operator CLI (``previewctl``): sessions, the pool, hosts, statistics, development tokens.

It talks to Redis (and, to stop a session, to Docker) with the same settings as the
gateway, so it works when no gateway answers. ``--json`` prints machine-readable output.

    previewctl sessions | pool | hosts | stats [--days N]
    previewctl stop SESSION [--reason TEXT]
    previewctl drain HOST | undrain HOST
    previewctl token --sub USER [--admin] [--ttl S]
    previewctl dashboard [--sub USER] [--ttl S]
    previewctl preview DIR [--open] [--watch] [--detach] [--url URL] [--token JWT]

Beside `scripts/run` it needs no settings: a PREVIEW_* variable missing from the
environment is taken from that run's record, .state/run.env (the Redis URL with its
password, the generated secrets); a variable set in the environment wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.background import Background
from gateway.containers.containers import Containers
from gateway.containers.docker_runtime import DockerRuntime
from gateway.observability import live
from gateway.observability.record_store import RecordStore
from gateway.observability.recorder import Recorder
from gateway.observability.stats import stats
from gateway.sessions.previews import Previews
from gateway.sessions.store import live_sessions
from preview_client import dev
from preview_client.tokens import mint_token as sign_token
from shared.redis_client import redis_client
from shared.settings import Settings, SettingsError

RELEASE_DEADLINE = 90.0  # a stopped session's container reset, at most
RUN_ENV = "run.env"  # written by scripts/run into its state directory
CHECKOUT = Path(__file__).resolve().parent.parent
# Redis's answers to a login it refuses, whichever protocol step notices first.
LOGIN_REFUSED = ("NOAUTH", "WRONGPASS", "HELLO must be called", "invalid password", "AUTH <pass")


def run_env_candidates(environ: Mapping[str, str]) -> list[Path]:
    """Where a local run's record may be: the state directory named in the environment,
    else ./.state and this checkout's .state (previewctl run from elsewhere)."""
    if environ.get("PREVIEW_STATE_DIR"):
        return [Path(environ["PREVIEW_STATE_DIR"]) / RUN_ENV]
    return list(dict.fromkeys([Path(".state").resolve() / RUN_ENV, CHECKOUT / ".state" / RUN_ENV]))


def read_run_env(path: Path) -> dict[str, str] | None:
    """PREVIEW_* lines of a run record; None when absent or not private to this user
    (another user's file must not point us at their Redis or hand us their secrets)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as file:
        info = os.fstat(file.fileno())
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            print(f"previewctl: ignoring {path}: not private to this user", file=sys.stderr)
            return None
        values = {}
        for line in file:
            name, sep, value = line.rstrip("\n").partition("=")
            if sep and name.startswith("PREVIEW_"):
                values[name] = value
        return values


def environment(environ: Mapping[str, str]) -> tuple[dict[str, str], Path | None]:
    """The environment with a local run's settings under it, and the record used. The
    first record there is decides: one refused (not private) is not replaced by another
    run's, such as this checkout's own."""
    for path in run_env_candidates(environ):
        if not os.path.lexists(path):
            continue
        found = read_run_env(path)
        if found is None:
            break
        return {**found, **environ}, path
    return dict(environ), None


def redis_problem(exc: RedisError, url: str, source: Path | None) -> str:
    """One line saying what to set when Redis cannot be used, never a protocol error."""
    try:
        parts = urlsplit(url)
        where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    except ValueError:
        where = "(unparsable PREVIEW_REDIS_URL)"
    origin = f" (PREVIEW_REDIS_URL from {source})" if source else ""
    message = str(exc)
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError) or (
        isinstance(exc, ResponseError) and any(m in message for m in LOGIN_REFUSED)
    ):
        return (
            f"previewctl: Redis at {where} refused the login (wrong or missing password)"
            f"{origin}: set PREVIEW_REDIS_URL=redis://[USER]:PASSWORD@{where}/0"
        )
    if isinstance(exc, AuthorizationError | NoPermissionError):
        return (
            f"previewctl: Redis at {where} denied a command to this user{origin}: set "
            "PREVIEW_REDIS_URL to the credentials the gateway uses"
        )
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        why = " (timed out)" if isinstance(exc, RedisTimeoutError) or "imeout" in message else ""
        cause = exc.__cause__ or exc.__context__
        refused = isinstance(cause, ConnectionRefusedError) or "refused" in message.lower()
        why = " (connection refused)" if refused or "Error 111 " in message else why
        return (
            f"previewctl: cannot reach Redis at {where}{why}{origin}: start it (scripts/run) "
            "or set PREVIEW_REDIS_URL to the gateway's Redis"
        )
    return f"previewctl: Redis at {where}: {message.splitlines()[0] if message else type(exc)}"


def mint_token(settings: Settings, sub: str, ttl: int, admin: bool) -> str:
    """An HS256 token as the app backend would issue it (for local development)."""
    return sign_token(
        settings.jwt_secret,
        sub,
        ttl=ttl,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer or None,
        admin=admin,
    )


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _age(created: float, now: float) -> str:
    seconds = max(0, int(now - created)) if created else 0
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


async def show_sessions(settings: Settings, redis: Redis, as_json: bool) -> int:
    found = await live_sessions(redis, live.MAX_SESSIONS)
    now = time.time()
    if as_json:
        items = [
            {
                "id": s.id,
                "user": s.user,
                "project_id": s.project_id,
                "state": s.state,
                "host": s.host,
                "container": s.container,
                "from_pool": s.from_pool,
                "created_at": s.created_at,
            }
            for s in found
        ]
        print(json.dumps({"sessions": items}, indent=2))
        return 0
    rows = [
        (s.id, s.user, s.project_id, s.state, s.host, s.container, _age(s.created_at, now))
        for s in found
    ]
    print(table(rows, ("SESSION", "USER", "PROJECT", "STATE", "HOST", "CONTAINER", "AGE")))
    print(f"{len(found)} live sessions")
    return 0


async def show_pool(settings: Settings, redis: Redis, as_json: bool) -> int:
    pool = await live.pool(redis, settings)
    answer: dict[str, Any] = {
        **pool.summary(),
        "per_host": pool.per_host,
        "reserved_per_host": pool.reserved_per_host,
    }
    if as_json:
        print(json.dumps(answer, indent=2))
        return 0
    rate = "-" if pool.hit_rate is None else f"{pool.hit_rate:.0%}"
    print(f"image   {pool.image or '(not resolved yet)'}")
    print(f"pooled  {pool.pooled} (target {pool.target}; never ran user code)")
    print(f"reserved {pool.reserved} (each for its last user only)")
    print(
        f"hits    {pool.hits}, reserved {pool.reserved_hits}, misses {pool.misses} "
        f"(hit rate {rate})"
    )
    for host in sorted({*pool.per_host, *pool.reserved_per_host}):
        pooled, kept = pool.per_host.get(host, 0), pool.reserved_per_host.get(host, 0)
        print(f"  {host}: {pooled} pooled, {kept} reserved")
    return 0


async def show_hosts(settings: Settings, redis: Redis, as_json: bool) -> int:
    hosts = await live.hosts(redis, settings, await live_sessions(redis, live.MAX_SESSIONS))
    if as_json:
        print(json.dumps({"hosts": [h.__dict__ for h in hosts]}, indent=2))
        return 0
    rows = [
        (
            h.name,
            ("up" if h.up else f"down ({h.reason})") + (", drained" if h.drained else ""),
            f"{h.containers}/{h.capacity or '?'}",
            h.sessions,
        )
        for h in hosts
    ]
    print(table(rows, ("HOST", "STATE", "CONTAINERS", "SESSIONS")))
    return 0


async def show_stats(settings: Settings, redis: Redis, days: int, as_json: bool) -> int:
    store = RecordStore(redis, settings.records_retention_days, settings.records_max)
    now = time.time()
    answer = stats(await store.between(now - days * 86400), days, now)
    answer.pop("series")
    if as_json:
        print(json.dumps(answer, indent=2))
        return 0

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    print(f"last {days} days: {answer['starts']} starts {answer['outcomes']}")
    print(f"success {pct(answer['success_rate'])}, errors {pct(answer['error_rate'])}")
    skipped = pct(answer["install_skip_rate"])
    print(f"pool hits {pct(answer['pool_hit_rate'])}, installs skipped {skipped}")
    rows = [(name, p["count"], p["p50_ms"], p["p95_ms"]) for name, p in answer["phases"].items()]
    print(table(rows, ("PHASE", "STARTS", "P50_MS", "P95_MS")))
    return 0


async def stop_session(settings: Settings, redis: Redis, sid: str, reason: str) -> int:
    """Stop like a user's DELETE: slot freed, container reset and reserved for its user
    (waited for)."""
    blocking = redis_client(settings, socket_connect_timeout=2, socket_timeout=120)
    runtime = DockerRuntime(settings)
    background = Background()
    recorder = Recorder(settings, redis)
    try:
        containers = Containers(settings, blocking, runtime, background=background)
        previews = Previews(settings, redis, containers, background, records=recorder)
        session = await previews.load(sid)
        if session is None or session.state == "stopping":
            print(f"previewctl: no live session {sid}", file=sys.stderr)
            return 1
        if not await previews.stop(session, "operator", reason):
            print(f"previewctl: {sid} was being stopped already", file=sys.stderr)
            return 1
        print(f"stopped {sid} (user {session.user}); releasing its container...")
        await background.close(RELEASE_DEADLINE)
        print("done")
        return 0
    finally:
        recorder.spool.close()
        await runtime.close()
        await blocking.aclose()


async def drain_host(settings: Settings, redis: Redis, name: str, on: bool) -> int:
    known = live.host_names(settings)
    if name not in known:
        print(f"previewctl: unknown host {name!r}; hosts: {', '.join(known)}", file=sys.stderr)
        return 2
    changed = await live.drain(redis, name, on)
    state = "drained (no new containers; existing ones finish)" if on else "taking containers"
    print(f"{name}: {state}{'' if changed else ' (already)'}")
    return 0


def preview_folder(settings: Settings, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`previewctl preview`, through the public API only (preview_client). Without
    --token or PREVIEW_TOKEN it mints a development token like `previewctl token`."""
    token = args.token or env.get("PREVIEW_TOKEN") or ""
    if not token:
        token = mint_token(settings, args.sub or dev.user_name(), 12 * 3600, False)
    folder = args.folder.expanduser()
    options = dev.Options(
        folder=folder,
        project_id=args.project or dev.project_id_for(folder.resolve()),
        open_browser=args.open,
        watch=args.watch,
        detach=args.detach,
    )
    url = args.url or settings.public_url
    return dev.run(options, url, token, settings.max_upload_bytes, sys.stdout, sys.stderr)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="previewctl", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    top.add_argument("--json", action="store_true", help="machine-readable output")
    commands = top.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="mint a development JWT (HS256, PREVIEW_JWT_SECRET)")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--admin", action="store_true", help="add the admin scope")
    board = commands.add_parser("dashboard", help="print a link to /admin with an admin token")
    board.add_argument("--sub", default="operator", help="user id in the token")
    board.add_argument("--ttl", type=int, default=8 * 3600, help="token lifetime in seconds")
    preview = commands.add_parser(
        "preview", help="preview a local folder through the API (Ctrl-C stops it)"
    )
    preview.add_argument("folder", type=Path)
    preview.add_argument("--open", action="store_true", help="open open_url in the browser")
    preview.add_argument("--watch", action="store_true", help="send saved files (hot reload)")
    preview.add_argument("--detach", action="store_true", help="exit once ready, keep it")
    preview.add_argument("--project", help="project id (default: the folder's name)")
    preview.add_argument("--url", help="the gateway (default: PREVIEW_PUBLIC_URL)")
    preview.add_argument(
        "--token", help="a user token (default: $PREVIEW_TOKEN, else minted like `token`)"
    )
    preview.add_argument("--sub", help="user id of a minted token (default: $USER)")
    commands.add_parser("sessions", help="list live sessions")
    commands.add_parser("pool", help="show the warm pool")
    commands.add_parser("hosts", help="list Docker hosts with their load")
    stat = commands.add_parser("stats", help="start statistics from the preview records")
    stat.add_argument("--days", type=int, default=7)
    stop = commands.add_parser(
        "stop", help="stop a session (its container is kept for its user only)"
    )
    stop.add_argument("session")
    stop.add_argument("--reason", default="stopped by an operator")
    drain = commands.add_parser("drain", help="place no new containers on a host")
    drain.add_argument("host")
    undrain = commands.add_parser("undrain", help="let a drained host take containers again")
    undrain.add_argument("host")
    return top


async def run(settings: Settings, args: argparse.Namespace) -> int:
    redis = redis_client(settings, socket_connect_timeout=2, socket_timeout=10)
    try:
        if args.command == "sessions":
            return await show_sessions(settings, redis, args.json)
        if args.command == "pool":
            return await show_pool(settings, redis, args.json)
        if args.command == "hosts":
            return await show_hosts(settings, redis, args.json)
        if args.command == "stats":
            return await show_stats(settings, redis, args.days, args.json)
        if args.command == "stop":
            return await stop_session(settings, redis, args.session, args.reason)
        return await drain_host(settings, redis, args.host, args.command == "drain")
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    env, source = environment(os.environ)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"previewctl: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        print(mint_token(settings, args.sub, args.ttl, args.admin))
        return 0
    if args.command == "preview":
        return preview_folder(settings, args, env)
    if args.command == "dashboard":
        token = mint_token(settings, args.sub, args.ttl, admin=True)
        print(f"{settings.public_url.rstrip('/')}/admin#token={token}")
        return 0
    # Name the run record in a Redis problem only when the URL came from it.
    url_from = None if "PREVIEW_REDIS_URL" in os.environ else source
    try:
        return asyncio.run(run(settings, args))
    except RedisError as exc:
        print(redis_problem(exc, settings.redis_url, url_from), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"previewctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
