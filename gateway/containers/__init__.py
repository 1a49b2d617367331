"""Preview containers on the Docker engines, as the gateway and the controller see them.

Owns the Docker runtime (``docker_runtime``, aiodocker; what every container is made of
in ``confinement``), launching, pooling, commanding and releasing containers
(``containers``; what a launch passes in ``launch``, the pool's Lua scripts in
``pool_scripts``, the supervisor command channel in ``commands``, the release path in
``release``), containers reserved for one user (``reserved``), the per-host creation cap
(``create_gate``), host placement (``placement``) and checking uploaded workspace
archives before any container sees them (``archives``).

May import: ``shared``, the top-level ``gateway`` helpers and ``gateway.observability``
(counters). Never the controller, the proxy, the API or the sessions.
"""
