"""One typed settings object, read once from ``PREVIEW_*`` environment variables.

Every field documents itself (env name, default, meaning) so the README table and the
check that it is complete come from the same place. Defaults work on a developer
machine with a local Docker engine and a local Redis. Over 400 lines because it is a
declarative table (one field per setting, with its help text), not two concerns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.messages import sleeping_heartbeat_ttl

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# A deployment's name goes into Docker labels, volume and container names: a DNS label.
DEPLOYMENT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _setting(default: Any, doc: str, parse: Callable[[str], Any] | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "parse": parse})


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {raw!r}")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def redis_deployment(redis_url: str, sentinels: tuple[str, ...] = (), master: str = "") -> str:
    """The default deployment name: a short hash of the Redis server (or Sentinel set and
    master name) and database, never its credentials, so two runs on different Redis
    servers or databases differ, and everything sharing one Redis database (which holds
    the whole state) is one deployment."""
    parts = urllib.parse.urlsplit(redis_url)
    db = parts.path.strip("/") or "0"
    if sentinels:
        where = f"sentinel:{','.join(sorted(a.lower() for a in sentinels))}:{master}/{db}"
    elif parts.scheme == "unix":
        where = parts.path + "?" + parts.query
    else:
        where = f"{(parts.hostname or '127.0.0.1').lower()}:{parts.port or 6379}/{db}"
    return "redis-" + hashlib.sha256(where.encode()).hexdigest()[:10]


def _default_extra_ca() -> str:
    return HOST_CA_BUNDLE if os.path.exists(HOST_CA_BUNDLE) else ""


@dataclass(frozen=True)
class Settings:
    """Configuration of the gateway, the controller and (a subset) the supervisor."""

    # --- shared state -------------------------------------------------------------------
    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        "Redis used by gateway and controller (with credentials if Redis has a password).",
    )
    container_redis_url: str = _setting(
        "",
        "Redis address as seen from inside preview containers, without credentials "
        "(each container gets its own ACL user). Empty: the host of PREVIEW_REDIS_URL "
        "reached through host.docker.internal.",
    )
    redis_sentinels: tuple[str, ...] = _setting(
        (),
        "Redis Sentinels (host:port, comma-separated) that name the current master; the "
        "gateway, controller, supervisors and previewctl follow a failover. Empty: "
        "PREVIEW_REDIS_URL's host is the Redis. Set: PREVIEW_REDIS_URL gives only the "
        "master's credentials and database.",
        _list,
    )
    redis_master: str = _setting(
        "preview", "Name of the master the sentinels monitor (with PREVIEW_REDIS_SENTINELS)."
    )
    redis_sentinel_password: str = _setting(
        "",
        "Password of the sentinels' default user (their requirepass), for the gateway, "
        "controller and previewctl; empty: the sentinels ask for none.",
    )
    container_redis_sentinels: tuple[str, ...] = _setting(
        (),
        "Sentinels as seen from inside preview containers. Empty: PREVIEW_REDIS_SENTINELS, "
        "loopback hosts reached through host.docker.internal. A master a sentinel announces "
        "on loopback is reached at that sentinel's address.",
        _list,
    )
    container_sentinel_user: str = _setting(
        "",
        "Sentinel ACL user for supervisors, name:password, allowed SENTINEL MASTERS only "
        "(user code can read it); required when the sentinels have a password.",
    )
    # --- gateway ------------------------------------------------------------------------
    bind: str = _setting("127.0.0.1:8080", "Address the gateway listens on (run script).")
    public_url: str = _setting(
        "http://localhost:8080", "Base URL of the API as clients reach it (for links)."
    )
    domain: str = _setting(
        "preview.localhost",
        "Previews are served at {id}.{PREVIEW_DOMAIN}[:port]; browsers resolve *.localhost "
        "to loopback.",
    )
    preview_scheme: str = _setting(
        "",
        "Scheme of preview URLs (https in production). Empty: https when PREVIEW_TLS_CERT "
        "is set, else http.",
    )
    preview_port: int = _setting(
        -1,
        "Port shown in preview URLs (0 = none, e.g. 443 behind a TLS proxy). -1: the port "
        "of PREVIEW_TLS_BIND when previews are https on our own TLS listener, else 8080.",
        int,
    )
    tls_cert: str = _setting(
        "",
        "PEM certificate chain for the gateway's own TLS listener (a wildcard for "
        "*.{PREVIEW_DOMAIN} plus the API host). Set with PREVIEW_TLS_KEY: previews and the "
        "API are served on PREVIEW_TLS_BIND with HTTP/2 and HTTP/1.1 (ALPN), beside the "
        "plain http listener on PREVIEW_BIND. Empty: no TLS listener.",
    )
    tls_key: str = _setting("", "PEM private key of PREVIEW_TLS_CERT.")
    tls_bind: str = _setting(
        "127.0.0.1:8443", "Address of the TLS listener (with PREVIEW_TLS_CERT/_KEY)."
    )
    compress: bool = _setting(
        True,
        "Compress what dev servers send uncompressed (JS, CSS, HTML, JSON, SVG) for clients "
        "that accept it: zstd, else gzip, streamed. bench/bench_pageload.py (400 modules, "
        "HTTP/2): 7x fewer bytes, first view at 40 ms RTT and 20 Mbit/s 0.75x nginx's (0.38x "
        "the dev server direct), at 0 ms no slower; its price 10% more gateway CPU (20 ms "
        "per load). 0 turns it off.",
        _bool,
    )
    workers: int = _setting(
        1,
        "Gateway processes sharing the listeners (use the host's cores). Route caches, "
        "WebSocket caps and buffer budgets per client are per process.",
        int,
    )
    api_hosts: tuple[str, ...] = _setting(
        (),
        "Host names the API, /admin and /metrics answer on, comma-separated (* = any). "
        "Empty: PREVIEW_PUBLIC_URL's host, localhost and IP literals. Never a host under "
        "PREVIEW_DOMAIN, which only serves previews.",
        _list,
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "Proxies (CIDRs, comma-separated) whose X-Forwarded-For/-Proto are believed: the "
        "client is the rightmost hop not in this list. Empty: trust none (the TCP peer is "
        "the client); set it to the TLS proxy's address, or every client shares that one.",
        _list,
    )
    # --- auth ---------------------------------------------------------------------------
    jwt_secret: str = _setting(
        "dev-secret-change-me-before-production-use",
        "HS256 shared secret for users' JWTs (the app backend's).",
    )
    jwt_algorithms: tuple[str, ...] = _setting(
        ("HS256",), "Allowed JWT algorithms, comma-separated (HS256, RS256, ES256).", _list
    )
    jwt_public_key_file: str = _setting("", "PEM public key for RS256/ES256 tokens.")
    jwt_jwks_file: str = _setting("", "JWKS file with public keys for RS256/ES256 tokens.")
    jwt_audience: str = _setting("preview-gateway", "Required `aud` claim.")
    jwt_issuer: str = _setting("", "Required `iss` claim; empty: not checked.")
    jwt_leeway: int = _setting(10, "Clock leeway for exp/nbf, seconds.", int)
    preview_token_ttl: int = _setting(
        60, "Lifetime of the preview-scoped token in open_url, seconds.", int
    )
    # --- limits -------------------------------------------------------------------------
    max_concurrent_per_user: int = _setting(3, "Concurrent previews per user.", int)
    slot_lease_seconds: int = _setting(
        120, "A start's slot lease; renewed while the preview lives, freed if not.", int
    )
    rate_limit_starts: str = _setting("10/minute", "Preview starts per user (slowapi syntax).")
    rate_limit_reads: str = _setting("300/minute", "API reads per user (slowapi syntax).")
    rate_limit_auth_failures: str = _setting(
        "20/minute",
        "Failed authentications per client address (API), per preview and client address "
        "(preview hosts); a valid token or cookie is never refused by it.",
    )
    max_upload_bytes: int = _setting(
        50 * 1024 * 1024, "Largest upload (archive or single file), bytes.", int
    )
    # --- preview traffic ----------------------------------------------------------------
    signing_secret: str = _setting(
        "dev-signing-secret-change-me",
        "HMAC key for preview cookies (and preview tokens); the same on every replica.",
    )
    cookie_ttl: int = _setting(12 * 3600, "Lifetime of a preview's auth cookie, seconds.", int)
    hold_timeout: float = _setting(
        60.0, "How long a request to a starting preview is held before 503, seconds.", float
    )
    upstream_head_timeout: float = _setting(
        60.0,
        "How long the dev server may take to send a response head (all of it, however "
        "slowly it trickles in) before 504, seconds.",
        float,
    )
    ws_max_message_bytes: int = _setting(
        16 * 1024 * 1024, "Largest WebSocket message relayed, bytes.", int
    )
    ws_max_per_client: int = _setting(
        256, "Open preview WebSockets per client address (offices share one).", int
    )
    ws_buffer_per_client: int = _setting(
        64 * 1024 * 1024,
        "Bytes a client address's WebSockets may hold in the gateway, unread; over: 1008.",
        int,
    )
    ws_idle_timeout: float = _setting(
        600.0,
        "Close a preview WebSocket after this long without a message (not while its preview "
        "sleeps), seconds.",
        float,
    )
    ws_max_lifetime: float = _setting(
        8 * 3600.0, "Close a preview WebSocket after this long in any case, seconds.", float
    )
    drain_timeout: float = _setting(
        10.0, "On SIGTERM: time to finish requests and close WebSockets with 1001, s.", float
    )
    max_ports: int = _setting(
        8,
        "Extra ports a preview's processes listen on that are served at {id}-{port} "
        "(the lowest first); 0 serves the main port only.",
        int,
    )
    # --- share links --------------------------------------------------------------------
    max_shares_per_preview: int = _setting(
        20, "Unexpired share links one preview may have at once (429 beyond).", int
    )
    share_max_ttl: int = _setting(
        7 * 86400, "Longest lifetime a share link may be given (`expires_in`), seconds.", int
    )
    rate_limit_share_views: str = _setting(
        "60/minute",
        "Share links opened per client address (each open of a link or single-use share "
        "URL; the requests of an open preview are not counted); 429 beyond.",
    )
    # --- docker -------------------------------------------------------------------------
    docker_hosts: tuple[str, ...] = _setting(
        ("unix:///var/run/docker.sock",),
        "Docker engines, comma-separated: unix:///path or tcp://host:port (TLS with the "
        "three PREVIEW_DOCKER_TLS_* files).",
        _list,
    )
    docker_tls_ca_cert: str = _setting("", "CA certificate for tcp:// Docker hosts.")
    docker_tls_cert: str = _setting("", "Client certificate for tcp:// Docker hosts.")
    docker_tls_key: str = _setting("", "Client key for tcp:// Docker hosts.")
    image: str = _setting("preview-gateway/preview:latest", "Preview container image.")
    deployment: str = _setting(
        "",
        "Name of this deployment (a DNS label: a-z, 0-9, '-', up to 32): every container and "
        "volume carries it (label preview-gateway.deployment) and a controller touches only "
        "its own deployment's containers, volumes and Redis users. Empty: redis-<hash of "
        "PREVIEW_REDIS_URL's host, port and database>.",
    )
    container_labels: tuple[str, ...] = _setting(
        (),
        "Extra labels on every preview container, comma-separated key=value (e.g. "
        "environment=staging).",
        _list,
    )
    publish_host: str = _setting("127.0.0.1", "Host address the dev-server port is published on.")
    direct_upstream: str = _setting(
        "auto",
        "Proxy to a container's own address, not its published port (no docker-proxy in "
        "the path): auto = for engines on this machine when a probe reaches them; on = "
        "any engine (routed, unique container networks); off = always the published port "
        "(a preview's other ports: through its container's port relay).",
    )
    dev_port: int = _setting(3000, "Dev-server port inside the container.", int)
    container_memory_mb: int = _setting(2048, "Memory limit per container, MiB.", int)
    container_cpus: float = _setting(1.0, "CPU limit per container (cores).", float)
    start_cpus: float = _setting(
        2.0,
        "Startup CPU boost: CPU limit while a preview prepares and starts its dev server "
        "(cores), dropped to PREVIEW_CONTAINER_CPUS once it is ready, fails, or after "
        "PREVIEW_START_BOOST_SECONDS; bounded by the host's cores and its free CPU "
        "(PREVIEW_HOST_CPU_OVERCOMMIT). At or below PREVIEW_CONTAINER_CPUS: no boost.",
        float,
    )
    start_boost_seconds: float = _setting(
        300.0, "A startup CPU boost lasts this long at most, seconds.", float
    )
    warmup_seconds: float = _setting(
        60.0,
        "Before a preview is ready its supervisor loads the entry page and the modules it "
        "imports, as a browser would, for up to this long, so the first view is not a "
        "compile, seconds (0: off).",
        float,
    )
    next_turbopack: bool = _setting(
        False,
        "Run Next.js 15 projects whose dev script is plain `next dev` with --turbopack "
        "(Next 16 uses it already). Changes what the project runs: off unless chosen; see "
        "README, Fast starts, for the figures both ways.",
        _bool,
    )
    container_pids: int = _setting(512, "Process limit per container.", int)
    cache_volume: str = _setting(
        "",
        "Per-host Docker volume mounted at /cache (dependency archives). Empty: "
        "preview-cache-<PREVIEW_DEPLOYMENT>; deployments must not share one.",
    )
    extra_ca_certs: str = _setting(
        _default_extra_ca(),
        "PEM file mounted into every container and trusted by node/npm/git/python there. "
        f"Default: the host bundle {HOST_CA_BUNDLE} when present; empty disables.",
    )
    # --- supervisor ---------------------------------------------------------------------
    heartbeat_interval: float = _setting(5.0, "Supervisor heartbeat interval, seconds.", float)
    heartbeat_ttl: float = _setting(15.0, "Heartbeat key TTL, seconds.", float)
    sleep_heartbeat_interval: float = _setting(
        30.0,
        "Heartbeat interval of a sleeping preview's supervisor, seconds (its key lives 3 "
        "intervals, so a container that dies asleep is declared dead within that). Fewer "
        "wake-ups are most of what keeps a sleeping preview's CPU near zero; a wake, "
        "hibernate or stop still reaches it at once.",
        float,
    )
    # --- pool and reaper ----------------------------------------------------------------
    pool_min: int = _setting(2, "Warm containers kept at least, per image.", int)
    pool_max: int = _setting(5, "Warm containers kept at most, per image.", int)
    idle_timeout: float = _setting(1800.0, "Stop a preview after this long unused, seconds.", float)
    sleep_after: float = _setting(
        300.0,
        "Put a preview to sleep (its dev server frozen, woken by the next request, file "
        "write or restart) after this long without a proxied request or an API write, "
        "seconds; 0 never.",
        float,
    )
    hibernate_after: float = _setting(
        1800.0,
        "Hibernate a preview asleep this long (workspace packed to its host's cache volume, "
        "container back to the pool, slot freed; the next visit resumes it), seconds; 0 "
        "never (it is then stopped after PREVIEW_IDLE_TIMEOUT as an awake one).",
        float,
    )
    resume_window: float = _setting(
        86400.0,
        "How long a hibernated preview's id, URL and cookie stay valid (and its archive is "
        "kept), seconds.",
        float,
    )
    # --- observability ------------------------------------------------------------------
    sentry_dsn: str = _setting("", "Sentry DSN; empty disables Sentry.")
    log_format: str = _setting("auto", "Log format: json, text, or auto (text on a terminal).")
    log_level: str = _setting("INFO", "Log level.")
    state_dir: str = _setting(".state", "Local state (spool files, dev Redis data).")
    debug: bool = _setting(False, "Starlette debug mode (never in production).", _bool)
    # --- preview API (gateway control plane) -------------------------------------------
    max_unpacked_bytes: int = _setting(
        512 * 1024 * 1024, "Largest unpacked size of an uploaded archive, bytes.", int
    )
    # --- controller: warm pool, reaper, placement ----------------------------------------
    controller_interval: float = _setting(
        2.0, "Controller loop period (pool upkeep, reaping, host checks), seconds.", float
    )
    leader_ttl: float = _setting(
        10.0, "Controller leader lease; a dead leader is replaced after this long, s.", float
    )
    pool_health_interval: float = _setting(
        60.0, "Warm containers' heartbeat freshness is checked this often, seconds.", float
    )
    pool_warm_timeout: float = _setting(
        120.0,
        "A new container must report idle within this long, else it is destroyed; also the "
        "grace before a container or record nobody knows counts as an orphan, seconds.",
        float,
    )
    pool_scale_window: float = _setting(
        7200.0,
        "Autoscaling remembers the busiest burst of starts this long, so a burst after a "
        "quiet hour is still served from the pool, seconds.",
        float,
    )
    pool_affinity_ttl: float = _setting(
        600.0,
        "A released container is reset and kept for its last user's next start this long, "
        "then destroyed: it never returns to the general pool (0: destroyed at release), "
        "seconds.",
        float,
    )
    session_max_lifetime: float = _setting(
        8 * 3600.0, "A preview is stopped after this long in any case, seconds.", float
    )
    container_max_sessions: int = _setting(
        50, "A container that served this many sessions is destroyed, not pooled again.", int
    )
    container_max_age: float = _setting(
        24 * 3600.0, "A container older than this is destroyed, not pooled again, seconds.", float
    )
    container_disk_mb: int = _setting(
        4096,
        "Disk per container, MiB: all a preview writes anywhere (workspace, home, /tmp...), "
        "held by the kernel (the engine's storage driver must bound it: btrfs, see README; "
        "an engine that cannot is refused); over 85% the reaper cleans caches then recycles; "
        "a released container over 85% is destroyed; node_modules kept within half. 0: "
        "unbounded.",
        int,
    )
    resource_grace: float = _setting(
        120.0,
        "After a dev-server restart (memory > 90%) or a cache clean-up (disk > 85%), how long "
        "the container may stay over before it is recycled, seconds.",
        float,
    )
    host_create_concurrency: int = _setting(
        3, "Container creations at once per Docker host (user starts first; refills yield).", int
    )
    host_cpu_overcommit: float = _setting(
        4.0, "Containers' CPU limits may add up to this many times a host's cores.", float
    )
    host_max_containers: int = _setting(
        0, "Containers per Docker host at most (0: from its memory and CPUs only).", int
    )
    host_down_after: float = _setting(
        10.0,
        "A Docker host failing its checks this long is marked down: its sessions fail and "
        "its pool is refilled elsewhere, seconds.",
        float,
    )
    orphan_interval: float = _setting(
        60.0, "How often containers and records nobody knows are looked for, seconds.", float
    )

    # --- observability: records, logs, alerts, costs -----------------------------------
    records_retention_days: float = _setting(
        30.0, "Preview start/stop records are kept this many days in Redis.", float
    )
    records_max: int = _setting(
        200_000, "Preview records kept in Redis at most (the oldest go first).", int
    )
    log_file: str = _setting(
        "", "Also write JSON log lines to this file, rotated by size; one file per process."
    )
    log_file_max_bytes: int = _setting(
        50 * 1024 * 1024, "Size at which PREVIEW_LOG_FILE is rotated, bytes.", int
    )
    log_file_backups: int = _setting(5, "Rotated log files kept (file.1 ... file.N).", int)
    sentry_environment: str = _setting(
        "", "Sentry `environment` tag (e.g. production, staging); empty: not set."
    )
    alert_window: float = _setting(
        600.0, "Window over which start errors and dead sessions are counted, seconds.", float
    )
    alert_error_rate: float = _setting(
        0.10, "Alert when more than this share of starts in the window failed.", float
    )
    alert_min_starts: int = _setting(
        5, "Starts needed in the window before the error-rate alert can fire.", int
    )
    alert_dead_sessions: int = _setting(
        5,
        "Alert when more sessions than this died (heartbeat lost, host down...) in the window.",
        int,
    )
    alert_repeat: float = _setting(
        3600.0, "An alert condition still true is sent again after this long, seconds.", float
    )
    cost_per_host_hour: float = _setting(
        0.0, "Price of one Docker host per hour (any currency); 0: costs are not priced.", float
    )
    cost_host_capacity: int = _setting(
        0,
        "Containers a host holds, for pricing a container-second; 0: from the hosts' memory "
        "and CPUs as placement computes it.",
        int,
    )
    cost_budget_daily: float = _setting(
        0.0, "Alert when a UTC day's container cost exceeds this; 0: no budget.", float
    )
    controller_metrics_bind: str = _setting(
        "127.0.0.1:9108", "Address of the controller's Prometheus /metrics; empty: none."
    )

    # --- dependency cache (the supervisor's; the gateway passes them to each container) ---
    cache_max_bytes: int = _setting(
        10 * 1024**3,
        "Bound of the per-host dependency cache on PREVIEW_CACHE_VOLUME (node_modules "
        "archives and npm tarballs), bytes; least recently used first out. 0 turns it off.",
        int,
    )
    cache_zstd_level: int = _setting(
        1, "zstd level of node_modules archives (1: fastest; up to 19 for smaller ones).", int
    )
    cache_zstd_threads: int = _setting(
        2, "zstd compression threads per archive being packed (0: none).", int
    )

    def __post_init__(self) -> None:
        # Derived once here, so every process of a deployment computes the same names.
        if not self.deployment:
            object.__setattr__(
                self,
                "deployment",
                redis_deployment(self.redis_url, self.redis_sentinels, self.redis_master),
            )
        if not self.cache_volume:
            object.__setattr__(self, "cache_volume", f"preview-cache-{self.deployment}")
        if not self.preview_scheme:
            object.__setattr__(self, "preview_scheme", "https" if self.tls_cert else "http")
        if self.preview_port < 0:
            port = self.tls_bind.rpartition(":")[2]
            if self.preview_scheme == "https" and self.tls_cert and port.isdigit():
                object.__setattr__(self, "preview_port", int(port))
            else:
                object.__setattr__(self, "preview_port", 8080)

    @property
    def sleep_heartbeat_ttl(self) -> float:
        """How long a sleeping supervisor's heartbeat lives (it says it beats that rarely)."""
        return sleeping_heartbeat_ttl(self.sleep_heartbeat_interval, self.heartbeat_ttl)

    def heartbeat_limit(self, state: str) -> float:
        """How old a heartbeat reporting dev-server `state` may be before its container is
        taken for dead."""
        return self.sleep_heartbeat_ttl if state == "sleeping" else self.heartbeat_ttl

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``PREVIEW_*`` variables; keyword overrides win (tests)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            if name not in env:
                continue
            parse = f.metadata["parse"] or str
            try:
                values[f.name] = parse(env[name])
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("redis_sentinels", "container_redis_sentinels"):
            for address in getattr(self, name):
                host, _, port = address.rpartition(":")
                if not host or not port.isdigit():
                    raise SettingsError(f"{env_name(name)}: expected host:port, got {address!r}")
        if self.container_sentinel_user and ":" not in self.container_sentinel_user:
            raise SettingsError("PREVIEW_CONTAINER_SENTINEL_USER: expected name:password")
        if self.redis_sentinel_password and not self.container_sentinel_user:
            raise SettingsError(
                "PREVIEW_CONTAINER_SENTINEL_USER is required when the sentinels have a "
                "password: supervisors must not get PREVIEW_REDIS_SENTINEL_PASSWORD"
            )
        if self.max_concurrent_per_user < 1:
            raise SettingsError("PREVIEW_MAX_CONCURRENT_PER_USER must be at least 1")
        if not 0 <= self.pool_min <= self.pool_max:
            raise SettingsError("need 0 <= PREVIEW_POOL_MIN <= PREVIEW_POOL_MAX")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise SettingsError("PREVIEW_HEARTBEAT_TTL must exceed PREVIEW_HEARTBEAT_INTERVAL")
        if self.sleep_heartbeat_interval < self.heartbeat_interval:
            raise SettingsError(
                "PREVIEW_SLEEP_HEARTBEAT_INTERVAL must be at least PREVIEW_HEARTBEAT_INTERVAL"
            )
        if self.pool_affinity_ttl < 0:
            raise SettingsError("PREVIEW_POOL_AFFINITY_TTL must not be negative")
        if not self.docker_hosts:
            raise SettingsError("PREVIEW_DOCKER_HOSTS is empty")
        if not DEPLOYMENT_NAME.fullmatch(self.deployment):
            raise SettingsError(
                f"PREVIEW_DEPLOYMENT: {self.deployment!r} is not a name: use up to 32 of a-z, "
                "0-9 and '-', starting and ending with a letter or digit (e.g. staging)"
            )
        if any("=" not in label for label in self.container_labels):
            raise SettingsError("PREVIEW_CONTAINER_LABELS: expected key=value pairs")
        if "none" in {a.lower() for a in self.jwt_algorithms}:
            raise SettingsError("PREVIEW_JWT_ALGORITHMS must not allow 'none'")
        if self.ws_buffer_per_client < self.ws_max_message_bytes:
            raise SettingsError(
                "PREVIEW_WS_BUFFER_PER_CLIENT must be at least PREVIEW_WS_MAX_MESSAGE_BYTES"
            )
        if self.upstream_head_timeout <= 0:
            raise SettingsError("PREVIEW_UPSTREAM_HEAD_TIMEOUT must be positive")
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SettingsError(
                    f"PREVIEW_TRUSTED_PROXIES: not an address or CIDR: {cidr!r}"
                ) from None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("PREVIEW_TLS_CERT and PREVIEW_TLS_KEY go together: set both")
        if self.preview_scheme not in ("http", "https"):
            raise SettingsError("PREVIEW_PREVIEW_SCHEME: expected http or https")
        if self.direct_upstream not in ("auto", "on", "off"):
            raise SettingsError("PREVIEW_DIRECT_UPSTREAM: expected auto, on or off")
        if not 1 <= self.workers <= 64:
            raise SettingsError("PREVIEW_WORKERS must be 1..64")
        if self.cache_max_bytes < 0:
            raise SettingsError("PREVIEW_CACHE_MAX_BYTES must not be negative")
        if self.container_disk_mb < 0:
            raise SettingsError("PREVIEW_CONTAINER_DISK_MB must not be negative (0: unbounded)")
        if not 1 <= self.cache_zstd_level <= 22 or not 0 <= self.cache_zstd_threads <= 64:
            raise SettingsError("need PREVIEW_CACHE_ZSTD_LEVEL 1..22, _THREADS 0..64")


def env_name(field_name: str) -> str:
    return "PREVIEW_" + field_name.upper()


def documented() -> list[tuple[str, str, str]]:
    """(env name, default, description) for every setting: the README table's source."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append((env_name(f.name), str(default), str(f.metadata["doc"])))
    return rows
