"""Preview containers on the Docker engines, as the gateway and the controller see them.

Owns the Docker runtime (``docker_runtime``, aiodocker), launching, pooling, commanding
and releasing containers (``containers``), containers reserved for one user
(``reserved``), whether the proxy reaches containers at their own address (``direct``),
the per-host creation cap (``create_gate``), host placement
(``placement``) and checking uploaded workspace archives before any container sees them
(``archives``).

May import: ``shared``, the top-level ``gateway`` helpers and ``gateway.observability``
(counters). One exception: ``containers`` reads the ACL password digest and its record
field from ``gateway.controller.outage``, which recreates those users after a Redis
restart. Never the proxy, the API or the sessions.
"""
