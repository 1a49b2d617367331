"""Built-in secrets only on loopback: real gateway and controller processes started as the
Procfile starts them, on wildcard and non-loopback binds (bound, never sent to)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from redis import Redis as SyncRedis

from gateway.observability.exposure import (
    builtin_secrets,
    check_controller,
    check_gateway,
    controller_exposure,
    gateway_exposure,
    is_loopback_host,
)
from shared.settings import Settings
from tests.utils import (
    ROOT,
    RedisServer,
    bridge_ip,
    free_port,
    settings_env,
    stop_process,
    wait_until,
)

BIN = Path(sys.executable).parent
OWN = {
    "PREVIEW_JWT_SECRET": "own-jwt-secret-of-more-than-32-bytes-0123456789",
    "PREVIEW_SIGNING_SECRET": "own-signing-secret-0123456789",
}
MESSAGE = "PREVIEW_JWT_SECRET and PREVIEW_SIGNING_SECRET have their built-in values"
GENERATE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any PREVIEW_* setting (the secrets stay built-in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def refused(argv: list[str], env: Mapping[str, str], code: int | None = 2) -> str:
    """Run a process that must refuse to start: its stderr, after checking how it ended."""
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert code is None or done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    return done.stderr


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        stop_process(process)


def answers(process: subprocess.Popen[bytes], url: str) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"exited with {process.returncode}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def non_loopback_binds() -> list[str]:
    binds = ["0.0.0.0", "[::]"]
    bridge = bridge_ip()  # an address of this machine that is not loopback
    return [*binds, bridge] if bridge else binds


# --- the rule -------------------------------------------------------------------------


def test_which_secrets_count() -> None:
    assert builtin_secrets(Settings()) == ["PREVIEW_JWT_SECRET", "PREVIEW_SIGNING_SECRET"]
    # A deployment on RS256/ES256 keys never uses the shared secret: not asked for it.
    assert builtin_secrets(Settings(jwt_algorithms=("RS256", "ES256"))) == [
        "PREVIEW_SIGNING_SECRET"
    ]
    assert builtin_secrets(Settings(jwt_secret="x" * 40, signing_secret="y" * 40)) == []


def test_what_counts_as_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "a.preview.localhost"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "", "10.1.2.3", "192.0.2.1", "example.com.invalid"):
        assert not is_loopback_host(host), host


def test_gateway_exposure() -> None:
    local = Settings()
    assert gateway_exposure(local, ["127.0.0.1:8080", "[::1]:8080", "unix:/run/gw.sock"]) == []
    assert gateway_exposure(local, ["127.0.0.1:8080", "0.0.0.0:8081"]) == [
        "listens on 0.0.0.0:8081"
    ]
    assert gateway_exposure(local, ["fd://3"]) == ["listens on fd://3"]  # address unknown
    # On loopback behind a reverse proxy for a public name: the world reaches it.
    proxied = Settings(public_url="https://api.example.com", domain="preview.example.com")
    assert gateway_exposure(proxied, ["127.0.0.1:8080"]) == [
        "PREVIEW_PUBLIC_URL=https://api.example.com",
        "PREVIEW_DOMAIN=preview.example.com",
    ]
    check_gateway(Settings(jwt_secret="x" * 40, signing_secret="y" * 40), ["0.0.0.0:80"])


def test_controller_exposure() -> None:
    assert controller_exposure(Settings()) == []
    assert (
        controller_exposure(
            Settings(redis_url="unix:///run/redis.sock", docker_hosts=("tcp://127.0.0.1:2375",))
        )
        == []
    )
    far = Settings(
        redis_url="redis://:pw@10.0.0.5:6379/0",
        docker_hosts=("unix:///var/run/docker.sock", "tcp://10.0.0.6:2376"),
        controller_metrics_bind="0.0.0.0:9108",
    )
    assert controller_exposure(far) == [
        "Redis on 10.0.0.5",
        "Docker host tcp://10.0.0.6:2376",
        "metrics on 0.0.0.0:9108",
    ]
    check_controller(Settings(redis_url=far.redis_url, jwt_secret="x" * 40, signing_secret="y"))


# --- the gateway, as the Procfile starts it --------------------------------------------


@pytest.mark.parametrize("host", non_loopback_binds())
def test_gateway_with_builtin_secrets_refuses_a_non_loopback_bind(host: str) -> None:
    bind = f"{host}:{free_port()}"
    err = refused([str(BIN / "preview-gateway")], clean_env(PREVIEW_BIND=bind))
    assert err.startswith("preview-gateway: refusing to start: " + MESSAGE), err
    assert f"listens on {bind}" in err and GENERATE in err and len(err.splitlines()) == 1


def test_gateway_refuses_hypercorns_own_bind_option() -> None:
    """`hypercorn gateway.asgi:app --bind ...`: the bind never reaches our settings (the
    default PREVIEW_BIND is loopback), the sockets it bound are what is checked."""
    port = free_port()
    argv = [str(BIN / "hypercorn"), "gateway.asgi:app", "--bind", f"0.0.0.0:{port}"]
    # Its worker exits 2 before serving; hypercorn 0.18 itself then exits 0 whatever its
    # worker's code (run.py reads the exit codes a second time, of no processes).
    err = refused(argv, clean_env(), code=None)
    assert err.startswith("preview-gateway: refusing to start: " + MESSAGE), err
    assert f"listens on 0.0.0.0:{port}" in err
    argv = [*argv[:2], "--workers", "0", *argv[2:]]  # the application in hypercorn's process
    assert f"listens on 0.0.0.0:{port}" in refused(argv, clean_env())


def test_gateway_with_only_the_signing_secret_builtin_names_only_it() -> None:
    env = clean_env(
        PREVIEW_BIND=f"0.0.0.0:{free_port()}", PREVIEW_JWT_SECRET=OWN["PREVIEW_JWT_SECRET"]
    )
    err = refused([str(BIN / "preview-gateway")], env)
    assert "PREVIEW_SIGNING_SECRET has its built-in value" in err
    assert "PREVIEW_JWT_SECRET" not in err and "PREVIEW_SIGNING_SECRET=$(python3" not in err


@pytest.mark.parametrize(
    ("bind", "secrets"),
    [("0.0.0.0", OWN), ("127.0.0.1", {})],
    ids=["wildcard-own-secrets", "loopback-builtin-secrets"],
)
def test_gateway_starts(
    bind: str,
    secrets: dict[str, str],
    redis_server: RedisServer,
    sync_redis: SyncRedis,
    started: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    env = clean_env(
        PREVIEW_BIND=f"{bind}:{port}",
        PREVIEW_REDIS_URL=redis_server.url,
        PREVIEW_DOCKER_HOSTS="unix:///nonexistent/docker.sock",
        **secrets,
    )
    process = subprocess.Popen(
        [str(BIN / "preview-gateway")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(process)
    # Asked on loopback only (a wildcard bind answers there too).
    wait_until(lambda: answers(process, f"http://127.0.0.1:{port}/healthz"), 30, "gateway")


def test_gateway_with_rs256_only_needs_no_jwt_secret(
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
    redis_server: RedisServer,
    sync_redis: SyncRedis,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = tmp_path / "jwt.pem"
    pem.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    port = free_port()
    env = clean_env(
        PREVIEW_BIND=f"0.0.0.0:{port}",
        PREVIEW_REDIS_URL=redis_server.url,
        PREVIEW_DOCKER_HOSTS="unix:///nonexistent/docker.sock",
        PREVIEW_JWT_ALGORITHMS="RS256",
        PREVIEW_JWT_PUBLIC_KEY_FILE=str(pem),
        PREVIEW_SIGNING_SECRET=OWN["PREVIEW_SIGNING_SECRET"],
    )
    process = subprocess.Popen(
        [str(BIN / "preview-gateway")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(process)
    wait_until(lambda: answers(process, f"http://127.0.0.1:{port}/healthz"), 30, "gateway")


# --- the controller ---------------------------------------------------------------------


def controller_env(redis_url: str, **extra: str) -> dict[str, str]:
    # No Docker engine and no pool: this is about starting, not about containers.
    quiet = settings_env(docker_hosts="unix:///nonexistent/docker.sock", pool_min=0, pool_max=0)
    return clean_env(PREVIEW_REDIS_URL=redis_url, **quiet, **extra)


def test_controller_with_builtin_secrets_refuses_a_deployment_beyond_this_machine(
    redis_server: RedisServer,
) -> None:
    controller = [str(BIN / "preview-controller")]
    metrics = f"0.0.0.0:{free_port()}"
    env = controller_env(redis_server.url, PREVIEW_CONTROLLER_METRICS_BIND=metrics)
    err = refused(controller, env)
    assert err.startswith("preview-controller: refusing to start: " + MESSAGE), err
    assert f"metrics on {metrics}" in err and GENERATE in err
    bridge = bridge_ip()
    if bridge:  # a Redis URL naming a non-loopback address of this machine (not contacted)
        url = redis_server.url.replace("127.0.0.1", bridge)
        err = refused(controller, controller_env(url, PREVIEW_CONTROLLER_METRICS_BIND=""))
        assert f"Redis on {bridge}" in err and "redis://" not in err  # no password shown


@pytest.mark.parametrize(
    ("bind", "secrets"),
    [("0.0.0.0", OWN), ("127.0.0.1", {})],
    ids=["wildcard-own-secrets", "loopback-builtin-secrets"],
)
def test_controller_starts(
    bind: str,
    secrets: dict[str, str],
    redis_server: RedisServer,
    sync_redis: SyncRedis,
    started: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    env = controller_env(
        redis_server.url, PREVIEW_CONTROLLER_METRICS_BIND=f"{bind}:{port}", **secrets
    )
    process = subprocess.Popen(
        [str(BIN / "preview-controller")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(process)
    wait_until(lambda: answers(process, f"http://127.0.0.1:{port}/metrics"), 30, "controller")
