"""What every preview container is made of, whichever engine runs it: resource limits,
``no-new-privileges`` and only the capabilities the supervisor needs, our isolated network,
the cache and CA mounts, and a disk bound the kernel enforces; and whether an engine's
storage can enforce it (:func:`storage_problem`). ``docker_runtime`` sends it to the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:
    from gateway.containers.docker_runtime import ContainerSpec

EXTRA_CA_PATH = "/etc/preview/extra-ca.pem"
CACHE_PATH = "/cache"
# What the supervisor needs to hand files to `app`, switch to it and signal its processes.
CAPABILITIES = ("CHOWN", "SETUID", "SETGID", "KILL", "DAC_OVERRIDE", "FOWNER")
# Created on each engine on first use; outbound traffic (registries, git) still works.
NETWORK = "preview-isolated"
# /dev/shm: RAM (counted against the memory limit), Docker's own default made explicit.
SHM_BYTES = 64 << 20
# Drivers whose `size` storage option the kernel enforces. overlay2 (and vfs) only over
# XFS, and only when it is mounted with pquota: Docker refuses the option at create
# otherwise, which `docker info` does not tell in advance.
_SIZED_DRIVERS = ("btrfs", "zfs")
_SIZED_ON_XFS = ("overlay2", "vfs")


def storage_problem(info: Mapping[str, Any], disk_mb: int) -> str | None:
    """Why this engine (its ``docker info``) cannot hold a container to ``disk_mb`` MiB,
    naming the setting and the fix; None when it can, or when no bound is asked (0)."""
    if disk_mb <= 0:
        return None
    driver = str(info.get("Driver") or "unknown")
    status = {str(k): str(v) for k, v in info.get("DriverStatus") or []}
    backing = status.get("Backing Filesystem", "")
    if driver in _SIZED_DRIVERS or (driver in _SIZED_ON_XFS and backing == "xfs"):
        return None
    on = f"{driver} on {backing}" if backing else driver
    return (
        f"its storage driver ({on}) cannot limit a container's disk, and "
        f"PREVIEW_CONTAINER_DISK_MB={disk_mb} asks for that: run dockerd with "
        "--storage-driver btrfs on a btrfs data root (scripts/setup does), or overlay2 on "
        "XFS mounted with pquota; PREVIEW_CONTAINER_DISK_MB=0 runs previews unbounded"
    )


def container_config(
    settings: Settings,
    spec: ContainerSpec,
    labels: Mapping[str, str],
    volume_labels: Mapping[str, str],
) -> dict[str, Any]:
    """The engine's create request for ``spec``: limits, capabilities, mounts, network,
    ports and disk bound. ``labels`` go on the container, ``volume_labels`` on the cache
    volume if this create makes it."""
    s = settings
    port = f"{s.dev_port}/tcp"
    mounts: list[dict[str, Any]] = [
        {
            "Type": "volume",
            "Source": s.cache_volume,
            "Target": CACHE_PATH,
            # Applied when the engine makes the volume (the first container to use it).
            "VolumeOptions": {"Labels": dict(volume_labels)},
        }
    ]
    if s.extra_ca_certs:
        mounts.append(
            {
                "Type": "bind",
                "Source": s.extra_ca_certs,
                "Target": EXTRA_CA_PATH,
                "ReadOnly": True,
            }
        )
    memory = s.container_memory_mb * 1024 * 1024
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Labels": dict(labels),
        "ExposedPorts": {port: {}},
        "HostConfig": {
            "Memory": memory,
            "MemorySwap": memory,
            "NanoCpus": int(s.container_cpus * 1e9),
            "PidsLimit": s.container_pids,
            "SecurityOpt": ["no-new-privileges:true"],
            "CapDrop": ["ALL"],
            "CapAdd": list(CAPABILITIES),
            "PortBindings": {port: [{"HostIp": s.publish_host, "HostPort": ""}]},
            "NetworkMode": NETWORK,  # by id at create: the name may be ambiguous
            "Mounts": mounts,
            "ExtraHosts": ["host.docker.internal:host-gateway"],
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
            "ShmSize": SHM_BYTES,
        },
    }
    if s.container_disk_mb > 0:  # 0: unbounded, only when asked for
        config["HostConfig"]["StorageOpt"] = {"size": f"{s.container_disk_mb}M"}
    if spec.command is not None:
        config["Cmd"] = list(spec.command)
    return config
