"""The host dependency cache, as one supervisor uses it: ``node_modules`` archives shared by
every preview on a host, through the cache volume mounted at /cache.

Owns the cache key (``cachekey``: everything an install's result depends on), the volume
and its layout (``cachevolume``), archives on disk (``archive``), the cache as one
supervisor uses it (``cache``: ``DependencyCache``), reading an installed tree into a tar
stream and restoring one (``pack``, ``restore``, ``tarstream``), shared npm tarballs
(``npmstore``) and running that blocking work in threads of its own (``threads``).

May import: ``shared`` and the supervisor's own modules (``config``, ``context``,
``detect``, ``events``, ``procs``). ``supervisor.dependencies`` and ``supervisor.prepare``
use it; nothing here imports them.
"""
