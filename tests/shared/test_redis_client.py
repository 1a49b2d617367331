"""The Redis client factory: settings, what containers are told, and real sentinels (a
master, a replica, three sentinels; no containers) followed across a failover."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError

from shared.redis_client import (
    container_sentinels,
    rate_limit_storage,
    redis_client,
    sentinel_master,
    sentinel_user_options,
    supervisor_sentinel_env,
    unreachable,
)
from shared.settings import Settings, SettingsError
from supervisor.config import SupervisorConfig
from supervisor.daemon import connect as supervisor_connect
from tests.sentinel_cluster import MASTER, SentinelCluster, sentinel_cluster
from tests.utils import bridge_ip

SENTINELS = "127.0.0.1:26379,10.0.0.5:26380"


async def test_the_health_check_answers_and_never_swallows_a_cancellation(redis: Redis) -> None:
    """The one Redis health check (readyz, the gateway's upkeep, the controller): None when
    Redis answers, a reason when it hangs, and a cancellation during the PING reaches the
    caller (``wait_for`` could swallow it on 3.11 and the controller would not stop)."""
    assert await unreachable(redis) is None
    pinged = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A Redis that completes the connection handshake, then never answers a PING."""
        writers.append(writer)
        while chunk := await reader.read(4096):
            if b"PING" in chunk:
                pinged.set()
                continue
            for command in chunk.split(b"*")[1:]:  # HELLO refused: the client falls back to RESP2
                writer.write(b"-ERR unknown command\r\n" if b"HELLO" in command else b"+OK\r\n")

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = Redis(host="127.0.0.1", port=port)
    try:
        assert "not reachable" in (await unreachable(hung, timeout=0.2) or "")
        pinged.clear()
        task = asyncio.create_task(unreachable(hung, timeout=60))
        await asyncio.wait_for(pinged.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 20)  # a reason string would fail
    finally:
        await hung.aclose()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def test_unset_means_the_plain_url_as_before() -> None:
    settings = Settings.from_env({})
    assert settings.redis_sentinels == ()
    assert supervisor_sentinel_env(settings) == {}
    assert rate_limit_storage(settings) == (settings.redis_url, {})


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PREVIEW_REDIS_SENTINELS": "127.0.0.1"}, "PREVIEW_REDIS_SENTINELS"),
        ({"PREVIEW_CONTAINER_REDIS_SENTINELS": "h:port"}, "PREVIEW_CONTAINER_REDIS_SENTINELS"),
        (
            {"PREVIEW_REDIS_SENTINELS": SENTINELS, "PREVIEW_REDIS_SENTINEL_PASSWORD": "s"},
            "PREVIEW_CONTAINER_SENTINEL_USER",
        ),
        ({"PREVIEW_CONTAINER_SENTINEL_USER": "nopassword"}, "PREVIEW_CONTAINER_SENTINEL_USER"),
    ],
)
def test_bad_sentinel_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_containers_get_their_addresses_and_the_restricted_user_only() -> None:
    settings = Settings.from_env(
        {
            "PREVIEW_REDIS_URL": "redis://:master-secret@ignored:6379/2",
            "PREVIEW_REDIS_SENTINELS": SENTINELS,
            "PREVIEW_REDIS_MASTER": "main",
            "PREVIEW_REDIS_SENTINEL_PASSWORD": "operators-secret",
            "PREVIEW_CONTAINER_SENTINEL_USER": "sup:reader-secret",
        }
    )
    # Loopback is the host as a container reaches it; other addresses are kept.
    assert container_sentinels(settings) == ("host.docker.internal:26379", "10.0.0.5:26380")
    env = supervisor_sentinel_env(settings)
    assert env == {
        "PREVIEW_SUPERVISOR_REDIS_SENTINELS": "host.docker.internal:26379,10.0.0.5:26380",
        "PREVIEW_SUPERVISOR_REDIS_MASTER": "main",
        "PREVIEW_SUPERVISOR_SENTINEL_USER": "sup:reader-secret",
    }
    assert not any("operators-secret" in v or "master-secret" in v for v in env.values())
    uri, options = rate_limit_storage(settings)
    assert uri == f"redis+sentinel://{SENTINELS}/main"
    assert options["password"] == "master-secret" and options["db"] == 2
    assert options["sentinel_kwargs"] == {"password": "operators-secret"}
    explicit = Settings.from_env(
        {"PREVIEW_REDIS_SENTINELS": SENTINELS, "PREVIEW_CONTAINER_REDIS_SENTINELS": "s1:1"}
    )
    assert container_sentinels(explicit) == ("s1:1",)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SentinelCluster]:
    with sentinel_cluster() as made:
        yield made


def cluster_settings(cluster: SentinelCluster) -> Settings:
    values = cluster.settings()
    sentinels = tuple(values.pop("redis_sentinels").split(","))
    return Settings.from_env({}, redis_sentinels=sentinels, **values)


async def test_the_supervisors_sentinel_user_can_only_read(cluster: SentinelCluster) -> None:
    """User code can read the supervisor's credentials: with them it must not be able to
    fail the master over, reconfigure or forget it, or read the sentinels' settings."""
    port = int(cluster.sentinel_addresses.split(",")[0].rsplit(":", 1)[1])
    reader = Redis(port=port, **sentinel_user_options(cluster.supervisor_user))
    try:
        masters = await reader.execute_command("SENTINEL", "MASTERS")  # type: ignore[no-untyped-call]
        assert masters  # what discovery needs
        for command in (
            ("SENTINEL", "FAILOVER", MASTER),
            ("SENTINEL", "SET", MASTER, "down-after-milliseconds", "1"),
            ("SENTINEL", "REMOVE", MASTER),
            ("SENTINEL", "RESET", "*"),
            ("SENTINEL", "CONFIG", "GET", "*"),
            ("ACL", "LIST"),
        ):
            with pytest.raises((NoPermissionError, ResponseError), match=r"(?i)permission"):
                await reader.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        await reader.aclose()
    assert cluster.master_port() is not None


async def test_a_loopback_master_is_reached_at_the_sentinels_address(
    cluster: SentinelCluster,
) -> None:
    """How a container finds the master: it knows the sentinels by the bridge address,
    they announce the master on loopback."""
    bridge = bridge_ip()
    if bridge is None:
        pytest.skip("no Docker bridge here")
    ports = [int(a.rsplit(":", 1)[1]) for a in cluster.sentinel_addresses.split(",")]
    client = sentinel_master(
        [(bridge, port) for port in ports],
        MASTER,
        cluster.url,
        sentinel_user_options(cluster.supervisor_user),
        socket_timeout=5,
    )
    try:
        assert await client.ping()
        pool = client.connection_pool
        assert await pool.get_master_address() == (bridge, cluster.master_port())  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def test_clients_follow_a_failover(cluster: SentinelCluster) -> None:
    settings = cluster_settings(cluster)
    gateway = redis_client(settings, socket_connect_timeout=1, socket_timeout=2)
    config = SupervisorConfig(
        container_id="pvc-test",
        redis_url=cluster.url,
        redis_sentinels=tuple(cluster.sentinel_addresses.split(",")),
        redis_master=MASTER,
        sentinel_user=cluster.supervisor_user,
    )
    supervisor = supervisor_connect(config)
    try:
        await gateway.set("pv:test:failover", "before")
        assert await supervisor.get("pv:test:failover") == b"before"
        killed = await asyncio.to_thread(cluster.kill_master)
        new = await asyncio.to_thread(cluster.wait_new_master, killed.port)
        # The next command reaches the promoted replica (retried once by the factory's
        # client; the supervisor's own loops retry on errors).
        await gateway.set("pv:test:failover", "after")
        assert await gateway.info("server") and cluster.master_port() == new
        for _ in range(20):
            try:
                assert await supervisor.get("pv:test:failover") == b"after"
                break
            except RedisConnectionError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the supervisor's client did not follow the failover")
        await asyncio.to_thread(cluster.rejoin, killed)
    finally:
        await gateway.aclose()
        await supervisor.aclose()
