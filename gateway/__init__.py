"""The preview gateway: two processes (gateway, controller) in planes, one subpackage each.

- ``proxy``: the data plane, browser → dev server (imports nothing of Docker or sessions).
- ``api``: the control plane over HTTP (the API, operator endpoints, health).
- ``sessions``: the session lifecycle shared by the API and the controller.
- ``containers``: preview containers on the Docker engines.
- ``controller``: the controller process and the leader's upkeep.
- ``observability``: metrics, preview records, statistics, alerts, logs, Sentry.

At the top: the entry points (``__main__``, ``asgi``, ``cli``), the hypercorn fixes the
server needs (``hypercorn_compat``) and what every plane shares (``asgi_types``,
``errors``, ``background``). Package ``__init__`` modules import nothing, so importing
one module never loads a plane.
"""
