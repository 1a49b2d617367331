"""What the records say: start-time percentiles per phase, pool hit rate, install-skip
rate, success and error rates (overall and over time), and the CSV export.

Definitions (the same in the API, the dashboard and the README):
- success rate: ready starts / all starts; error rate: failed + no_capacity / all starts
  (cancelled starts, stopped before they were ready, count in neither);
- pool hit rate: starts served by a warm container / starts that got a container;
- install-skip rate: starts whose dependencies were restored from the cache or kept
  (``restored`` + ``skipped``) / starts whose dependency outcome is known;
- phase percentiles: over ready starts, linear interpolation between closest ranks.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.observability.records import ERROR_OUTCOMES, PHASES, START_OUTCOMES, Record

CSV_COLUMNS = (
    "id",
    "kind",
    "time",
    "session",
    "user",
    "project",
    "host",
    "container",
    "outcome",
    "reason",
    "from_pool",
    "dependencies",
    *(f"{phase}_ms" for phase in PHASES),
    "duration_s",
    "shares",
    "share_views",
    "sleeps",
    "wakes",
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values`, linearly interpolated; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarize(starts: Sequence[Record]) -> dict[str, Any]:
    """The numbers of one set of start records."""
    outcomes = {outcome: 0 for outcome in START_OUTCOMES}
    for found in starts:
        outcomes[found.outcome] = outcomes.get(found.outcome, 0) + 1
    total = len(starts)
    errors = sum(outcomes.get(o, 0) for o in ERROR_OUTCOMES)
    with_container = [s for s in starts if s.from_pool is not None]
    known_deps = [s for s in starts if s.dependencies]
    skipped = [s for s in known_deps if s.dependencies in ("restored", "skipped")]
    ready = [s for s in starts if s.outcome == "ready"]
    phases: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        values = [s.timings[phase] for s in ready if phase in s.timings]
        p50, p95 = percentile(values, 50), percentile(values, 95)
        phases[phase] = {
            "count": len(values),
            "p50_ms": None if p50 is None else round(p50),
            "p95_ms": None if p95 is None else round(p95),
        }
    return {
        "starts": total,
        "outcomes": outcomes,
        "success_rate": _rate(outcomes["ready"], total),
        "error_rate": _rate(errors, total),
        "pool_hit_rate": _rate(sum(1 for s in with_container if s.from_pool), len(with_container)),
        "install_skip_rate": _rate(len(skipped), len(known_deps)),
        "dependencies": {
            name: sum(1 for s in known_deps if s.dependencies == name)
            for name in ("installed", "restored", "skipped")
        },
        "phases": phases,
    }


def bucket_seconds(days: float) -> int:
    """Hourly buckets up to two days, daily beyond: 24-60 points on a chart."""
    return 3600 if days <= 2 else 86400


def series(starts: Sequence[Record], since: float, until: float, step: int) -> list[dict[str, Any]]:
    """Per time bucket: starts, success rate, p50/p95 of the total start time."""
    first = math.floor(since / step) * step
    count = max(1, math.ceil((until - first) / step))
    buckets: list[list[Record]] = [[] for _ in range(count)]
    for found in starts:
        index = int((found.ts - first) // step)
        if 0 <= index < count:
            buckets[index].append(found)
    points = []
    for i, bucket in enumerate(buckets):
        totals = [
            s.timings["total"] for s in bucket if s.outcome == "ready" and "total" in s.timings
        ]
        ready = sum(1 for s in bucket if s.outcome == "ready")
        errors = sum(1 for s in bucket if s.outcome in ERROR_OUTCOMES)
        p50, p95 = percentile(totals, 50), percentile(totals, 95)
        points.append(
            {
                "t": first + i * step,
                "starts": len(bucket),
                "ready": ready,
                "errors": errors,
                "success_rate": _rate(ready, len(bucket)),
                "p50_ms": None if p50 is None else round(p50),
                "p95_ms": None if p95 is None else round(p95),
            }
        )
    return points


def stats(records: Iterable[Record], days: float, now: float | None = None) -> dict[str, Any]:
    """The ``GET /v1/admin/stats`` answer for the records of the last `days`."""
    now = now if now is not None else time.time()
    since = now - days * 86400
    found = [r for r in records if r.ts >= since]
    starts = [r for r in found if r.kind == "start"]
    stops = [r for r in found if r.kind == "stop"]
    lived = [r.duration for r in stops]
    step = bucket_seconds(days)
    return {
        "days": days,
        "since": since,
        "until": now,
        **summarize(starts),
        "stops": len(stops),
        "stop_reasons": _counts(r.outcome for r in stops),
        # A hibernated preview's later periods begin with a resume, not a start.
        "resumes": sum(1 for r in found if r.kind == "resume"),
        "sleeps": sum(r.sleeps for r in stops),
        "wakes": sum(r.wakes for r in stops),
        "session_seconds": {
            "p50": percentile(lived, 50),
            "p95": percentile(lived, 95),
            "total": round(sum(lived), 1),
        },
        "failure_reasons": _counts(
            r.reason or r.outcome for r in starts if r.outcome in ERROR_OUTCOMES
        ),
        "bucket_seconds": step,
        "series": series(starts, since, now, step),
    }


def _counts(values: Iterable[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for value in values:
        found[value] = found.get(value, 0) + 1
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    # A cell starting with = + - @ is a formula to spreadsheets (CSV injection); project
    # ids and failure reasons come from users.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def csv_header() -> str:
    return _csv_rows([list(CSV_COLUMNS)])


def csv_rows(records: Iterable[Record]) -> str:
    rows = []
    for r in records:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.ts))
        pool = "" if r.from_pool is None else str(r.from_pool).lower()
        timings = [r.timings.get(phase, "") for phase in PHASES]
        duration = round(r.duration, 1) if r.kind == "stop" else ""
        row: list[object] = [r.id, r.kind, when, r.sid, r.user, r.project, r.host, r.container]
        row += [r.outcome, r.reason, pool, r.dependencies, *timings, duration]
        row += [r.shares, r.share_views, r.sleeps, r.wakes] if r.kind == "stop" else [""] * 4
        rows.append([_cell(v) for v in row])
    return _csv_rows(rows)


def _csv_rows(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()
