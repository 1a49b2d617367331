"""Proxy speed, everything in one run on loopback (issue: preview data plane).

Workload (bench/anchors/): GET of a 2 KiB JavaScript module from a node upstream, wrk
-t1 -c32 -d6s. Side by side: the upstream direct, nginx, Starlette "hello" on hypercorn
(hypercorn's own ceiling), the naive Starlette+httpx proxy, and our gateway as the Procfile
runs it (auth cookie, routing, the lean upstream client). Then added latency at one
connection, and 2,000 concurrent WebSockets with echo traffic through one gateway process.

Then through a real preview container (the preview image running the same upstream):
its own address, its Docker-published port (docker-proxy), and the gateway to either,
with PREVIEW_WORKERS 1 and 2 against hypercorn's hello with 1 and 2 workers (wrk -t2),
all up at once and measured in turns (medians of --repeats), with the CPU each part spends
per request. The machine is shared with other engineers' work and has 2 cores that wrk
shares too: read the ratios of one run.

    .venv/bin/python bench/bench_proxy.py [--seconds 6] [--sockets 2000] [--image ...]
    .venv/bin/python bench/bench_proxy.py --only-container [--repeats 3] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import httpx
import redis as redis_sync
from _root import ROOT

from gateway.proxy.preview_tokens import open_token
from shared import keys
from shared.settings import Settings
from tests.utils import TEST_IMAGE, free_port, start_redis, stop_process, wait_until

ANCHORS = ROOT / "bench" / "anchors"
PERIOD = 2.0  # seconds between a socket's echo messages
PY = sys.executable


def need(command: str, package: str) -> None:
    if shutil.which(command) is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL
        )


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        stop_process(proc, timeout=10)


def wait_http(url: str, headers: dict[str, str] | None = None) -> None:
    def ok() -> bool:
        try:
            return httpx.get(url, headers=headers, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(ok, 20, url)


def wrk(url: str, seconds: int, connections: int, headers: dict[str, str]) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"non-2xx answers from {url}:\n{out}")

    def ms(label: str) -> float:
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": ms("50%"), "p99": ms("99%")}


async def ws_echo_round(
    uri: str, host: str, port: int, headers: dict[str, str], sockets: int, rounds: int
) -> tuple[list[float], int]:
    from websockets.asyncio.client import connect

    conns = []
    dropped = 0
    sem = asyncio.Semaphore(200)

    async def open_one() -> None:
        async with sem:
            conns.append(
                await connect(
                    uri,
                    host=host,
                    port=port,
                    additional_headers=headers,
                    proxy=None,
                    compression=None,
                    open_timeout=30,
                    ping_interval=None,
                    max_queue=4,
                )
            )

    await asyncio.gather(*(open_one() for _ in range(sockets)))
    samples: list[float] = []

    async def echo(ws: object) -> None:
        # Staggered, one message per socket every PERIOD s: HMR-like traffic, not a flood.
        nonlocal dropped
        await asyncio.sleep(random.uniform(0, PERIOD))
        for _ in range(rounds):
            start = time.perf_counter()
            try:
                await ws.send("x" * 64)  # type: ignore[attr-defined]
                await ws.recv()  # type: ignore[attr-defined]
            except Exception:
                dropped += 1
                return
            samples.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(PERIOD)

    await asyncio.gather(*(echo(ws) for ws in conns))
    open_after = sum(1 for ws in conns if ws.state.name == "OPEN")
    dropped += sockets - open_after
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return samples, dropped


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def preview_container(image: str) -> Iterator[tuple[str, str, int]]:
    """The anchors' upstream in a preview container: (its own address, published, the
    node process's pid on this host, for its CPU)."""
    label = f"preview-gateway.bench=proxy-{os.getpid()}"
    cid = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--label",
            label,
            "-p",
            "127.0.0.1::3000",
            "-v",
            f"{ANCHORS}:/anchors:ro",
            "--entrypoint",
            "node",
            image,
            "-e",
            # The anchors' upstream listens on loopback: here on the container's address.
            "eval(require('fs').readFileSync('/anchors/upstream.js', 'utf8')"
            ".replace(/\\.listen\\(.*$/m, \".listen(3000, '0.0.0.0');\"))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        ip, pid = subprocess.run(
            [
                "docker",
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}} {{.State.Pid}}",
                cid,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        port = (
            subprocess.run(
                ["docker", "port", cid, "3000/tcp"], capture_output=True, text=True, check=True
            )
            .stdout.split()[0]
            .rsplit(":", 1)[1]
        )
        wait_http(f"http://{ip}:3000/x.js")
        yield f"{ip}:3000", f"127.0.0.1:{port}", int(pid)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


@contextlib.contextmanager
def bench_gateway(
    redis_url: str,
    routes: dict[str, str],
    workers: int,
    extra: dict[str, str] | None = None,
    tree: Path = ROOT,
) -> Iterator[tuple[int, dict[str, dict[str, str]], subprocess.Popen[bytes]]]:
    """A gateway (PREVIEW_WORKERS=`workers`) with one ready preview per `routes` entry
    (sid → upstream address): (port, sid → the headers that open it, its process); run
    from the source `tree` (another checkout: a baseline in the same run)."""
    port, secret = free_port(), "bench-secret"
    env = {
        "PREVIEW_REDIS_URL": redis_url,
        "PREVIEW_SIGNING_SECRET": secret,
        "PREVIEW_BIND": f"127.0.0.1:{port}",
        "PREVIEW_LOG_LEVEL": "WARNING",
        "PREVIEW_WORKERS": str(workers),
        "PYTHONPATH": str(tree),
        **(extra or {}),
    }
    client = redis_sync.Redis.from_url(redis_url)
    for sid, address in routes.items():
        client.hset(
            keys.session(sid),
            mapping={"id": sid, "user": "bench", "state": "ready", "address": address},
        )
    client.close()
    with process([PY, "-m", "gateway"], env=env, cwd=tree) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        settings = Settings.from_env({}, signing_secret=secret)
        headers = {}
        for sid in routes:
            host = f"{sid}.preview.localhost:{port}"
            login = httpx.get(
                f"http://127.0.0.1:{port}/?preview_token={open_token(settings, sid, 'bench')}",
                headers={"host": host},
            )
            cookie = login.headers["set-cookie"].split(";", 1)[0]
            headers[sid] = {"Host": host, "Cookie": cookie}
            wait_http(f"http://127.0.0.1:{port}/x.js", headers[sid])
        yield port, headers, proc


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and their threads so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and its children (a gateway's or hypercorn's workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class Row:
    rps: float
    server_us: float  # CPU µs per request of the server measured (gateway, hello...)
    upstream_us: float  # of the dev server (node in the container)
    wrk_us: float
    busy: float  # the whole machine's cores busy, in cores


def container_section(
    image: str, redis_url: str, seconds: int, tree: Path | None, repeats: int
) -> None:
    """Throughput through a real preview container, with the CPU each part spends per
    request: the gateway's own, the dev server's, wrk's, and how busy the machine was."""

    def run(address: str, headers: dict[str, str] | None = None, server: int = 0) -> Row:
        args = ["wrk", "-t2", "-c32", f"-d{seconds}s"]
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        servers = family(server) if server else []
        before = (cpu_of(servers), cpu_of([node]), resource.getrusage(resource.RUSAGE_CHILDREN))
        busy0, total0 = machine_busy()
        out = subprocess.run(
            [*args, f"http://{address}/x.js"], capture_output=True, text=True, check=True
        ).stdout
        busy1, total1 = machine_busy()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if "Non-2xx" in out:
            raise SystemExit(f"non-2xx answers from {address}:\n{out}")
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        assert found, out
        rps = float(found.group(1))
        requests = rps * seconds
        wrk_cpu = after.ru_utime + after.ru_stime - before[2].ru_utime - before[2].ru_stime
        cores = os.cpu_count() or 1
        return Row(
            rps,
            (cpu_of(servers) - before[0]) / requests * 1e6,
            (cpu_of([node]) - before[1]) / requests * 1e6,
            wrk_cpu / requests * 1e6,
            (busy1 - busy0) / (total1 - total0) * cores,
        )

    # Every server up at once and measured in turns, `repeats` times: the machine's other
    # work comes and goes, and a median of turns compares paths under the same spells.
    servers: dict[str, tuple[str, dict[str, str] | None, int]] = {}
    samples: dict[str, list[Row]] = {}
    with preview_container(image) as (own, published, node), contextlib.ExitStack() as stack:
        servers["container, own address"] = (own, None, 0)
        servers["container, published port (docker-proxy)"] = (published, None, 0)
        hypercorn = [PY, "-m", "hypercorn", "--worker-class", "uvloop"]
        for workers in (1, 2):
            port = free_port()
            w = ["-w", str(workers)] if workers > 1 else ["-w", "0"]
            hello = stack.enter_context(
                process([*hypercorn, *w, "-b", f"127.0.0.1:{port}", "hello:app"], cwd=ANCHORS)
            )
            wait_http(f"http://127.0.0.1:{port}/x.js")
            servers[f"hello on hypercorn, {workers} worker(s)"] = (
                f"127.0.0.1:{port}",
                None,
                hello.pid,
            )
        routes = {"benchown": own, "benchpub": published}
        trees = {"gateway": ROOT, **({"baseline gateway": tree} if tree else {})}
        for label, source in trees.items():
            for workers in (1, 2):
                port, opened, gw = stack.enter_context(
                    bench_gateway(redis_url, routes, workers, tree=source)
                )
                at = f"127.0.0.1:{port}"
                name = f"{label} -> own address, {workers} worker(s)"
                servers[name] = (at, opened["benchown"], gw.pid)
                if workers == 1 and label == "gateway":
                    published_row = (at, opened["benchpub"], gw.pid)
                    servers["gateway -> published port, 1 worker"] = published_row
        for _ in range(repeats):
            for name, (at, headers, pid) in servers.items():
                samples.setdefault(name, []).append(run(at, headers, pid))
    rows = {
        name: Row(*(statistics.median(getattr(r, f.name) for r in runs) for f in fields(Row)))
        for name, runs in samples.items()
    }
    print(
        f"\nThrough a preview container: wrk -t2 -c32 -d{seconds}s, 2 KiB module, median of "
        f"{repeats} turns; "
        "CPU µs per request of the server measured, of the dev server and of wrk, and the "
        f"cores busy meanwhile (of {os.cpu_count()}, others' work included)"
    )
    print("| path | req/s | server µs | dev server µs | wrk µs | cores busy |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r.rps:,.0f} | {r.server_us:.0f} | {r.upstream_us:.0f} "
            f"| {r.wrk_us:.0f} | {r.busy:.2f} |"
        )
    for label in trees:
        one = rows[f"{label} -> own address, 1 worker(s)"].rps
        two = rows[f"{label} -> own address, 2 worker(s)"].rps
        h1 = rows["hello on hypercorn, 1 worker(s)"].rps
        h2 = rows["hello on hypercorn, 2 worker(s)"].rps
        print(
            f"\n{label} / hello: 1 worker {one / h1:.2f}, 2 workers {two / h2:.2f} "
            f"(target >= 0.8); 1 -> 2 workers: {label} {two / one:.2f}x, hello {h2 / h1:.2f}x"
        )
    direct = rows["gateway -> own address, 1 worker(s)"].rps
    print(
        "own address / published port through the gateway "
        f"{direct / rows['gateway -> published port, 1 worker'].rps:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument(
        "--image",
        default=TEST_IMAGE,
        help="the preview image for the container section",
    )
    parser.add_argument("--only-container", action="store_true", help="just that section")
    parser.add_argument(
        "--repeats", type=int, default=3, help="turns of the container section (medians)"
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout (e.g. `git archive main | tar -x -C /tmp/base`): its gateway "
        "too in the container section, for before/after figures in one run",
    )
    args = parser.parse_args()
    if args.only_container:
        need("wrk", "wrk")
        redis = start_redis(bind_bridge=False)
        try:
            container_section(args.image, redis.url, args.seconds, args.baseline_tree, args.repeats)
        finally:
            redis.stop()
        return
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    with contextlib.ExitStack() as stack:
        up_port, nginx_port, hello_port, naive_port, ws_port = (free_port() for _ in range(5))
        stack.enter_context(process(["node", str(ANCHORS / "upstream.js"), str(up_port)]))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        conf = (
            (ANCHORS / "nginx.conf")
            .read_text()
            .replace("9001", str(up_port))
            .replace("9002", str(nginx_port))
            .replace("/tmp/anchor-nginx", str(tmp / "nginx"))
        )
        (tmp / "nginx.conf").write_text(conf)
        stack.enter_context(process(["nginx", "-c", str(tmp / "nginx.conf")]))
        hypercorn = [PY, "-m", "hypercorn", "--worker-class", "uvloop", "-w", "0"]
        stack.enter_context(
            process([*hypercorn, "-b", f"127.0.0.1:{hello_port}", "hello:app"], cwd=ANCHORS)
        )
        naive = (ANCHORS / "naive_proxy.py").read_text().replace("9001", str(up_port))
        (tmp / "naive_proxy.py").write_text(naive)
        stack.enter_context(
            process([*hypercorn, "-b", f"127.0.0.1:{naive_port}", "naive_proxy:app"], cwd=tmp)
        )
        stack.enter_context(process([PY, str(ROOT / "bench" / "ws_echo.py"), str(ws_port)]))
        redis = start_redis(bind_bridge=False)
        stack.callback(redis.stop)
        sid, ws_sid = "benchpreview", "benchws"
        routes = {sid: f"127.0.0.1:{up_port}", ws_sid: f"127.0.0.1:{ws_port}"}
        ws_cap = {"PREVIEW_WS_MAX_PER_CLIENT": str(args.sockets + 10)}
        gw_port, opened, gateway = stack.enter_context(bench_gateway(redis.url, routes, 1, ws_cap))
        gw_headers = opened[sid]
        cookies = {s: opened[s]["Cookie"] for s in routes}
        for port in (up_port, nginx_port, hello_port, naive_port):
            wait_http(f"http://127.0.0.1:{port}/x.js")

        rows = {}
        targets = [
            ("direct upstream", up_port, {}),
            ("nginx proxy", nginx_port, {}),
            ("hello on hypercorn (ceiling)", hello_port, {}),
            ("naive httpx proxy", naive_port, {}),
            ("our gateway", gw_port, gw_headers),
        ]
        for name, port, headers in targets:
            seconds = max(3, args.seconds // 2) if "naive" in name else args.seconds
            rows[name] = wrk(f"http://127.0.0.1:{port}/x.js", seconds, 32, headers)
        one = {
            name: wrk(f"http://127.0.0.1:{port}/x.js", 4, 1, h)
            for name, port, h in (targets[0], targets[4])
        }

        print(f"\nHTTP: wrk -t1 -c32 -d{args.seconds}s, 2 KiB module, loopback, one run")
        print("| server | req/s | p50 ms | p99 ms |\n|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
        ours = rows["our gateway"]["rps"]
        ceiling = ours / rows["hello on hypercorn (ceiling)"]["rps"]
        vs_naive = ours / rows["naive httpx proxy"]["rps"]
        added = one["our gateway"]["p50"] - one["direct upstream"]["p50"]
        print(f"\ngateway / hypercorn hello = {ceiling:.2f}  (target >= 0.70)")
        print(f"gateway / naive httpx proxy = {vs_naive:.1f}x  (target >= 10x)")
        print(
            f"added p50 at 1 connection = {added:.2f} ms  (target <= 1 ms; direct "
            f"{one['direct upstream']['p50']:.2f} ms, gateway {one['our gateway']['p50']:.2f} ms)"
        )

        ws_host = f"{ws_sid}.preview.localhost:{gw_port}"
        rss_before = rss_mib(gateway.pid)
        direct, direct_dropped = asyncio.run(
            ws_echo_round(f"ws://127.0.0.1:{ws_port}/", "127.0.0.1", ws_port, {}, args.sockets, 5)
        )
        via, via_dropped = asyncio.run(
            ws_echo_round(
                f"ws://{ws_host}/",
                "127.0.0.1",
                gw_port,
                {"Cookie": cookies[ws_sid], "Origin": f"http://{ws_host}"},
                args.sockets,
                5,
            )
        )
        rss_after = rss_mib(gateway.pid)
        d50, v50 = statistics.median(direct), statistics.median(via)
        print(
            f"\nWebSockets: {args.sockets} open at once, 5 echo round trips each, one per "
            f"socket every {PERIOD:g} s"
        )
        print("| path | p50 ms | p99 ms | dropped |\n|---|---|---|---|")
        for name, samples, dropped in (
            ("direct", direct, direct_dropped),
            ("through gateway", via, via_dropped),
        ):
            p99 = statistics.quantiles(samples, n=100)[98]
            print(f"| {name} | {statistics.median(samples):.2f} | {p99:.2f} | {dropped} |")
        print(
            f"added p50 = {v50 - d50:.2f} ms (target <= 2 ms); gateway RSS "
            f"{rss_before:.0f} MiB idle, {rss_after:.0f} MiB after {args.sockets} sockets"
        )


if __name__ == "__main__":
    main()
