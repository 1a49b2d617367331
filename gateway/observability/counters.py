"""In-process counters of the controller's and containers' decisions, and their log lines.

Every reap, release, destroy, scale and host decision goes through :func:`decision`: one
log line with its reason, and one increment of ``(event, code)``. The code is a short,
fixed word (``idle``, ``heartbeat_lost``...) so a metrics exporter can use it as a label;
the human reason, which may name a container or quote an error, goes only to the log.
The metrics endpoint (a later issue) reads :data:`COUNTERS`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

Key = tuple[str, str]  # (event, code)


class Counters:
    """Monotonic counts of (event, code); safe to bump from any thread."""

    def __init__(self) -> None:
        self._counts: Counter[Key] = Counter()
        self._lock = threading.Lock()

    def inc(self, event: str, code: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[(event, code)] += amount

    def get(self, event: str, code: str | None = None) -> int:
        """One count, or the sum over all codes of `event`."""
        with self._lock:
            if code is not None:
                return self._counts[(event, code)]
            return sum(n for (e, _), n in self._counts.items() if e == event)

    def snapshot(self) -> dict[Key, int]:
        with self._lock:
            return dict(self._counts)


# The process's registry, like prometheus_client's default REGISTRY: the metrics work reads
# this one; tests read it before and after (counts only go up).
COUNTERS = Counters()


def decision(
    log: logging.Logger,
    event: str,
    code: str,
    reason: str,
    level: int = logging.INFO,
    counters: Counters = COUNTERS,
    **context: object,
) -> None:
    """Log `event` with its reason and context (``key=value``) and count it under `code`."""
    counters.inc(event, code)
    fields = " ".join(f"{k}={v}" for k, v in context.items() if v is not None and v != "")
    log.log(level, "%s code=%s %s reason=%r", event, code, fields, reason)
