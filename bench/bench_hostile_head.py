"""Gateway responsiveness while dev servers send huge response heads (issue: tenant
isolation, finding 3).

One gateway as the Procfile runs it, one hostile dev server (tests/fixtures/
hostile_devserver.js) and one ordinary upstream. For `--seconds` each: /healthz and another
user's preview requested one after the other, first with nothing else going on (baseline),
then while `--attackers` clients each ask, again and again, for a `--mb` MiB header. Prints
the latency percentiles of both phases and the gateway's RSS before, at its peak and after.

    .venv/bin/python bench/bench_hostile_head.py [--seconds 10] [--attackers 4] [--mb 50]
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time

import httpx
from _root import ROOT

from tests.gateway.proxy_fixtures import (
    Upstream,
    proxy_gateway,
    rss_kib,
    start_upstream,
)
from tests.utils import free_port, start_redis, wait_until


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def phase(
    gateway_url: str,
    victim: httpx.Client,
    pid: int,
    seconds: float,
    attack: httpx.Client | None,
    attackers: int,
    mb: int,
) -> dict[str, float]:
    stop = threading.Event()
    statuses: list[int] = []

    def attacker() -> None:
        assert attack is not None
        while not stop.is_set():
            try:
                statuses.append(attack.get(f"/huge-head?mb={mb}", timeout=120).status_code)
            except httpx.HTTPError:
                statuses.append(0)

    threads = [threading.Thread(target=attacker) for _ in range(attackers if attack else 0)]
    for thread in threads:
        thread.start()
    healthz: list[float] = []
    preview: list[float] = []
    peak = before = rss_kib(pid)
    with httpx.Client(base_url=gateway_url, timeout=120) as api:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for client, path, into in ((api, "/healthz", healthz), (victim, "/x", preview)):
                began = time.monotonic()
                client.get(path)
                into.append(time.monotonic() - began)
            peak = max(peak, rss_kib(pid))
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "healthz_p50_ms": percentile(healthz, 0.5),
        "healthz_p99_ms": percentile(healthz, 0.99),
        "healthz_max_ms": max(healthz) * 1000,
        "preview_p99_ms": percentile(preview, 0.99),
        "preview_max_ms": max(preview) * 1000,
        "probes": len(healthz),
        "attacks": len(statuses),
        "attacks_502": statuses.count(502),
        "rss_before_mib": before / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_after_mib": rss_kib(pid) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    redis = start_redis(bind_bridge=False)
    port = free_port()
    hostile_proc = subprocess.Popen(
        ["node", str(ROOT / "tests/fixtures/hostile_devserver.js"), str(port)],
        stdout=subprocess.DEVNULL,
    )
    hostile = Upstream(port, hostile_proc)
    benign = start_upstream()
    try:
        wait_until(
            lambda: httpx.get(f"http://{hostile.address}/").status_code == 200, 10, "hostile"
        )
        with proxy_gateway(redis, log_level="WARNING") as env:
            pid = env.gateway.process.pid
            with (
                env.login(env.session(benign.address, user="bob"), "bob") as victim,
                env.login(env.session(hostile.address, user="mallory"), "mallory") as attack,
            ):
                attack.headers["accept"] = "application/json"
                for _ in range(20):
                    victim.get("/x")
                base = phase(env.gateway.url, victim, pid, args.seconds, None, 0, args.mb)
                under = phase(
                    env.gateway.url, victim, pid, args.seconds, attack, args.attackers, args.mb
                )
        print(f"{'':24}{'baseline':>12}{'under attack':>14}")
        for key in base:
            print(f"{key:24}{base[key]:12.1f}{under[key]:14.1f}")
    finally:
        for proc in (hostile_proc, benign.process):
            proc.kill()
            proc.wait()
        redis.stop()


if __name__ == "__main__":
    main()
