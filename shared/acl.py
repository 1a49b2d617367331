"""The Redis ACL of a preview container's user: its own keys, the supervisor's commands.

Untrusted code runs beside the supervisor, so assume it gets hold of these credentials:
then it can still touch only ``pv:c:{cid}:*`` (its own heartbeat, commands and events),
no other container's and none of the gateway's (``pv:s:*``, ``pv:u:*``...), and it can
run only the commands listed here. Deliberately absent: ``KEYS``/``SCAN`` (they list
every key name regardless of key patterns), ``@connection`` as a category (it includes
``CLIENT LIST``/``CLIENT KILL``, which see and kill other users' connections), pub/sub,
scripting, and everything administrative.

The gateway creates the user when it creates the container::

    ACL SETUSER <cid> reset <container_acl_rules(cid)...> ><password>
"""

from __future__ import annotations

import hashlib

from shared import keys

# Field of keys.container(cid): the SHA-256 of its supervisor's password (never the
# password), written when the container is created and read to recreate the user after a
# Redis restart or failover (gateway/controller/outage.py).
ACL_FIELD = "acl"

# Every command the supervisor sends (redis-py included), and nothing else.
SUPERVISOR_COMMANDS = (
    # connection set-up (AUTH needs no permission)
    "ping",
    "select",
    "client|setname",
    # heartbeat, logs snapshot, command blobs
    "get",
    "set",
    "del",
    "expire",
    # command stream and results
    "xgroup|create",
    "xreadgroup",
    "xack",
    "xadd",
    "hget",
    "hset",
    "rpush",
    # pipelines with transaction=True
    "multi",
    "exec",
    "discard",
)


def password_digest(password: str) -> str:
    """What ``ACL SETUSER ... #<digest>`` takes: the hex SHA-256 of the password."""
    return hashlib.sha256(password.encode()).hexdigest()


def container_acl_rules(cid: str) -> list[str]:
    """ACL SETUSER rules for container ``cid``'s user, without its password (the caller
    appends ``>password``) and after ``reset`` (the caller puts it first)."""
    return [
        "on",
        "resetkeys",
        f"~{keys.container_pattern(cid)}",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in SUPERVISOR_COMMANDS),
    ]
