"""How the gateway process serves: its listeners and processes.

``listen``: hypercorn's configuration and the TLS listener (certificate checks at start-up,
HTTP/2 and HTTP/1.1 by ALPN, a clear answer to plain http on the TLS port); ``serve``: one
gateway process's serving loop and drain; ``workers``: PREVIEW_WORKERS processes sharing
the listeners.

May import: ``shared``, the top-level ``gateway`` helpers, ``gateway.observability`` and
the API's configuration errors; the application (``gateway.asgi``) only inside the
worker, once its sockets are bound.
"""
