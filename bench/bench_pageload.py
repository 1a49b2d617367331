"""First view of a many-module Vite app in Chromium, side by side (issue: the browser edge).

The bench writes a Vite app of `--modules` modules (main imports 20, each of those imports
its share of the rest: a dev server's module graph, two levels deep), installs Vite with
npm (once, in `--workdir`) and runs `vite` on this machine. Then, in one run, the same
dev server is loaded:

- direct (HTTP/1.1);
- through nginx (Debian's; HTTP/1.1, and HTTP/2 with TLS);
- through the gateway (HTTP/1.1 on its plain listener, HTTP/2 on its TLS listener, and
  HTTP/2 with PREVIEW_COMPRESS on: bytes received and the gateway's CPU per load beside);

at 0 ms and at `--rtt` ms of added round trip on a `--mbps` link (Chromium's emulation)
(CDP ``Network.emulateNetworkConditions`` latency: every request waits that long for
its response; TCP and TLS handshakes are not delayed, so HTTP/1.1's six connections per
host are favoured if anything). Each load is a fresh browser context (cold cache, new
connections), the targets take turns, and each figure is the median of `--loads` loads:
milliseconds from navigation start until every module has run (main.js records it).
It all runs in a network namespace of its own: Chromium aborts requests in flight
(ERR_NETWORK_CHANGED) whenever an interface comes or goes, as Docker's bridges do all day.

    .venv/bin/python bench/bench_pageload.py [--modules 400] [--loads 7] [--rtt 40] [--mbps 20]

The machine is shared with other engineers' work: figures move from run to run; the
ratios within one run are what to read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _root import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import redis as redis_sync
from bench_proxy import need, process, wait_http
from playwright.sync_api import Error as PlaywrightError

from gateway.proxy.preview_tokens import open_token
from shared import keys
from shared.settings import Settings
from tests.gateway.tls_fixtures import TlsFiles, make_local_tls
from tests.utils import free_port, start_redis

CHROMIUM = "/usr/bin/chromium"
STATUS = "__preview/status"
LOAD_TIMEOUT = 60_000  # ms; a load that takes longer is counted as unfinished
Login = Callable[[], str]
TRANSFERRED = """[...performance.getEntriesByType("navigation"),
    ...performance.getEntriesByType("resource")].reduce((n, e) => n + e.transferSize, 0)"""


@dataclass(frozen=True)
class Target:
    url: str
    login: Login | None = None  # for the gateway: a URL that signs the browser in
    pid: int | None = None  # for the gateway: its process (CPU)


FANOUT = 20
NGINX = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{h1};
    listen 127.0.0.1:{h2} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }}
  }}
}}
"""


def write_app(path: Path, modules: int) -> None:
    """index.html, main.js and `modules` modules of about 1.5 KiB each."""
    src = path / "src"
    src.mkdir(parents=True, exist_ok=True)
    (path / "vite.config.js").write_text(
        "export default { server: { allowedHosts: true }, logLevel: 'warn' };\n"
    )
    (path / "index.html").write_text(
        '<!doctype html><html><head><meta charset="utf-8"><title>pageload</title></head>'
        '<body><h1>pageload</h1><script type="module" src="/main.js"></script></body></html>\n'
    )
    top = list(range(min(FANOUT, modules)))
    rest = list(range(len(top), modules))
    children: dict[int, list[int]] = {i: rest[i :: len(top)] for i in top}
    body = "\n".join(
        f"export const row{j} = (x) => ({{ id: x + {j}, label: 'row {j} of this module', "
        f"tags: ['a', 'b', 'c'].map((t) => t + x) }});"
        for j in range(8)
    )
    for i in range(modules):
        imports = "".join(f"import * as m{c} from './m{c}.js';\n" for c in children.get(i, []))
        uses = ", ".join(f"m{c}.value" for c in children.get(i, []))
        (src / f"m{i}.js").write_text(
            f"{imports}{body}\nexport const value = [{uses}].length + {i};\n"
        )
    imports = "".join(f"import * as m{i} from './src/m{i}.js';\n" for i in top)
    (path / "main.js").write_text(
        f"{imports}const total = [{', '.join(f'm{i}.value' for i in top)}].length;\n"
        "document.querySelector('h1').textContent = 'ready ' + total;\n"
        "window.__ready = performance.now();\n"
    )


def ensure_vite(workdir: Path) -> None:
    if (workdir / "node_modules" / "vite").is_dir():
        return
    (workdir / "package.json").write_text(
        json.dumps({"private": True, "type": "module", "devDependencies": {"vite": "^7.0.0"}})
    )
    subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=workdir, check=True)


@contextlib.contextmanager
def gateway(
    redis_url: str, tls: TlsFiles, up_port: int, compress: bool = False, tree: Path = ROOT
) -> Iterator[dict[str, Target]]:
    """A gateway whose one preview is the Vite server: {"h1"|"h2": target}; run from the
    source `tree` (another checkout: the baseline of a before/after run)."""
    plain, secure = free_port(), free_port()
    secret = "bench-pageload-secret"
    env = {
        "PREVIEW_REDIS_URL": redis_url,
        "PREVIEW_SIGNING_SECRET": secret,
        "PREVIEW_BIND": f"127.0.0.1:{plain}",
        "PREVIEW_TLS_BIND": f"127.0.0.1:{secure}",
        "PREVIEW_TLS_CERT": str(tls.cert),
        "PREVIEW_TLS_KEY": str(tls.key),
        "PREVIEW_LOG_LEVEL": "WARNING",
        "PREVIEW_COMPRESS": "1" if compress else "0",
    }
    client = redis_sync.Redis.from_url(redis_url)
    sid = "pageload"
    client.hset(
        keys.session(sid),
        mapping={"id": sid, "user": "bench", "state": "ready", "address": f"127.0.0.1:{up_port}"},
    )
    env["PYTHONPATH"] = str(tree)
    with process([sys.executable, "-m", "gateway"], env=env, cwd=tree) as proc:
        wait_http(f"http://127.0.0.1:{plain}/healthz")
        settings = Settings.from_env({}, signing_secret=secret)

        def login(url: str) -> Callable[[], str]:
            # A fresh single-use token per load: the browser signs in as a user would.
            return lambda: f"{url}{STATUS}?preview_token={open_token(settings, sid, 'bench')}"

        found = {}
        for name, scheme, port in (("h1", "http", plain), ("h2", "https", secure)):
            url = f"{scheme}://{sid}.preview.localhost:{port}/"
            found[name] = Target(url, login(url), proc.pid)
        yield found
    client.close()


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_once(browser: Any, target: Target, rtt: float, mbps: float) -> tuple[float, int, float]:
    """(ms until every module ran, bytes received, the gateway's CPU seconds)."""
    context = browser.new_context()
    try:
        # Room for every module's timing entry (the default buffer holds 250).
        context.add_init_script("performance.setResourceTimingBufferSize(10000)")
        if target.login is not None:  # not measured: the cookie, as an iframe's first load
            signin = context.new_page()
            signin.goto(target.login())
            signin.close()
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        # Requests not finished, and whether their response head reached the page: what
        # tells an unfinished load held back by the server from one held by the browser.
        pending: dict[str, bool] = {}
        cdp.on("Network.requestWillBeSent", lambda e: pending.setdefault(e["requestId"], False))
        cdp.on("Network.responseReceived", lambda e: pending.__setitem__(e["requestId"], True))
        cdp.on("Network.loadingFinished", lambda e: pending.pop(e["requestId"], None))
        cdp.on("Network.loadingFailed", lambda e: pending.pop(e["requestId"], None))
        rate = mbps * 1e6 / 8 if rtt and mbps else -1
        cdp.send(
            "Network.emulateNetworkConditions",
            {
                "offline": False,
                "latency": rtt,
                "downloadThroughput": rate,
                "uploadThroughput": rate,
            },
        )
        cpu = cpu_seconds(target.pid)
        try:
            page.goto(target.url, wait_until="load", timeout=LOAD_TIMEOUT)
            page.wait_for_function("window.__ready !== undefined", timeout=LOAD_TIMEOUT)
        except PlaywrightError as exc:
            heads = sum(pending.values())
            print(
                f"load of {target.url} at {rtt:g} ms RTT did not finish: "
                f"{len(pending)} requests pending, {heads} of them with their response head; "
                + str(exc).splitlines()[0],
                file=sys.stderr,
            )
            return float("nan"), 0, 0.0
        cpu = cpu_seconds(target.pid) - cpu
        ready: float = page.evaluate("window.__ready")
        received: int = page.evaluate(TRANSFERRED)
        return ready, received, cpu
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modules", type=int, default=400)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--rtt", type=float, default=40.0)
    parser.add_argument("--mbps", type=float, default=20.0, help="link speed with the RTT")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pv-pageload-app"
    )
    parser.add_argument(
        "--shared-network", action="store_true", help="stay in this network namespace"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated words: only the paths whose name holds one (e.g. 'HTTP/2')",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/base main`): its gateway too, "
        "for before/after figures in one run",
    )
    args = parser.parse_args()
    need("nginx", "nginx-light")
    args.workdir.mkdir(parents=True, exist_ok=True)
    ensure_vite(args.workdir)
    write_app(args.workdir, args.modules)
    if not os.environ.get("PAGELOAD_NETNS") and not args.shared_network:
        # Chromium aborts requests in flight (ERR_NETWORK_CHANGED) whenever an interface
        # appears or goes, which Docker bridges do all day on a shared machine: run the
        # measurement in a network namespace of its own, everything on its loopback.
        os.environ["PAGELOAD_NETNS"] = "1"
        script = 'ip link set lo up && exec "$@"'
        argv = ["unshare", "--net", "sh", "-c", script, "-", sys.executable, *sys.argv]
        os.execvp("unshare", argv)
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        make_local_tls(tmp)
        tls = TlsFiles(tmp)
        vite, nginx_h1, nginx_h2 = free_port(), free_port(), free_port()
        stack.enter_context(
            process(
                [
                    "node",
                    "node_modules/vite/bin/vite.js",
                    "--port",
                    str(vite),
                    "--strictPort",
                    "--host",
                    "127.0.0.1",
                ],
                cwd=args.workdir,
            )
        )
        conf = NGINX.format(tmp=tmp, up=vite, h1=nginx_h1, h2=nginx_h2, cert=tls.cert, key=tls.key)
        (tmp / "nginx.conf").write_text(conf)
        stack.enter_context(process(["nginx", "-c", str(tmp / "nginx.conf")]))
        redis = start_redis(bind_bridge=False)
        stack.callback(redis.stop)
        gw = stack.enter_context(gateway(redis.url, tls, vite))
        gz = stack.enter_context(gateway(redis.url, tls, vite, compress=True))
        wait_http(f"http://127.0.0.1:{vite}/")
        targets = {
            "dev server direct, HTTP/1.1": Target(f"http://localhost:{vite}/"),
            "nginx, HTTP/1.1": Target(f"http://localhost:{nginx_h1}/"),
            "nginx, HTTP/2 + TLS": Target(f"https://localhost:{nginx_h2}/"),
            "gateway, HTTP/1.1": gw["h1"],
            "gateway, HTTP/2 + TLS": gw["h2"],
            "gateway, HTTP/2 + TLS, compressed": gz["h2"],
        }
        if args.baseline_tree:
            base = stack.enter_context(gateway(redis.url, tls, vite, tree=args.baseline_tree))
            based = stack.enter_context(
                gateway(redis.url, tls, vite, compress=True, tree=args.baseline_tree)
            )
            targets["baseline gateway, HTTP/2 + TLS"] = base["h2"]
            targets["baseline gateway, HTTP/2 + TLS, compressed"] = based["h2"]
        words = [w.strip() for w in args.only.split(",") if w.strip()]
        # The two references every ratio needs always run.
        keep = ("dev server direct, HTTP/1.1", "nginx, HTTP/2 + TLS")
        targets = {
            name: target
            for name, target in targets.items()
            if name in keep or not words or any(w in name for w in words)
        }
        p = stack.enter_context(sync_playwright())
        trust = f"--ignore-certificate-errors-spki-list={tls.spki()}"
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", trust]
        )
        stack.callback(browser.close)
        for target in targets.values():  # warm Vite's transform cache and every path
            load_once(browser, target, 0, 0)
        results: dict[tuple[str, float], list[tuple[float, int, float]]] = {}
        for rtt in (0.0, args.rtt):
            for _ in range(args.loads):
                for name, target in targets.items():
                    sample = load_once(browser, target, rtt, args.mbps)
                    results.setdefault((name, rtt), []).append(sample)

    def median(name: str, rtt: float, index: int = 0) -> float:
        done = [sample for sample in results[(name, rtt)] if not math.isnan(sample[0])]
        return statistics.median(sample[index] for sample in done) if done else math.nan

    def unfinished(name: str) -> str:
        return " + ".join(str(sum(math.isnan(s[0]) for s in results[(name, rtt)])) for rtt in rtts)

    rtts = (0.0, args.rtt)
    direct = {rtt: median("dev server direct, HTTP/1.1", rtt) for rtt in rtts}
    nginx2 = {rtt: median("nginx, HTTP/2 + TLS", rtt) for rtt in rtts}
    link = f"{args.rtt:g} ms RTT, {args.mbps:g} Mbit/s" if args.mbps else f"{args.rtt:g} ms RTT"
    print(
        f"\nFirst view of a {args.modules}-module Vite app in Chromium, fresh context per load, "
        f"median of {args.loads} (ms until every module ran); latency and link speed by "
        f"Chromium's network emulation. Shared, loaded machine: read the ratios."
    )
    print(
        f"| path | 0 ms | vs direct | {link} | vs direct | vs nginx h2 | KiB | gateway CPU ms "
        "| unfinished (0 ms + RTT) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, target in targets.items():
        a, b = median(name, 0.0), median(name, args.rtt)
        kib = median(name, 0.0, 1) / 1024
        cpu = f"{median(name, 0.0, 2) * 1000:.0f}" if target.pid else "-"
        print(
            f"| {name} | {a:,.0f} | {a / direct[0.0]:.2f}x | {b:,.0f} | "
            f"{b / direct[args.rtt]:.2f}x | {b / nginx2[args.rtt]:.2f}x | {kib:,.0f} | {cpu} "
            f"| {unfinished(name)} |"
        )
    print(
        "\ntargets: gateway h2 <= 1.10x direct at 0 ms; at the RTT <= 0.5x direct and "
        "<= 1.10x nginx h2"
    )
    if os.environ.get("PAGELOAD_JSON"):
        Path(os.environ["PAGELOAD_JSON"]).write_text(
            json.dumps({f"{n}@{r:g}": v for (n, r), v in results.items()})
        )


if __name__ == "__main__":
    main()
