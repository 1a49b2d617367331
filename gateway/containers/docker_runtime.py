"""Preview containers on one or more Docker engines (aiodocker). About 480 lines, kept
whole: one engine's API (containers, network, cache volume, storage check, live CPU
updates, exec) behind one error type; what a container is made of is in ``confinement``.

Every container we create carries our labels, resource limits, ``no-new-privileges`` and
only the capabilities the supervisor needs to run user code as ``app``. It joins our own
bridge network, on which containers cannot talk to each other (ICC off): on Docker's
default bridge one preview's code could reach another preview's dev server directly,
bypassing the gateway's auth. All engine and transport failures surface as one exception
type, :class:`DockerRuntimeError`.

Disk: the kernel holds what a container writes, anywhere (/workspace, $HOME, /tmp,
/var/tmp...), to PREVIEW_CONTAINER_DISK_MB through the storage driver's ``size`` option:
a btrfs qgroup (simple quotas, which count the container's own writes, not the image it
shares: scripts/btrfs-quota), a zfs quota, an XFS project quota under overlay2. An engine
whose driver cannot do that is refused by name (``confinement.storage_problem``) rather
than run previews unbounded.
The other places a preview can write are not disk: /dev/shm is a tmpfs of
``confinement.SHM_BYTES`` charged to the container's memory limit; /cache is root's (the
supervisor's, bounded by PREVIEW_CACHE_MAX_BYTES); the json-file log is capped by ``LogConfig``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp

from gateway.containers import direct
from gateway.containers.confinement import NETWORK, container_config, storage_problem
from shared.relay import RELAY_PORT
from shared.settings import Settings

log = logging.getLogger(__name__)

LABEL_MANAGED = "preview-gateway.managed"
LABEL_CID = "preview-gateway.cid"
LABEL_HOST = "preview-gateway.host"
LABEL_ROLE = "preview-gateway.role"
# Which deployment a container or volume belongs to: several may share an engine, and each
# lists, sweeps and removes only its own (PREVIEW_DEPLOYMENT).
LABEL_DEPLOYMENT = "preview-gateway.deployment"
# aiodocker reports transport failures as DockerError with status 900 and above.
_TRANSPORT_ERROR = 900
_NO_ICC = "com.docker.network.bridge.enable_icc"
STORAGE_CHECK_TTL = 60.0  # seconds a host's storage verdict is trusted


class DockerRuntimeError(Exception):
    """A Docker engine refused or could not be reached."""

    def __init__(self, host: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ContainerSpec:
    """What to run: our id for it, the image, its environment and extra labels."""

    cid: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] | None = None


@dataclass(frozen=True)
class ContainerInfo:
    """What we know of a container after inspecting it."""

    cid: str
    docker_id: str
    host: str
    state: str
    running: bool
    image_id: str
    labels: Mapping[str, str]
    published_host: str | None = None
    published_port: int | None = None
    network_ip: str | None = None  # on our network (NETWORK)
    direct_address: str | None = None  # network_ip:dev_port, when the gateway reaches it
    relay_published: str | None = None  # host:port of the port relay (shared/relay.py)

    @property
    def address(self) -> str | None:
        """host:port the dev server is reachable at from the gateway: its own address
        when that is reachable (gateway/containers/direct.py), else the published port."""
        if self.direct_address:
            return self.direct_address
        if self.published_port is None:
            return None
        return f"{self.published_host or '127.0.0.1'}:{self.published_port}"

    @property
    def relay(self) -> str | None:
        """host:port of the port relay, the way to the user's other ports, when the
        proxy does not reach the container's own address (else None: it connects there)."""
        return None if self.direct_address else self.relay_published

    @property
    def route(self) -> str:
        """How the proxy reaches it: "container" (its own address) or "published"."""
        return "container" if self.direct_address else "published"


def _published(ports: list[dict[str, str]] | None) -> tuple[str | None, int | None]:
    """(host, port) of a published container port as the gateway reaches it."""
    if not ports:
        return None, None
    host = ports[0].get("HostIp")
    return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host), int(ports[0]["HostPort"])


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.docker_tls_cert:
        return None
    context = ssl.create_default_context(cafile=settings.docker_tls_ca_cert or None)
    context.load_cert_chain(settings.docker_tls_cert, settings.docker_tls_key or None)
    return context


def host_name(url: str) -> str:
    """A short, label-safe name for an engine URL."""
    if url.startswith("unix://"):
        return "local" if url == "unix:///var/run/docker.sock" else url.removeprefix("unix://")
    return url.split("://", 1)[-1]


class DockerHost:
    """One Docker engine and the preview containers on it."""

    def __init__(self, url: str, settings: Settings, name: str | None = None) -> None:
        self.url = url
        self.name = name or host_name(url)
        self.settings = settings
        ssl_context = _tls_context(settings) if url.startswith("tcp://") else None
        self._docker = aiodocker.Docker(url=url, ssl_context=ssl_context)
        self._network_lock = asyncio.Lock()
        self._storage: tuple[float, str | None] | None = None  # (checked at, problem)
        # Whether containers here are reached at their own address (None: not probed yet).
        self.direct: bool | None = None if direct.allowed(settings.direct_upstream, url) else False

    async def close(self) -> None:
        await self._docker.close()

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except aiodocker.DockerError as exc:
            if exc.status < _TRANSPORT_ERROR:
                raise DockerRuntimeError(self.name, f"{what}: {exc.message}", exc.status) from None
            self._storage = None  # an engine back from a restart may have another driver
            raise DockerRuntimeError(
                self.name, f"Docker engine not reachable at {self.url} ({exc.message})"
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._storage = None
            raise DockerRuntimeError(
                self.name,
                f"Docker engine not reachable at {self.url} ({exc or type(exc).__name__})",
            ) from None

    async def ping(self) -> None:
        await self._call("ping", self._docker.version())

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("info", self._docker.system.info())
        return result

    async def image_id(self, image: str) -> str:
        """The image's content id (sha256:...), which keys the warm pool."""
        data = await self._call(f"inspect image {image}", self._docker.images.inspect(image))
        return str(data["Id"])

    async def storage_problem(self) -> str | None:
        """Why this engine cannot bound a container's disk (see :func:`storage_problem`),
        from one ``docker info`` a minute at most: the driver changes only when the
        engine restarts. Raises DockerRuntimeError when the engine does not answer."""
        if self.settings.container_disk_mb <= 0:
            return None
        now = time.monotonic()
        if self._storage is None or now - self._storage[0] >= STORAGE_CHECK_TTL:
            problem = storage_problem(await self.info(), self.settings.container_disk_mb)
            if problem and (self._storage is None or self._storage[1] != problem):
                log.error("Docker host %s refused: %s", self.name, problem)
            self._storage = (now, problem)
        return self._storage[1]

    def labels(self, spec: ContainerSpec) -> dict[str, str]:
        """A new container's labels: the configured ones, the caller's, and ours."""
        return {
            **dict(label.split("=", 1) for label in self.settings.container_labels),
            **spec.labels,
            **self.own_labels(),
            LABEL_CID: spec.cid,
            LABEL_HOST: self.name,
        }

    def own_labels(self) -> dict[str, str]:
        return {LABEL_MANAGED: "1", LABEL_DEPLOYMENT: self.settings.deployment}

    async def check_cache_volume(self) -> None:
        """Refuse a cache volume of another deployment: it holds users' dependency archives.
        A volume without our label (made before deployments were named) is accepted."""
        name = self.settings.cache_volume
        try:
            # aiodocker's volumes API is unannotated
            volume = await self._docker.volumes.get(name)  # type: ignore[no-untyped-call]
            found = await volume.show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return  # made with our labels by the next container's mount
            raise
        owner = (found.get("Labels") or {}).get(LABEL_DEPLOYMENT)
        if owner not in (None, self.settings.deployment):
            raise DockerRuntimeError(
                self.name,
                f"cache volume {name} belongs to deployment {owner}: give this deployment its "
                "own (PREVIEW_CACHE_VOLUME empty or another name)",
            )

    async def ensure_network(self) -> str:
        """The id of our network on this engine, made if missing. Looked up at every
        create: `docker network prune` may have removed it while no container used it.
        A same-named network that lets containers talk to each other is refused."""
        async with self._network_lock:
            found = await self._call("list networks", self._networks())
            if not found:
                await self._call("create network", self._create_network())
                found = await self._call("list networks", self._networks())
                if not found:
                    raise DockerRuntimeError(self.name, f"network {NETWORK} vanished")
                log.info("network %s ready on %s (no inter-container traffic)", NETWORK, self.name)
            # Two processes creating it at once may both succeed (the engine's duplicate
            # check is not atomic): all use the oldest; the others go when unused.
            for extra in found[1:]:
                with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
                    await (await self._docker.networks.get(extra["Id"])).delete()
        network = found[0]
        if (network.get("Options") or {}).get(_NO_ICC) != "false":
            raise DockerRuntimeError(
                self.name,
                f"network {NETWORK} lets containers reach each other: remove it (docker "
                f"network rm {NETWORK}) and it is made again with {_NO_ICC}=false",
            )
        return str(network["Id"])

    async def _networks(self) -> list[dict[str, Any]]:
        """Networks named exactly NETWORK (the engine's filter matches substrings), oldest
        first."""
        listed = await self._docker.networks.list(filters={"name": NETWORK})
        return sorted(
            (n for n in listed if n.get("Name") == NETWORK),
            key=lambda n: (str(n.get("Created", "")), str(n["Id"])),
        )

    async def _create_network(self) -> None:
        config = {
            "Name": NETWORK,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Options": {_NO_ICC: "false"},
            "Labels": {LABEL_MANAGED: "1"},
        }
        try:
            await self._docker.networks.create(config)
        except aiodocker.DockerError as exc:
            if exc.status != 409:  # 409: another process just made it
                raise

    async def create(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start a container; on failure nothing is left behind. Refused on an
        engine that cannot bound its disk (never started unbounded instead)."""
        problem = await self.storage_problem()
        if problem is not None:
            raise DockerRuntimeError(self.name, problem)
        network = await self.ensure_network()
        await self._call("inspect cache volume", self.check_cache_volume())
        config = container_config(self.settings, spec, self.labels(spec), self.own_labels())
        config["HostConfig"]["NetworkMode"] = network
        if self.direct is not True:  # the other ports go through the relay then
            relay_port = f"{RELAY_PORT}/tcp"
            config["ExposedPorts"][relay_port] = {}
            binding = [{"HostIp": self.settings.publish_host, "HostPort": ""}]
            config["HostConfig"]["PortBindings"][relay_port] = binding
        container = await self._call(
            "create container", self._docker.containers.create(config, name=spec.cid)
        )
        try:
            await self._call("start container", container.start())
            info = await self.inspect(spec.cid)
        except BaseException:
            await self.remove(spec.cid)
            raise
        if info is None:
            raise DockerRuntimeError(self.name, f"container {spec.cid} vanished after start")
        if self.direct is None and info.network_ip:
            local = self.settings.direct_upstream == "auto"
            self.direct = await direct.reachable(info.network_ip, self.settings.dev_port, local)
            log.info("Docker host %s: containers reached at their %s", self.name, info.route)
            info = self._routed(info)
        log.info(
            "container created cid=%s host=%s address=%s route=%s",
            spec.cid,
            self.name,
            info.address,
            info.route,
        )
        return info

    async def inspect(self, cid: str) -> ContainerInfo | None:
        try:
            container = await self._docker.containers.get(cid)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            if exc.status >= _TRANSPORT_ERROR:
                await self._call("inspect", self.ping())
            raise DockerRuntimeError(
                self.name, f"inspect {cid}: {exc.message}", exc.status
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError):
            await self._call("inspect", self.ping())
            raise
        return self._info(container._container)

    def _info(self, data: Mapping[str, Any]) -> ContainerInfo:
        config = data.get("Config") or {}
        labels = config.get("Labels") or {}
        state = data.get("State") or {}
        bindings = (data.get("NetworkSettings") or {}).get("Ports") or {}
        published_host, published_port = _published(bindings.get(f"{self.settings.dev_port}/tcp"))
        relay_host, relay_port = _published(bindings.get(f"{RELAY_PORT}/tcp"))
        networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
        network_ip = (networks.get(NETWORK) or {}).get("IPAddress") or None
        info = ContainerInfo(
            cid=labels.get(LABEL_CID) or str(data.get("Name", "")).lstrip("/"),
            docker_id=str(data["Id"]),
            host=self.name,
            state=str(state.get("Status", "unknown")),
            running=bool(state.get("Running", False)),
            image_id=str(data.get("Image", "")),
            labels=labels,
            published_host=published_host,
            published_port=published_port,
            network_ip=network_ip,
            relay_published=f"{relay_host}:{relay_port}" if relay_port else None,
        )
        return self._routed(info)

    def _routed(self, info: ContainerInfo) -> ContainerInfo:
        if self.direct and info.network_ip and info.running:
            ip = f"[{info.network_ip}]" if ":" in info.network_ip else info.network_ip
            return dataclasses.replace(info, direct_address=f"{ip}:{self.settings.dev_port}")
        return info

    async def list_containers(self) -> list[ContainerInfo]:
        """Every container of this deployment on this engine, running or not."""
        filters = {
            "label": [
                f"{LABEL_MANAGED}=1",
                f"{LABEL_DEPLOYMENT}={self.settings.deployment}",
                f"{LABEL_HOST}={self.name}",
            ]
        }
        summaries = await self._call(
            "list containers", self._docker.containers.list(all=True, filters=filters)
        )
        infos = []
        for summary in summaries:
            info = await self.inspect(summary.id)
            if info is not None:
                infos.append(info)
        return infos

    async def stop(self, cid: str, timeout: int = 5) -> None:
        try:
            container = await self._docker.containers.get(cid)
            await container.stop(t=timeout)
        except aiodocker.DockerError as exc:
            if exc.status >= _TRANSPORT_ERROR:
                await self._call("stop", self.ping())
            if exc.status not in (304, 404):
                raise DockerRuntimeError(
                    self.name, f"stop {cid}: {exc.message}", exc.status
                ) from None
        except (TimeoutError, aiohttp.ClientError, OSError):
            await self._call("stop", self.ping())
            raise

    async def remove(self, cid: str) -> None:
        """Force-remove a container; a container that is already gone is not an error."""
        try:
            container = await self._docker.containers.get(cid)
            await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status >= _TRANSPORT_ERROR:
                await self._call("remove", self.ping())
            if exc.status not in (404, 409):
                raise DockerRuntimeError(
                    self.name, f"remove {cid}: {exc.message}", exc.status
                ) from None
        except (TimeoutError, aiohttp.ClientError, OSError):
            await self._call("remove", self.ping())
            raise

    async def set_cpus(self, cid: str, cpus: float) -> bool:
        """Change a running container's CPU limit in place (POST /containers/{id}/update,
        no restart). False when the container is gone."""
        try:
            await self._docker._query_json(
                f"containers/{cid}/update",
                method="POST",
                data=json.dumps({"NanoCpus": int(cpus * 1e9)}),
                headers={"Content-Type": "application/json"},
            )
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            if exc.status >= _TRANSPORT_ERROR:
                await self._call("update", self.ping())
            raise DockerRuntimeError(
                self.name, f"update {cid}: {exc.message}", exc.status
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError):
            await self._call("update", self.ping())
            raise
        return True

    async def exec(
        self, cid: str, cmd: Sequence[str], user: str = "", timeout: float = 60.0
    ) -> tuple[int, str]:
        """Run a command in a container; (exit code, combined output). For tests and ops."""

        async def run() -> tuple[int, str]:
            container = await self._docker.containers.get(cid)
            execution = await container.exec(list(cmd), user=user, stdout=True, stderr=True)
            chunks: list[bytes] = []
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    chunks.append(message.data)
            inspected = await execution.inspect()
            return int(inspected["ExitCode"]), b"".join(chunks).decode(errors="replace")

        result: tuple[int, str] = await self._call(
            f"exec in {cid}", asyncio.wait_for(run(), timeout)
        )
        return result


class DockerRuntime:
    """All configured Docker engines, by name."""

    def __init__(self, settings: Settings) -> None:
        self.hosts: dict[str, DockerHost] = {}
        for url in settings.docker_hosts:
            host = DockerHost(url, settings)
            self.hosts[host.name] = host

    def get(self, name: str) -> DockerHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise DockerRuntimeError(name, "unknown Docker host") from None

    @property
    def default(self) -> DockerHost:
        return next(iter(self.hosts.values()))

    async def reachable(self) -> dict[str, str | None]:
        """Host name → None when it answers and can bound a container's disk, else why
        not (the engine's error, or :func:`storage_problem`)."""

        async def check(host: DockerHost) -> str | None:
            try:
                await asyncio.wait_for(host.ping(), 3)
                problem = await asyncio.wait_for(host.storage_problem(), 3)
            except (TimeoutError, DockerRuntimeError) as exc:
                return str(exc) or "timed out"
            return f"{host.name}: {problem}" if problem else None

        results = await asyncio.gather(*(check(h) for h in self.hosts.values()))
        return dict(zip(self.hosts, results, strict=True))

    async def close(self) -> None:
        await asyncio.gather(*(h.close() for h in self.hosts.values()), return_exceptions=True)
