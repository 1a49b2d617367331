"""What operators see of both processes: metrics, records, statistics, alerts and logs.

Owns Prometheus exposition (``metrics``), this process's own counts (``instruments``,
``counters``) and the shared state read from Redis when scraped (``collect``, ``live``);
preview records (``records`` the model, ``record_store`` in Redis, ``recorder`` writing
them from the lifecycle hooks, ``spool`` when Redis cannot take them) and what they say
(``stats``, ``costs``); alerts (``alerts``) and the upkeep that runs them (``ops``);
logging (``logs``), Sentry (``sentry_setup``) and the start-up check that built-in
secrets stay on one machine (``exposure``).

May import: ``shared``, the top-level ``gateway`` helpers, ``gateway.containers`` and
``gateway.sessions`` (read only: ``live`` reads sessions and hosts; ``records`` the
session model). Never the API, the proxy or the controller.
"""
