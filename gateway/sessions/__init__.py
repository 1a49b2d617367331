"""Session lifecycle, shared by the API (gateway process) and the controller.

Owns the session records and the scripts that move them along (``store``), concurrent
previews per user as leased slots (``slots``), the one path that takes a slot and a
container (``start``), finding, refreshing, commanding and stopping previews
(``previews``), putting them to sleep (``sleeping``), hibernating and resuming them
(``hibernation``), following a starting preview's events for a request held on it
(``following``), the one cleanup of an ended session, whichever way it ended
(``teardown``), how the controller ends sessions (``endings``) and keeping live
sessions' records current (``tracker``).

May import: ``shared``, the top-level ``gateway`` helpers, ``gateway.containers``,
``gateway.observability`` and, for a preview's host, ``gateway.proxy.vhosts`` (and, to
wake a sleeping preview as the proxy does, ``gateway.proxy.waking``). Never the
API or ``gateway.controller`` (the API's validated start request, ``StartRequest``, is
defined here in ``start``).
"""
