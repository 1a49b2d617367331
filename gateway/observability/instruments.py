"""The metrics this process counts itself (the rest is read from Redis when scraped).

Like prometheus_client's default registry, one per process: the proxy's hot path
increments these without any plumbing. Labels are short fixed words, never user or
session ids (unbounded cardinality, and personal data).
"""

from __future__ import annotations

from gateway.observability.metrics import PHASE_BUCKETS, Registry

REGISTRY = Registry()

STARTS = REGISTRY.counter(
    "preview_starts_total",
    "Preview starts by outcome (ready, failed, no_capacity, cancelled).",
    ["outcome"],
)
START_PHASE = REGISTRY.histogram(
    "preview_start_phase_seconds",
    "Duration of each start phase (acquire, files, dependencies, devserver, total), by "
    "path: from_pool and the dependencies outcome.",
    ["phase", "from_pool", "dependencies"],
    PHASE_BUCKETS,
)
STOPS = REGISTRY.counter("preview_stops_total", "Previews stopped, by reason.", ["reason"])
RATE_LIMITED = REGISTRY.counter(
    "preview_rate_limited_total",
    "Requests refused for a limit (429), by kind: starts, reads, auth_failures, "
    "too_many_previews, preview_auth, websockets_per_client, websocket_buffer.",
    ["kind"],
)
PROXY_REQUESTS = REGISTRY.counter(
    "preview_proxy_requests_total",
    "Requests proxied to dev servers, by status class (2xx...).",
    ["code"],
)
PROXY_LATENCY = REGISTRY.histogram(
    "preview_proxy_request_seconds",
    "Time to relay one request to a dev server and its whole response back.",
)
PROXY_REFUSED = REGISTRY.counter(
    "preview_proxy_refused_total",
    "Preview requests answered by the gateway itself (401, 404, 429, 503...), by status.",
    ["status"],
)
WEBSOCKETS_OPEN = REGISTRY.gauge("preview_websockets_open", "Preview WebSockets relayed now.")
WEBSOCKET_BUFFERED = REGISTRY.gauge(
    "preview_websocket_buffered_bytes",
    "Bytes held by WebSocket relays between one side and the other (per-client budget).",
)
WEBSOCKETS = REGISTRY.counter("preview_websockets_total", "Preview WebSockets accepted.")
DEPENDENCY_ERRORS = REGISTRY.counter(
    "preview_dependency_errors_total",
    "Errors talking to Redis or Docker, by dependency.",
    ["dependency"],
)
RECORDS_SPOOLED = REGISTRY.counter(
    "preview_records_spooled_total", "Preview records written to the local spool (Redis down)."
)
RECORDS_REPLAYED = REGISTRY.counter(
    "preview_records_replayed_total", "Spooled preview records replayed into Redis."
)
ALERTS = REGISTRY.counter(
    "preview_alerts_total", "Alerts raised (sent at most once per repeat window).", ["condition"]
)

SLEEPS = REGISTRY.counter(
    "preview_sleeps_total", "Previews put to sleep, by trigger (idle, api).", ["trigger"]
)
WAKES = REGISTRY.counter(
    "preview_wakes_total",
    "Sleeping previews woken, by trigger (request: proxied HTTP or WebSocket; api: wake, "
    "a file write or a restart).",
    ["trigger"],
)
WAKE_LATENCY = REGISTRY.histogram(
    "preview_wake_seconds",
    "Time from a wake's command to the preview being ready again (held requests wait this).",
)
HIBERNATIONS = REGISTRY.counter(
    "preview_hibernations_total",
    "Previews hibernated (workspace packed, container released), by trigger (idle, api, limit).",
    ["trigger"],
)
RESUMES = REGISTRY.counter(
    "preview_resumes_total",
    "Hibernated previews resumed, by trigger (visit: a request to its host; api: wake).",
    ["trigger"],
)

# Hot-path children, looked up once.
STATUS_CLASSES = [PROXY_REQUESTS.labels(f"{n}xx") for n in range(6)]
REDIS_ERRORS = DEPENDENCY_ERRORS.labels("redis")
DOCKER_ERRORS = DEPENDENCY_ERRORS.labels("docker")


def proxied(status: int, seconds: float) -> None:
    """One proxied request: its status class and its duration."""
    STATUS_CLASSES[min(max(status // 100, 0), 5)].value += 1
    PROXY_LATENCY.observe(seconds)
