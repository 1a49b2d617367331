"""Settings: parsing, validation, and the README documenting every variable."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError, documented, redis_deployment
from tests.utils import ROOT


def test_defaults_work_locally() -> None:
    settings = Settings.from_env({})
    assert settings.max_concurrent_per_user == 3
    assert settings.pool_min == 2 and settings.pool_max == 5
    assert settings.heartbeat_interval == 5 and settings.heartbeat_ttl == 15
    assert settings.docker_hosts == ("unix:///var/run/docker.sock",)
    assert settings.publish_host == "127.0.0.1"


def test_environment_is_parsed_with_types() -> None:
    settings = Settings.from_env(
        {
            "PREVIEW_MAX_CONCURRENT_PER_USER": "5",
            "PREVIEW_DOCKER_HOSTS": "unix:///a.sock, tcp://10.0.0.2:2376",
            "PREVIEW_CONTAINER_CPUS": "0.5",
            "PREVIEW_DEBUG": "yes",
        }
    )
    assert settings.max_concurrent_per_user == 5
    assert settings.docker_hosts == ("unix:///a.sock", "tcp://10.0.0.2:2376")
    assert settings.container_cpus == 0.5
    assert settings.debug is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PREVIEW_POOL_MIN": "many"}, "PREVIEW_POOL_MIN"),
        ({"PREVIEW_POOL_MIN": "6"}, "PREVIEW_POOL_MIN <= PREVIEW_POOL_MAX"),
        ({"PREVIEW_JWT_ALGORITHMS": "HS256,none"}, "none"),
        ({"PREVIEW_HEARTBEAT_TTL": "2"}, "HEARTBEAT_TTL"),
        ({"PREVIEW_DEBUG": "maybe"}, "PREVIEW_DEBUG"),
        ({"PREVIEW_DEPLOYMENT": "Staging"}, "PREVIEW_DEPLOYMENT: 'Staging' is not a name"),
        ({"PREVIEW_DEPLOYMENT": "team_a"}, "PREVIEW_DEPLOYMENT"),
        ({"PREVIEW_DEPLOYMENT": "-a"}, "PREVIEW_DEPLOYMENT"),
        ({"PREVIEW_DEPLOYMENT": "a" * 33}, "PREVIEW_DEPLOYMENT"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in documented() if f"`{name}`" not in readme]
    assert not missing, f"README lacks: {missing}"


def test_deployment_is_derived_from_the_redis_it_uses() -> None:
    def derived(url: str) -> Settings:
        return Settings.from_env({"PREVIEW_REDIS_URL": url})

    local = derived("redis://:one@127.0.0.1:6379/0")
    # Credentials do not name the deployment: rotating a password keeps it.
    assert local.deployment == derived("redis://:two@127.0.0.1:6379").deployment
    others = {
        derived(url).deployment
        for url in ("redis://127.0.0.1:6380/0", "redis://127.0.0.1:6379/1", "redis://db:6379/0")
    }
    assert local.deployment not in others and len(others) == 3
    assert local.deployment.startswith("redis-") and len(local.deployment) == 16
    assert local.cache_volume == f"preview-cache-{local.deployment}"
    # Through Sentinel: the sentinels (in any order) and the master's name, not a host.
    sentinels = redis_deployment("redis://x/0", ("s1:26379", "s2:26379"), "preview")
    assert sentinels == redis_deployment("redis://y/0", ("s2:26379", "s1:26379"), "preview")
    assert sentinels != redis_deployment("redis://x/0", ("s1:26379", "s2:26379"), "other")


def test_a_named_deployment_keeps_its_name_and_volume() -> None:
    named = Settings.from_env({"PREVIEW_DEPLOYMENT": "staging-2"})
    assert (named.deployment, named.cache_volume) == ("staging-2", "preview-cache-staging-2")
    kept = Settings.from_env({"PREVIEW_DEPLOYMENT": "staging", "PREVIEW_CACHE_VOLUME": "old"})
    assert kept.cache_volume == "old"
