"""Session lifecycle, shared by the API (gateway process) and the controller.

Owns the session records and the scripts that move them along (``store``), concurrent
previews per user as leased slots (``slots``), the one path that takes a slot and a
container (``start``), finding, refreshing, commanding and stopping previews
(``previews``), putting them to sleep (``sleeping``), how the controller ends sessions
(``endings``) and keeping live sessions' records current (``tracker``).

May import: ``shared``, the top-level ``gateway`` helpers, ``gateway.containers``,
``gateway.observability`` and, to publish route changes and a preview's host,
``gateway.proxy.routes`` / ``gateway.proxy.vhosts``, and to wake a sleeping preview
``gateway.proxy.waking``; ``start`` reads the API's request model
(``gateway.api.validation``). Never ``gateway.controller``.
"""
