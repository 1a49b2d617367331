"""The data plane: every request to ``{id}.{PREVIEW_DOMAIN}`` from the browser to the dev server.

Owns the host router (``router``: which host is a preview, the API, or nothing of ours),
who may see a preview (``preview_auth``, ``preview_tokens``, ``signed``, ``cookies``,
``clients``), the route cache (``routes``: session id → owner, state, dev-server address,
kept current by published changes), waking a sleeping preview (``waking``: a command to
its supervisor over Redis), the HTTP and WebSocket relays (``proxy_http``, ``proxy_ws``)
over a lean upstream client (``upstream``), WebSockets' per-client caps and byte budgets
(``sockets``, ``ws_budget``) and the pages a person sees in the iframe (``pages``, ``starting``).

May import: ``shared``, the top-level ``gateway`` helpers (``asgi_types``, ``errors``,
``background``) and ``gateway.observability`` (metrics only). Never Docker, sessions, the
API or the controller: a request on the hot path reads Redis through the route cache and
nothing else (a sleeping preview's first request also sends its wake; a hibernated one's
asks the app's resume hook).
"""
