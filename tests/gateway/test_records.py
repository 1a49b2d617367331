"""Preview records: idempotent and bounded in Redis, spooled to disk while Redis is down
and replayed (in order, once) when it returns, and what the admin API makes of them."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.observability.record_store import RecordStore
from gateway.observability.recorder import Recorder, spool_dir
from gateway.observability.records import Record, start_record, stop_record
from gateway.observability.spool import Spool
from gateway.observability.stats import percentile, stats
from gateway.sessions.store import Session, new_id
from shared import keys
from shared.settings import Settings
from tests.gateway.api_helpers import bearer, fake_session
from tests.gateway.conftest import GatewayFactory
from tests.utils import RedisServer, start_redis, wait_until


def session(state: str = "ready", **timings: int) -> Session:
    now = time.time()
    return Session(
        id=new_id(),
        user="alice",
        project_id="p1",
        state=state,
        container="pvc-x",
        host="local",
        created_at=now - 5,
        updated_at=now,
        from_pool=True,
        dependencies="restored",
        timings=dict(timings) or {"acquire": 40, "files": 100, "devserver": 900, "total": 1500},
    )


def record(outcome: str = "ready", ts: float | None = None, **fields: object) -> Record:
    sid = new_id()
    values: dict[str, object] = {
        "id": f"{sid}:start",
        "kind": "start",
        "ts": ts if ts is not None else time.time(),
        "sid": sid,
        "user": "alice",
        "project": "p1",
        "outcome": outcome,
        **fields,
    }
    return Record(**values)  # type: ignore[arg-type]


# --- the store -------------------------------------------------------------------------


async def test_store_keeps_each_record_once(redis: Redis) -> None:
    store = RecordStore(redis, 30, 1000)
    first = start_record(session(), "ready")
    assert await store.insert([first, first]) == [True, False]
    assert await store.insert([first]) == [False]
    assert await store.count() == 1
    assert (await store.recent(5))[0] == first


async def test_store_is_bounded_by_age_and_count(redis: Redis) -> None:
    store = RecordStore(redis, retention_days=1, max_records=5)
    old = record(ts=time.time() - 2 * 86400)
    await store.insert([old])
    assert await store.count() == 0  # older than the retention: dropped at once
    fresh = [record(ts=time.time() - 100 + i) for i in range(8)]
    await store.insert(fresh)
    kept = await store.between(0)
    assert [r.id for r in kept] == [r.id for r in fresh[-5:]]
    assert await redis.hlen(keys.RECORDS_DATA) == 5


# --- spool and replay with a real Redis outage -----------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, shut down and restarted on the same port (with
    an append-only file, so what it held before the outage is still there after)."""
    server = start_redis(bind_bridge=False, persistent=True)
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def recorder_on(own_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Recorder]:
    settings = Settings.from_env({}, redis_url=own_redis.url, state_dir=str(tmp_path))
    client = Redis.from_url(own_redis.url, socket_connect_timeout=0.5, socket_timeout=2)
    recorder = Recorder(settings, client)
    try:
        yield recorder
    finally:
        recorder.spool.close()
        await client.aclose()


async def test_records_survive_a_redis_outage_in_order_and_once(
    own_redis: RedisServer, recorder_on: Recorder, tmp_path: Path
) -> None:
    recorder = recorder_on
    before = session()
    await recorder.start_seen(before, result_known=True)
    assert await recorder.store.count() == 1

    own_redis.shutdown()  # Redis is down from here
    during = [session() for _ in range(5)]
    for s in during:
        await recorder.start_seen(s, result_known=True)
    await recorder.stopped(during[0], "user")
    spooled = recorder.spool.path.read_text().splitlines()
    ids = [Record.from_json(line).id for line in spooled]
    assert ids == [f"{s.id}:start" for s in during] + [f"{during[0].id}:stop"]
    assert await recorder.flush() == 0  # still down: nothing sent, nothing lost
    assert recorder.spool.path.read_text().splitlines() == spooled

    own_redis.restart()  # back
    late = session()
    await recorder.start_seen(late, result_known=True)  # queued behind the spooled ones
    last = recorder.spool.path.read_text().splitlines()[-1]
    assert Record.from_json(last).id == f"{late.id}:start"
    assert await recorder.flush() == len(spooled) + 1
    assert recorder.spool.path.stat().st_size == 0
    stored = await recorder.store.between(0)
    assert sorted(r.id for r in stored) == sorted([f"{before.id}:start", *ids, f"{late.id}:start"])

    # A crash after a replay but before the spool was cleared: the same lines again,
    # as a dead process's file. Replayed, and still each record once.
    dead = spool_dir_of(tmp_path) / "records-otherhost-1-dead.jsonl"
    dead.write_text("\n".join(spooled) + "\n{torn line")
    assert await recorder.flush() == len(spooled) + 1
    assert not dead.exists()
    assert await recorder.store.count() == len(stored)
    # And new records go straight to Redis again.
    await recorder.start_seen(session(), result_known=True)
    assert recorder.spool.path.stat().st_size == 0
    assert await recorder.store.count() == len(stored) + 1


def spool_dir_of(tmp_path: Path) -> Path:
    return spool_dir(Settings.from_env({}, state_dir=str(tmp_path)))


async def test_a_live_process_spool_is_left_alone(tmp_path: Path) -> None:
    owner = Spool(tmp_path)
    await owner.append(["a", "b"])
    other = Spool(tmp_path)
    seen: list[str] = []

    async def sink(lines: object) -> None:
        seen.extend(lines)  # type: ignore[call-overload]

    assert await other.replay(sink) == 0  # locked by its (live) writer
    owner.close()  # the writer "dies": its lock is gone, its file stays
    assert await other.replay(sink) == 2
    assert seen == ["a", "b"] and not owner.path.exists()


async def test_start_waits_for_its_timings_then_records_once(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    recorder = Recorder(Settings.from_env({}, state_dir=str(tmp_path)), redis)
    try:
        s = session()
        await recorder.start_seen(s, result_known=False)  # ready, but timings not in yet
        assert await recorder.store.count() == 0
        await recorder.start_seen(s, result_known=True)
        await recorder.start_seen(s, result_known=True)
        assert await recorder.store.count() == 1
        starting = session(state="preparing")
        await recorder.start_seen(starting, result_known=True)
        await recorder.stopped(starting, "user")
        found = {r.id: r for r in await recorder.store.between(0)}
        assert found[f"{starting.id}:start"].outcome == "cancelled"
        assert found[f"{starting.id}:stop"].duration >= 5
    finally:
        recorder.spool.close()


# --- statistics ------------------------------------------------------------------------


def test_percentiles_and_rates() -> None:
    assert percentile([], 50) is None
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    now = time.time()
    found = [
        record("ready", now - 10, from_pool=True, dependencies="restored", timings={"total": 1000}),
        record("ready", now - 20, from_pool=True, dependencies="skipped", timings={"total": 3000}),
        record(
            "ready", now - 30, from_pool=False, dependencies="installed", timings={"total": 9000}
        ),
        record("failed", now - 40, from_pool=True, reason="Module not found: 'react-dom'"),
        record("no_capacity", now - 50, reason="no host"),
        record("cancelled", now - 60),
        record("ready", now - 9 * 86400, timings={"total": 1}),  # outside the range
    ]
    answer = stats(found, 7, now)
    assert answer["starts"] == 6
    assert answer["success_rate"] == 0.5 and answer["error_rate"] == pytest.approx(0.3333)
    assert answer["pool_hit_rate"] == 0.75
    assert answer["install_skip_rate"] == pytest.approx(0.6667)
    assert answer["phases"]["total"] == {"count": 3, "p50_ms": 3000, "p95_ms": 8400}
    assert answer["failure_reasons"] == {"Module not found: 'react-dom'": 1, "no host": 1}
    assert sum(p["starts"] for p in answer["series"]) == 6


# --- through the gateway ---------------------------------------------------------------


def admin_headers() -> dict[str, str]:
    return bearer("operator", scope="admin")


def test_admin_stats_and_csv(
    start_gateway: GatewayFactory, sync_redis: SyncRedis, tmp_path: Path
) -> None:
    gateway = start_gateway(state_dir=str(tmp_path))
    now = time.time()
    found = [
        record("ready", now - 3600, timings={"acquire": 30, "total": 1200}, from_pool=True),
        record("failed", now - 1800, reason="=cmd|' /C calc'!A0", project="-evil"),
    ]
    for r in found:
        sync_redis.zadd(keys.RECORDS_INDEX, {r.id: r.ts})
        sync_redis.hset(keys.RECORDS_DATA, r.id, r.to_json())
    url = gateway.url
    assert httpx.get(f"{url}/v1/admin/stats", headers=bearer("alice")).status_code == 403
    answer = httpx.get(f"{url}/v1/admin/stats?days=1", headers=admin_headers()).json()
    assert answer["starts"] == 2 and answer["success_rate"] == 0.5
    assert answer["phases"]["acquire"]["p50_ms"] == 30
    assert httpx.get(f"{url}/v1/admin/stats?days=0", headers=admin_headers()).status_code == 422

    exported = httpx.get(f"{url}/v1/admin/records.csv", headers=admin_headers())
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["id"] for r in rows] == [r.id for r in found]
    assert rows[0]["acquire_ms"] == "30" and rows[0]["from_pool"] == "true"
    assert rows[1]["reason"].startswith("'=") and rows[1]["project"] == "'-evil"


def test_stopping_through_the_api_records_start_and_stop(
    start_gateway: GatewayFactory, sync_redis: SyncRedis, tmp_path: Path
) -> None:
    gateway = start_gateway(state_dir=str(tmp_path))
    s = fake_session(sync_redis, container="")
    stopped = httpx.delete(f"{gateway.url}/v1/previews/{s.id}", headers=bearer("alice"))
    assert stopped.status_code == 204

    def stored() -> dict[str, Record]:
        raw = sync_redis.hgetall(keys.RECORDS_DATA)
        return {k.decode(): Record.from_json(v) for k, v in raw.items()}

    found = wait_until(lambda: len(stored()) == 2 and stored(), 10, "two records")
    assert found[f"{s.id}:start"].outcome == "cancelled"
    assert found[f"{s.id}:stop"].outcome == "user" and found[f"{s.id}:stop"].user == "alice"
    assert not (tmp_path / "spool").exists()  # Redis was up: nothing was spooled


def test_stop_record_fields() -> None:
    s = session()
    r = stop_record(s, "idle", "unused for 1800s", now=s.created_at + 60)
    assert (r.id, r.kind, r.outcome, r.duration) == (f"{s.id}:stop", "stop", "idle", 60)
    assert Record.from_json(r.to_json()) == r


def test_a_hibernated_preview_keeps_one_record_per_period() -> None:
    s = session()
    assert stop_record(s, "hibernated").id == f"{s.id}:stop"  # the first period: as ever
    s.archive = {"name": "a", "sha256": "b", "host": "local"}  # hibernated, then resumed
    s.sleeps, s.wakes = 3, 2
    start, stop = start_record(s, "ready"), stop_record(s, "user")
    ms = round(s.created_at * 1000)
    assert (start.id, start.kind) == (f"{s.id}:resume:{ms}", "resume")
    assert (stop.id, stop.kind, stop.sleeps, stop.wakes) == (f"{s.id}:stop:{ms}", "stop", 3, 2)
    summary = stats([start, stop], days=1)
    assert (summary["starts"], summary["resumes"]) == (0, 1)  # a resume is not a start
    assert (summary["sleeps"], summary["wakes"]) == (3, 2)


async def test_a_session_failed_by_the_controller(redis: Redis, tmp_path: Path) -> None:
    recorder = Recorder(Settings.from_env({}, state_dir=str(tmp_path)), redis)
    try:
        installing = session(state="preparing")
        await recorder.failed(installing, "heartbeat_lost", "container stopped responding")
        found = {r.id: r for r in await recorder.store.between(0)}
        start, stop = found[f"{installing.id}:start"], found[f"{installing.id}:stop"]
        assert (start.outcome, start.reason) == ("failed", "container stopped responding")
        assert (stop.outcome, stop.reason) == ("heartbeat_lost", "container stopped responding")
    finally:
        recorder.spool.close()
