"""The Redis key schema: every key and TTL the system uses, and nothing built elsewhere.

Keys a preview container may touch all start with ``container_prefix(cid)``, so that its
Redis ACL user can be limited to that one pattern (``~pv:c:{cid}:*``).
"""

from __future__ import annotations

PREFIX = "pv:"

# --- per container (written by its supervisor, readable by gateway/controller) -----------


def container_prefix(cid: str) -> str:
    return f"{PREFIX}c:{cid}:"


def container_pattern(cid: str) -> str:
    """ACL key pattern granting a container its own keys and no others."""
    return container_prefix(cid) + "*"


def heartbeat(cid: str) -> str:
    """String (JSON Heartbeat), TTL = heartbeat_ttl; deleted on clean exit."""
    return container_prefix(cid) + "hb"


def heartbeat_history(cid: str) -> str:
    """Stream of Heartbeat samples, capped at HEARTBEAT_HISTORY_LEN."""
    return container_prefix(cid) + "hbhist"


def commands(cid: str) -> str:
    """Stream of Commands for one container; consumer group COMMAND_GROUP."""
    return container_prefix(cid) + "cmd"


def command_result(cid: str, command_id: str) -> str:
    """List holding one CommandResult (BLPOP by the sender), TTL COMMAND_RESULT_TTL."""
    return container_prefix(cid) + "ack:" + command_id


def command_done(cid: str) -> str:
    """Hash command id -> result JSON: what already ran, so nothing runs twice."""
    return container_prefix(cid) + "done"


def command_blob(cid: str, command_id: str) -> str:
    """Binary payload of a command (an uploaded archive), TTL COMMAND_BLOB_TTL."""
    return container_prefix(cid) + "blob:" + command_id


def events(cid: str) -> str:
    """Stream of Events (progress, warning, ready, error) tagged with their session id."""
    return container_prefix(cid) + "events"


def logs(cid: str) -> str:
    """Snapshot of recent dev-server output (string), refreshed by the supervisor."""
    return container_prefix(cid) + "logs"


# --- gateway / controller state ---------------------------------------------------------


def container(cid: str) -> str:
    """Hash: host, docker_id, address, port, image, state, session, created_at; ``user``
    once a session of that user got it (it never serves anyone else), ``reserved_until``."""
    return f"{PREFIX}ctr:{cid}"


CONTAINERS = f"{PREFIX}containers"  # set of every cid we created and not yet removed


def pool(image: str) -> str:
    """List of warm, idle cids for one image digest that never ran user code (the general
    pool: LPUSH when warmed, taken oldest first on acquire)."""
    return f"{PREFIX}pool:{image}"


def user_reserved(user: str) -> str:
    """Sorted set cid -> reserved-until (unix s): containers released by this user's
    sessions, reset and kept for this user's next start only."""
    return f"{PREFIX}u:{user}:reserved"


# Sorted set cid -> reserved-until of every user's reserved containers: the controller's
# index for expiry, health checks and eviction (an entry leaves it and its user's set at once).
RESERVED = f"{PREFIX}reserved"


def session(sid: str) -> str:
    """Hash: the preview's record (user, project, state, container, timings, error...)."""
    return f"{PREFIX}s:{sid}"


SESSIONS = f"{PREFIX}sessions"  # set of live session ids


def session_lock(sid: str) -> str:
    return f"{PREFIX}s:{sid}:lock"


def user_slots(user: str) -> str:
    """Sorted set session id -> lease expiry (unix seconds): the concurrency limit."""
    return f"{PREFIX}u:{user}:slots"


def user_project(user: str, project_id: str) -> str:
    """String: the live session of this user's project (hot start)."""
    return f"{PREFIX}u:{user}:p:{project_id}"


def activity(sid: str) -> str:
    """String: unix time of the last proxied request or open WebSocket refresh."""
    return f"{PREFIX}s:{sid}:active"


def requested(sid: str) -> str:
    """String: unix time of the last proxied HTTP request, WebSocket upgrade or API write
    or command: what keeps a preview awake (PREVIEW_SLEEP_AFTER). WebSocket messages do not
    count: an HMR socket of a page left open pings on its own."""
    return f"{PREFIX}s:{sid}:requested"


def user_hibernated(user: str) -> str:
    """Sorted set session id -> end of its resume window (unix s): the user's hibernated
    previews (their records carry the archive's name, checksum and host)."""
    return f"{PREFIX}u:{user}:hibernated"


def lifecycle(sid: str) -> str:
    """Stream of the preview's state changes after its start (fields ``state``, ``at``):
    sleeping, ready (woken or resumed), hibernated, resuming, failed, stopped. Written by
    the scripts that make those changes, read by ``GET .../events?follow=1``. Capped at
    LIFECYCLE_MAXLEN, expires LIFECYCLE_TTL after its last entry (LIFECYCLE_ENDED_TTL
    after ``stopped``)."""
    return f"{PREFIX}s:{sid}:lifecycle"


# Sorted set session id -> end of its resume window (unix s): every hibernated preview, for
# the dashboard's count (entries past their window are dropped when it is read).
HIBERNATED = f"{PREFIX}hibernated"
# Lists of JSON, newest first, capped at RECENT_TRANSITIONS: the dashboard's recent wakes
# ({"session", "trigger", "at", "ms"}) and resumes ({"session", "user", "trigger", "at"}).
RECENT_WAKES = f"{PREFIX}recent:wakes"
RECENT_RESUMES = f"{PREFIX}recent:resumes"
RECENT_TRANSITIONS = 20


def auth_failures(sid: str, client: str) -> str:
    """The failed-authentication limiter's key (under RATE_LIMIT_PREFIX, one moving window
    per rule) for one preview and one client address: strangers' failures on the same
    address or preview never add up to a limit."""
    return f"{PREFIX}authfail:{sid}:{client}"


def open_token_used(nonce: str) -> str:
    """String with a TTL (the token's lifetime): this open_url token was traded for a
    cookie already (single use, across every gateway replica)."""
    return f"{PREFIX}open-used:{nonce}"


def share(share_id: str) -> str:
    """Hash: a share link of a preview (sid, owner, access, ports, created_at, expires_at),
    expiring with the link (EXPIREAT): gone is revoked or expired, for every gateway."""
    return f"{PREFIX}share:{share_id}"


def preview_shares(sid: str) -> str:
    """Sorted set share id -> expires_at (unix s): a preview's share links (the per-preview
    limit counts the unexpired ones)."""
    return f"{PREFIX}s:{sid}:shares"


def share_views(client: str) -> str:
    """Counter of share links opened from one client address (fixed window, limit
    PREVIEW_RATE_LIMIT_SHARE_VIEWS)."""
    return f"{PREFIX}share-views:{client}"


def port_hop(nonce: str) -> str:
    """String with a TTL (the hop token's lifetime): whom a port-host hop token was minted
    for (``owner:{user}`` or ``share:{id}``), kept here rather than in the URL (a share's
    id is its capability); deleted when traded, so each token is used once."""
    return f"{PREFIX}port-hop:{nonce}"


def port_hops(label: str, grantee: str) -> str:
    """Counter with a TTL (one minute): port-host cookies minted for one grantee (the
    owner or a share) of one preview, bounding redirect loops when a browser keeps none."""
    return f"{PREFIX}port-hops:{label}:{grantee}"


# Published on ROUTE_CHANGES when a share is revoked: every gateway forgets it and closes
# its viewers' WebSockets (a session id never starts with it: ids are base32).
SHARE_CHANGE_PREFIX = "share:"


ROUTE_CHANGES = f"{PREFIX}route-changes"  # pub/sub channel: a session id whose route changed
LEADER = f"{PREFIX}leader"  # controller leader lease (value: controller id)
RATE_LIMIT_PREFIX = f"{PREFIX}rl"  # slowapi/limits storage prefix

# --- TTLs and sizes ----------------------------------------------------------------------

COMMAND_GROUP = "supervisor"
COMMAND_RESULT_TTL = 300  # seconds a result waits for its reader
COMMAND_BLOB_TTL = 300
COMMANDS_MAXLEN = 1000
EVENTS_MAXLEN = 2000
HEARTBEAT_HISTORY_LEN = 720  # an hour of 5 s samples
HEARTBEAT_HISTORY_FIELD = "heartbeat"  # the field of each heartbeat_history entry (Heartbeat JSON)
LOGS_TTL = 3600
SESSION_LOCK_TTL = 30

# --- preview API (gateway) ----------------------------------------------------------------


def user_slot_freed(user: str) -> str:
    """Pub/sub channel: one of this user's slots was freed (wakes `?wait=` starts)."""
    return f"{PREFIX}u:{user}:freed"


TRACKER_LOCK = f"{PREFIX}tracker"  # one gateway per tick folds events and renews leases
TRACKER_LOCK_TTL_MS = 800  # under the 1 s tick: whoever comes first takes the next one
USER_PROJECT_TTL = 86400  # a hot-start pointer outlives no session by more than this
STOPPED_SESSION_TTL = 600  # a stopped session's record, until its container is released
LIFECYCLE_MAXLEN = 64  # a preview's last state changes; a follower is never that far behind
LIFECYCLE_TTL = 8 * 24 * 3600  # beyond any resume window a hibernated preview may have
LIFECYCLE_ENDED_TTL = 60  # after `stopped`: followers that reconnect still read the end

# --- supervisor ------------------------------------------------------------------------

# command_done(cid) lives this long after its last write: far longer than any redelivery.
COMMAND_DONE_TTL = 24 * 3600

# --- warm pool, placement, reaper (controller) --------------------------------------------


def pool_image(image: str) -> str:
    """String: the content id (sha256:...) image name `image` resolves to: the pool in use.
    Written by whoever resolves it (controller, or a gateway launching); read on acquire.
    Not under pool("*"): scans of the pools must not see it (nor POOL_DEMAND/POOL_STATS)."""
    return f"{PREFIX}pool-image:{image}"


POOL_DEMAND = f"{PREFIX}pool-demand"  # sorted set: acquisition token -> unix time (autoscale)
# hash: target, replenish_s, peak, updated; hits and misses (general pool), reserved_hits
POOL_STATS = f"{PREFIX}pool-stats"
POOL_DEMAND_MAX = 20_000  # acquisitions remembered at most (the window is also in time)


def docker_host(name: str) -> str:
    """Hash: state (up|down), since, reason, mem_total, ncpu, checked_at (controller)."""
    return f"{PREFIX}host:{name}"


def host_containers(name: str) -> str:
    """Set of cids placed on this Docker host and not yet removed (our accounting)."""
    return f"{PREFIX}host:{name}:containers"


def host_creating(name: str) -> str:
    """Sorted set: creation token -> lease expiry; container creations under way."""
    return f"{PREFIX}host:{name}:creating"


def host_starts_waiting(name: str) -> str:
    """Sorted set: token -> expiry of user starts waiting to create (refills yield)."""
    return f"{PREFIX}host:{name}:starts-waiting"


def host_boosts(name: str) -> str:
    """Hash: cid -> "extra CPUs|expiry" of the containers on this host running with a
    startup CPU boost (gateway/containers/boost.py)."""
    return f"{PREFIX}host:{name}:boosts"


CREATE_LEASE = 120  # seconds a creation slot is held at most (a crashed creator frees it)
CREATE_WAIT_TTL = 5  # seconds a waiting start's mark lives unless renewed
REAPER_LOCK_TTL_MS = 10_000  # the session lock while the reaper decides about it

# --- observability: preview records, alerts, costs, operator flags ------------------------

RECORDS_INDEX = f"{PREFIX}rec:index"  # sorted set: record id -> its time (unix seconds)
RECORDS_DATA = f"{PREFIX}rec:data"  # hash: record id -> record JSON (idempotent by id)
RECORDS_TRIM_BATCH = 500  # records dropped per insert at most (retention, size bound)


def alert_sent(condition: str) -> str:
    """String with a TTL: this alert condition was sent recently (dedupe across processes)."""
    return f"{PREFIX}alert:{condition}"


def cost_day(day: str) -> str:
    """Hash for one UTC day (YYYY-MM-DD): "u:{user}" / "p:{project}" / "pool" / "total" ->
    container-seconds (HINCRBYFLOAT by the leading controller)."""
    return f"{PREFIX}cost:{day}"


COST_ACCRUED_AT = f"{PREFIX}cost:accrued-at"  # string: unix time container time was counted to
COST_MAX_GAP = 300.0  # seconds of container time one accrual counts at most (controller gap)
DRAINED_HOSTS = f"{PREFIX}hosts:drained"  # set of Docker host names: no new containers there
