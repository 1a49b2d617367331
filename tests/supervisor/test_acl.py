"""A container's Redis user can do what the supervisor does on its own keys, and nothing
with anyone else's."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from shared import keys
from shared.acl import container_acl_rules
from shared.messages import Command
from supervisor.config import SupervisorConfig
from supervisor.daemon import connect
from tests.supervisor.conftest import SupRedis

CID = "pvc-aaaaaaaaaaaa"
OTHER = "pvc-bbbbbbbbbbbb"


@pytest_asyncio.fixture
async def container_client(sup_redis: Redis, sup_redis_server: SupRedis) -> AsyncIterator[Redis]:
    password = secrets.token_hex(16)
    await sup_redis.execute_command(
        "ACL", "SETUSER", CID, "reset", *container_acl_rules(CID), f">{password}"
    )
    url = f"redis://{CID}:{password}@127.0.0.1:{sup_redis_server.port}/0"
    client = connect(SupervisorConfig(container_id=CID, redis_url=url))
    try:
        yield client
    finally:
        await client.aclose()
        await sup_redis.execute_command("ACL", "DELUSER", CID)


async def test_everything_the_supervisor_does_is_allowed(
    container_client: Redis, sup_redis: Redis
) -> None:
    r = container_client
    assert await r.ping()
    await r.set(keys.heartbeat(CID), "{}", px=1500)
    await r.xadd(keys.heartbeat_history(CID), {"heartbeat": "{}"}, maxlen=10, approximate=True)
    await r.xgroup_create(keys.commands(CID), keys.COMMAND_GROUP, id="0", mkstream=True)
    await sup_redis.xadd(keys.commands(CID), Command("logs").to_fields())  # type: ignore[arg-type]
    await sup_redis.set(keys.command_blob(CID, "c1"), b"blob")
    assert await r.get(keys.command_blob(CID, "c1")) == b"blob"
    for start in ("0", ">"):
        reply = await r.xreadgroup(
            keys.COMMAND_GROUP, CID, {keys.commands(CID): start}, count=5, block=10
        )
    assert reply
    entry_id = reply[0][1][0][0]
    assert await r.hget(keys.command_done(CID), "c1") is None
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.command_done(CID), "c1", "{}")
        pipe.expire(keys.command_done(CID), 60)
        pipe.rpush(keys.command_result(CID, "c1"), "{}")
        pipe.expire(keys.command_result(CID, "c1"), 60)
        pipe.delete(keys.command_blob(CID, "c1"))
        pipe.xack(keys.commands(CID), keys.COMMAND_GROUP, entry_id)
        await pipe.execute()
    await r.xadd(keys.events(CID), {"type": "progress"}, maxlen=10, approximate=True)
    await r.set(keys.logs(CID), "line", ex=60)
    await r.delete(keys.logs(CID), keys.heartbeat(CID))
    assert await sup_redis.lrange(keys.command_result(CID, "c1"), 0, -1) == [b"{}"]
    # no refusal was logged along the way (e.g. CLIENT SETINFO on connect)
    assert await sup_redis.execute_command("ACL", "LOG") == []


@pytest.mark.parametrize(
    "attempt",
    [
        ["GET", keys.heartbeat(OTHER)],
        ["SET", keys.heartbeat(OTHER), "{}"],
        ["XADD", keys.events(OTHER), "*", "type", "ready"],
        ["XREADGROUP", "GROUP", keys.COMMAND_GROUP, CID, "STREAMS", keys.commands(OTHER), ">"],
        ["RPUSH", keys.command_result(OTHER, "x"), "{}"],
        ["HGETALL", keys.session("s1")],
        ["GET", keys.user_project("alice", "p1")],
        ["SET", keys.LEADER, "me"],
        ["KEYS", "*"],
        ["SCAN", "0"],
        ["FLUSHALL"],
        ["CONFIG", "GET", "requirepass"],
        ["ACL", "LIST"],
        ["CLIENT", "LIST"],
        ["CLIENT", "KILL", "ID", "1"],
        ["EVAL", "return redis.call('GET', KEYS[1])", "1", keys.heartbeat(CID)],
        ["PUBLISH", "anything", "x"],
        ["HGETALL", keys.container(CID)],
    ],
)
async def test_everything_else_is_refused(container_client: Redis, attempt: list[str]) -> None:
    with pytest.raises((NoPermissionError, ResponseError)) as refused:
        await container_client.execute_command(*attempt)
    assert "NOPERM" in str(refused.value) or "permission" in str(refused.value).lower()


async def test_other_containers_keys_stay_intact(container_client: Redis, sup_redis: Redis) -> None:
    await sup_redis.set(keys.heartbeat(OTHER), "theirs")
    with pytest.raises(NoPermissionError):
        await container_client.delete(keys.heartbeat(OTHER))
    assert await sup_redis.get(keys.heartbeat(OTHER)) == b"theirs"
