"""The controller process (``preview-controller``): background upkeep of containers.

Owns the process and its wiring (``main``), the leader lease (``leader``: several
controllers run, one acts), and what the leader does each pass: the reaper (``reaper``),
resource rules from the supervisors' numbers (``resources``), Docker host health
(``hosts``), orphans both ways (``orphans``), what to restore after Redis was away
(``outage``), the warm pool's size and upkeep (``autoscale``, ``pool``).

May import: ``shared``, the top-level ``gateway`` helpers, ``gateway.sessions``,
``gateway.containers`` and ``gateway.observability``. Never the proxy or the API.
"""
