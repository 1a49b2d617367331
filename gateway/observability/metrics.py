"""Prometheus metrics without a client library: counters, gauges, histograms, exposition.

Built for the proxy's hot path: a metric's labelled child is looked up once and kept, and
counting is an attribute increment (histograms: one ``bisect`` and two increments). No
locks: each process updates its metrics from its one event loop. Values that live in
Redis (sessions, pool, hosts) are not kept here; they are read when scraped
(gateway/observability/collect.py) and rendered with :func:`render`.

``serve_metrics`` is a tiny HTTP server for processes without a web app (the controller).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a cached asset (~1 ms) to a cold dev-server compile (tens of seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds: preview start phases, from a pool hit (~50 ms) to a cold install (minutes).
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Labels) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class Family:
    """One metric as rendered: name, type, help, and its samples (suffix, labels, value)."""

    name: str
    help: str
    kind: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append(("", tuple(labels.items()), value))


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Value] = {}
        if not self.labelnames:
            self._children[()] = _Value()

    def labels(self, *values: str) -> _Value:
        """The child for these label values (in `labelnames` order); keep it if hot."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = _Value()
        return child

    def family(self) -> Family:
        found = Family(self.name, self.help, self.kind)
        for values, child in sorted(self._children.items()):
            found.samples.append(
                ("", tuple(zip(self.labelnames, values, strict=True)), child.value)
            )
        return found


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].value += amount

    def value(self, *values: str) -> float:
        child = self._children.get(values)
        return child.value if child is not None else 0.0


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float) -> None:
        self._children[()].value = value

    def dec(self, amount: float = 1.0) -> None:
        self._children[()].value -= amount


class _Buckets:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Histogram:
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(buckets))
        self._children: dict[tuple[str, ...], _Buckets] = {}
        if not self.labelnames:
            self._children[()] = _Buckets(self.bounds)

    def labels(self, *values: str) -> _Buckets:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = _Buckets(self.bounds)
        return child

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    def family(self) -> Family:
        found = Family(self.name, self.help, self.kind)
        for values, child in sorted(self._children.items()):
            base = tuple(zip(self.labelnames, values, strict=True))
            running = 0
            for bound, n in zip((*self.bounds, math.inf), child.counts, strict=True):
                running += n
                found.samples.append(("_bucket", (*base, ("le", _number(bound))), running))
            found.samples.append(("_sum", base, child.sum))
            found.samples.append(("_count", base, child.count))
        return found


Metric = Counter | Gauge | Histogram


class Registry:
    """The metrics one process keeps; rendered with whatever is collected at scrape."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}

    def _add(self, metric: Metric) -> Metric:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self._add(metric)
        return metric

    def families(self) -> list[Family]:
        return [m.family() for m in self.metrics.values()]


def render(families: Iterable[Family]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            lines.append(f"{family.name}{suffix}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


Collect = Callable[[], Awaitable[str]]


async def serve_metrics(bind: str, collect: Collect) -> asyncio.Server:
    """Serve ``GET /metrics`` (the text `collect` returns) on ``host:port``; anything
    else is 404. Close the returned server to stop."""
    host, _, port = bind.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""]
            if method == b"GET" and path.split(b"?", 1)[0] == b"/metrics":
                status, body, kind = b"200 OK", (await collect()).encode(), CONTENT_TYPE
            else:
                status, body, kind = b"404 Not Found", b"not found\n", "text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + kind.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host or "127.0.0.1", int(port))
    log.info("metrics served on http://%s/metrics", bind)
    return server
