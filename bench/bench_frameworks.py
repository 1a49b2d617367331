"""Framework starts (issue 17): Next.js 15 and 16, Vite React, SvelteKit and Vue, each
made here from the npm registry at pinned versions (the files create-* would write, cut
to one page), started in preview containers and, as the reference, on the host.

For each app (``--phases``, any of):

- **cold**: an empty cache volume, a new pooled container (npm install); this first
  start always runs, since the others need the dependency archive it leaves;
- **warm**: another user, a new pooled container: dependencies restored from the volume,
  no build cache (another user's is never restored);
- **user**: the first user again in a new pooled container (her reserved one destroyed):
  dependencies and her build cache restored from the volume;
- **same**: the first user again after a stop: her reserved container, its node_modules
  kept and its build cache restored;
- each with its phases (acquire, files, dependencies, build cache, dev server, of which
  boot, answer and warm-up), the cgroup's cpu.max seen while starting (the boost), the
  load average, and the **first view** in Chromium after `ready`: through a running
  gateway (``--view gateway``, the default: the open_url's sign-in, its redirect and the
  proxy, as a user gets it) or straight from the container's port (``--view direct``);
- through the gateway, also what a user who opened the preview at once sees (``--no-watch``
  skips it): a page opened on the open_url right after the start request shows the
  starting page and reloads itself at ``ready``: start → app visible in that page, and its
  lag behind ``ready`` (the starting page's status feed; the first view above is a new
  visitor after ``ready`` and does not see it);
- **HMR** (``--hmr N`` edits, 0: none): an edit written through the supervisor (as
  `PUT .../files/{path}` does) until the new text is visible in the last page, p50;
- **host**: `npm run dev` on this machine (no container, all cores) from no build cache
  (the cold reference), then again with the caches it left (the reference for the
  others, as a developer's machine has them), HMR by editing the file on disk.

The gateway's start path runs in process (Starter on the controller's clients, and the
session tracker, which drops the startup CPU boost at `ready`), with the image's
defaults: PREVIEW_START_CPUS 2 (this machine's cores), warm-up on. `--no-boost` and
`--no-warmup` measure without them. `--repeats N` runs the user and same phases N times.

npm installs on the host (lockfiles, the host reference) are cached under
/var/tmp/pv-bench-frameworks, so reruns reuse them. Every container carries the label
``preview-gateway.bench=frameworks-<run>``; they and the cache volumes are removed at the
end. The machine this runs on is shared and loaded: compare figures within one run.

    .venv/bin/python bench/bench_frameworks.py [--apps next15,vite-react]
        [--phases cold,warm,user,same] [--repeats 1] [--hmr 3] [--view gateway|direct]
        [--no-boost] [--no-warmup] [--no-watch] [--skip-host] [--cold-only]
        [--label " (template image)"]

PREVIEW_TEST_IMAGE picks the image (e.g. one built with scripts/build-image
--template-deps, with --cold-only: what the baked npm store saves a cold install).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import _root  # noqa: F401  (puts the repository root on sys.path)
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

import bench.bench_pool as pool
from bench.bench_depcache import (
    VITE_APP,
    Project,
    npm_env,
    project_blob,
    run,
    write_project,
)
from gateway.containers import boost
from gateway.proxy.preview_tokens import open_token
from gateway.sessions.start import Starter
from gateway.sessions.store import Session
from gateway.sessions.tracker import Tracker
from shared import keys
from shared.redis_types import text
from shared.settings import Settings
from supervisor.readiness import probe
from tests.gateway.controller_fixtures import pooled, start, starter_for, wait_state
from tests.utils import (
    free_port,
    remove_labelled_volumes,
    run_gateway,
    settings_env,
    start_redis,
)

WORKDIR = Path("/var/tmp/pv-bench-frameworks")
CHROMIUM = "/usr/bin/chromium"
PHASES = ("cold", "warm", "user", "same")
HOST, HOST_AGAIN = "host (npm run dev)", "host again (caches kept)"
HOST_IDLE = 15.0  # seconds
EDIT_GAP = 0.3  # seconds between one edit showing and the next one
HMR_TIMEOUT = 30_000  # ms an edit may take to show before it counts as lost (inf)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
REACT = {"react": "19.3.1", "react-dom": "19.3.1"}
VITE = {"vite": "7.3.8"}


def _next(version: str, dev: str = "next dev") -> dict[str, Any]:
    return {
        "package.json": {
            "name": "next-app",
            "private": True,
            "scripts": {"dev": dev},
            "dependencies": {"next": version, **REACT},
        },
        "app/layout.js": "export default function Layout({ children }) {\n"
        "  return <html><body>{children}</body></html>;\n}\n",
        "app/page.js": "export default function Page() { return <h1>TEXT</h1>; }\n",
    }


APPS: dict[str, tuple[dict[str, Any], str]] = {  # name -> (files, the file HMR edits)
    "next15": (_next("15.5.29"), "app/page.js"),
    # The same project opted in to Turbopack (what PREVIEW_NEXT_TURBOPACK does for it).
    "next15-turbopack": (_next("15.5.29", "next dev --turbopack"), "app/page.js"),
    "next16": (_next("16.5.0"), "app/page.js"),
    "vite-react": (
        {
            "package.json": {
                "name": "vite-react-app",
                "private": True,
                "type": "module",
                "scripts": {"dev": "vite"},
                "dependencies": REACT,
                "devDependencies": {**VITE, "@vitejs/plugin-react": "5.2.0"},
            },
            "index.html": VITE_APP["index.html"],
            "vite.config.js": VITE_APP["vite.config.js"],
            "src/main.jsx": "import { createRoot } from 'react-dom/client';\n"
            "import App from './App.jsx';\n"
            "createRoot(document.getElementById('root')).render(<App />);\n",
            "src/App.jsx": "export default function App() { return <h1>TEXT</h1>; }\n",
        },
        "src/App.jsx",
    ),
    "sveltekit": (
        {
            "package.json": {
                "name": "sveltekit-app",
                "private": True,
                "type": "module",
                "scripts": {"dev": "vite dev"},
                "devDependencies": {
                    **VITE,
                    "@sveltejs/kit": "2.70.4",
                    "@sveltejs/vite-plugin-svelte": "6.2.3",
                    "svelte": "5.60.1",
                },
            },
            "svelte.config.js": "export default {};\n",
            "vite.config.js": "import { sveltekit } from '@sveltejs/kit/vite';\n"
            "export default { plugins: [sveltekit()] };\n",
            "src/app.html": "<!doctype html><html><head>%sveltekit.head%</head>"
            "<body><div>%sveltekit.body%</div></body></html>\n",
            "src/routes/+page.svelte": "<h1>TEXT</h1>\n",
        },
        "src/routes/+page.svelte",
    ),
    "vue": (
        {
            "package.json": {
                "name": "vue-app",
                "private": True,
                "type": "module",
                "scripts": {"dev": "vite"},
                "dependencies": {"vue": "3.5.47"},
                "devDependencies": {**VITE, "@vitejs/plugin-vue": "6.1.1"},
            },
            "index.html": '<!doctype html><html><body><div id="app"></div>'
            '<script type="module" src="/src/main.js"></script></body></html>\n',
            "vite.config.js": "import { defineConfig } from 'vite';\n"
            "import vue from '@vitejs/plugin-vue';\n"
            "export default defineConfig({ plugins: [vue()] });\n",
            "src/main.js": "import { createApp } from 'vue';\nimport App from './App.vue';\n"
            "createApp(App).mount('#app');\n",
            "src/App.vue": "<template><h1>TEXT</h1></template>\n",
        },
        "src/App.vue",
    ),
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def page_text(app: str, n: int = 0) -> str:
    return f"Hello from {app}" if n == 0 else f"Edited {app} {n}"


def prepared(app: str) -> Project:
    """The app's files with its lockfile, installed on the host once (reused by reruns)."""
    files, _ = APPS[app]
    path = WORKDIR / app
    path.mkdir(parents=True, exist_ok=True)
    spec = {
        k: v.replace("TEXT", page_text(app)) if isinstance(v, str) else v for k, v in files.items()
    }
    write_project(spec, path)
    if not (path / "node_modules").is_dir():
        say(f"{app}: npm install on the host (once; cached in {path})")
        run(["npm", "install", "--no-audit"], cwd=path, env=npm_env(WORKDIR))
    return Project(app, path)


@dataclass
class Run:
    app: str
    case: str
    ready_s: float  # start → ready
    view_s: float  # ready → the page's text visible in Chromium
    dependencies: str = ""
    timings: dict[str, int] = field(default_factory=dict)
    hmr_ms: list[float] = field(default_factory=list)
    later_s: float = 0.0  # the next new visitor's view
    watched_s: float = math.nan  # start → app visible in a page opened at the start
    lag_s: float = math.nan  # ... after `ready` (the starting page's reload)
    reload_s: float = math.nan  # `ready` → that page's reload (its status feed)
    cpus: list[float] = field(default_factory=list)  # cpu.max seen while starting
    boost: float = 0.0  # extra CPUs the start was granted (boost.py)
    load: float = field(default_factory=lambda: os.getloadavg()[0])  # when it ended

    @property
    def total(self) -> float:
        return self.ready_s + self.view_s


async def view(browser: Browser, url: str, text: str) -> tuple[float, Page]:
    """Seconds until a new visitor (fresh browser context) sees ``text``; the page."""
    page = await (await browser.new_context()).new_page()
    began = time.monotonic()
    await page.goto(url, wait_until="commit", timeout=300_000)
    await page.wait_for_selector(f"text={text}", timeout=300_000)
    return time.monotonic() - began, page


async def first_view(
    browser: Browser, url: Callable[[], str], text: str
) -> tuple[float, float, Page]:
    """The first view and a later one (another new visitor, a URL of its own): the
    warm-up's aim is the first no slower than the later by more than 20 %."""
    first, page = await view(browser, url(), text)
    later, other = await view(browser, url(), text)
    await other.context.close()
    return first, later, page


def direct_url(session: Session) -> str:
    """The container's published port: no proxy, no sign-in."""
    return f"http://{session.address}/"


@contextlib.contextmanager
def gateway(settings: Settings) -> Iterator[Callable[[Session], str]]:
    """The gateway (a subprocess, as deployed) on the bench's Redis: each call of what it
    yields is a session's ``open_url`` (a fresh single-use token, as the API mints it), so
    Chromium signs in, is redirected and loads the page through the proxy."""
    env = settings_env(
        redis_url=settings.redis_url,
        signing_secret=settings.signing_secret,
        image=settings.image,
        cache_volume=settings.cache_volume,
        container_labels=settings.container_labels,
        log_level="WARNING",
    )
    with run_gateway(env) as process:

        def open_url(session: Session) -> str:
            token = open_token(settings, session.id, session.user)
            return f"http://{session.id}.preview.localhost:{process.port}/?preview_token={token}"

        yield open_url


async def hmr(page: Page, app: str, rounds: int, write: Any) -> list[float]:
    """Edit the page's text `rounds` times; ms until each edit is visible."""
    files, path = APPS[app]
    samples, written = [], []
    for n in range(1, rounds + 1):
        content = str(files[path]).replace("TEXT", page_text(app, n))
        # At a person's pace: on the host, where an edit shows 30 ms after it is written,
        # SvelteKit and Vue lost up to every other edit written right after the last one
        # showed (in place or renamed alike); a container lost 1 of 48. The time until
        # an edit shows is measured from its write, as before.
        await asyncio.sleep(EDIT_GAP)
        began = time.monotonic()
        await write(path, content)
        written.append(round((time.monotonic() - began) * 1000))
        try:
            await page.wait_for_selector(f"text={page_text(app, n)}", timeout=HMR_TIMEOUT)
        except PlaywrightTimeout:
            say(f"{app}: edit {n} not visible after {HMR_TIMEOUT / 1000:.0f}s")
            samples.append(math.inf)
            continue
        samples.append((time.monotonic() - began) * 1000)
    # The write's share (for containers: the command's round trip until the supervisor
    # acknowledged the file written); the rest is the watcher, the compile and the browser.
    shown = [round(ms) if math.isfinite(ms) else "lost" for ms in samples]
    say(f"{app}: HMR ms {shown}, of which the write {written}")
    return samples


async def containers(
    app: str, project: Project, browser: Browser, args: argparse.Namespace, runs: list[Run]
) -> None:
    """Appends each case to ``runs`` as it ends (a later failure keeps the earlier ones)."""
    server = start_redis()
    try:
        settings = pool.base_settings(
            server,
            pool.volume(f"{app}-{secrets.token_hex(3)}"),
            pool_min=2,
            pool_max=2,
            heartbeat_interval=2.0,
            heartbeat_ttl=30.0,  # installs load the machine: a late beat must not fail it
            controller_interval=0.5,
            leader_ttl=2.0,
            orphan_interval=3600.0,
            idle_timeout=3600.0,
            start_cpus=1.0 if args.no_boost else 2.0,
            warmup_seconds=0.0 if args.no_warmup else 60.0,
            signing_secret=secrets.token_urlsafe(32),
        )
        with contextlib.ExitStack() as stack:
            view_url: Callable[[Session], str] = (
                direct_url if args.view == "direct" else stack.enter_context(gateway(settings))
            )
            async with pool.controlled(settings, server) as controller:
                starter = starter_for(controller)
                tracker = asyncio.create_task(Tracker(starter.previews, 0.5).run())
                try:
                    watch = args.view == "gateway" and not args.no_watch
                    bench = Cases(app, project_blob(project), browser, starter, view_url, watch)
                    await bench.run(controller, settings, args, runs)
                finally:
                    tracker.cancel()
                    await asyncio.gather(tracker, return_exceptions=True)
    finally:
        server.stop()


@dataclass
class Cases:
    """One app's starts in containers, one case after another."""

    app: str
    blob: bytes
    browser: Browser
    starter: Starter
    view_url: Callable[[Session], str]
    watch: bool = False

    async def watched(self, url: str, began: float) -> tuple[float, float]:
        """A user who opened the preview at once: seconds from the start request until
        the starting page reloads itself (its status feed saw ``ready``; NaN if the app
        showed at once), and until the app's text is visible."""
        page = await (await self.browser.new_context()).new_page()
        text = page_text(self.app)
        reloads: list[float] = []

        def navigated(request: Any) -> None:
            if request.is_navigation_request():
                reloads.append(time.monotonic() - began)

        try:
            await page.goto(url, wait_until="commit", timeout=300_000)
            await page.locator("#title").or_(page.get_by_text(text)).first.wait_for(timeout=300_000)
            page.on("request", navigated)
            await page.wait_for_selector(f"text={text}", timeout=900_000)
            return (reloads[0] if reloads else math.nan), time.monotonic() - began
        finally:
            await page.context.close()

    async def one(self, user: str, case: str) -> tuple[Run, Session, Page]:
        """Start ``user``'s preview of the app (a pooled container) until it is ready,
        then its first view."""
        starter, app = self.starter, self.app
        began = time.monotonic()
        session = await start(starter, user, app, {"type": "archive"})
        granted = await starter.previews.redis.hget(
            keys.host_boosts(session.host), session.container
        )
        watcher = (
            asyncio.create_task(self.watched(self.view_url(session), began)) if self.watch else None
        )
        limits: set[float] = set()
        sampler = asyncio.create_task(self.cpu_limits(session.container, limits))
        try:
            assert await starter.prepare_pending(session, self.blob)
            ready = await wait_state(starter.previews, session.id, "ready", timeout=900)
        except BaseException:
            if watcher is not None:
                watcher.cancel()
            raise
        finally:
            sampler.cancel()
        ready_s = time.monotonic() - began
        reload, watched = (await watcher) if watcher is not None else (math.nan, math.nan)
        url = partial(self.view_url, ready)
        view_s, later_s, page = await first_view(self.browser, url, page_text(app))
        timings = await self.timings(ready)
        if os.environ.get("PV_BENCH_DEVLOG"):
            await asyncio.sleep(1.2)  # ad hoc: the log snapshot is refreshed about every second
            log = await starter.previews.redis.get(keys.logs(ready.container))
            say(f"{app} {case} dev server log:\n{(log or b'').decode(errors='replace')[-1500:]}")
        result = Run(app, case, ready_s, view_s, ready.dependencies or "", timings)
        result.later_s = later_s
        result.watched_s, result.lag_s = watched, watched - ready_s
        result.reload_s = reload - ready_s
        result.cpus = sorted(limits)
        result.boost = boost.parse(text(granted))[0] if granted else 0.0
        say(
            f"{app} {case}: ready {ready_s:.1f}s + view {view_s:.2f}s; page open from the "
            f"start: app at {watched:.2f}s (ready + {watched - ready_s:.2f}s, reloaded at "
            f"ready + {reload - ready_s:.2f}s) {timings}"
        )
        return result, ready, page

    async def timings(self, session: Session) -> dict[str, int]:
        """The phases, from the prepare command's result: it may be folded in a moment
        after the `ready` event (as a gateway reading the preview would)."""
        previews = self.starter.previews
        deadline = time.monotonic() + 10
        while "devserver" not in session.timings and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            session = await previews.load(session.id) or session
            await previews.refresh(session)
        return session.timings

    async def cpu_limits(self, cid: str, seen: set[float]) -> None:
        """The cgroup's cpu.max as the container's supervisor reports it while it starts:
        is the startup boost in effect during the compile?"""
        while True:
            heartbeat = await self.starter.previews.containers.heartbeat(cid)
            if heartbeat is not None and heartbeat.cpu_limit:
                seen.add(heartbeat.cpu_limit)
            await asyncio.sleep(0.5)

    async def run(
        self, controller: Any, settings: Settings, args: argparse.Namespace, runs: list[Run]
    ) -> None:
        redis, cs, previews = controller.redis, controller.containers, self.starter.previews

        async def full() -> bool:
            return len(await pooled(redis, cs)) >= settings.pool_max

        async def one(user: str, case: str) -> tuple[Run, Session, Page]:
            await pool.seconds_until(full, 600, "the pool to fill", step=0.5)
            return await self.one(user, case)

        phases = args.phases
        # The first start fills the cache volume (the other phases need its dependency
        # archive), so it always runs; it is shown when asked for.
        cold, alice, page = await one("alice", f"cold{args.label}")
        shown = alice  # whose page is open (HMR edits it)
        if "cold" in phases:
            runs.append(cold)
        if args.cold_only or phases <= {"cold"}:
            await page.context.close()
            return
        first = alice.container
        await pool.seconds_until(partial(_archived, cs, first), 900, "the dependency archive")
        if "warm" in phases:
            await page.context.close()
            warm, shown, page = await one("bob", "warm (other user)")
            runs.append(warm)
        for case in [c for _ in range(args.repeats) for c in ("user", "same") if c in phases]:
            await page.context.close()
            await previews.stop(alice)
            kept = alice.container
            await pool.seconds_until(partial(_reserved, cs, kept), 180, "alice's reserved")
            if case == "user":  # not her reserved container: a new one
                assert await cs.reserved.take(kept)
                await cs.destroy(kept, "bench: a new container")
            name = "warm (same user)" if case == "user" else "same container"
            result, alice, page = await one("alice", name)
            runs.append(result)
            shown = alice

        async def write(path: str, content: str) -> None:
            files = {path: base64.b64encode(content.encode()).decode()}
            await previews.command(shown, "write_files", {"files": files})

        if args.hmr:
            runs[-1].hmr_ms = await hmr(page, self.app, args.hmr, write)
        await page.context.close()


async def _archived(cs: Any, cid: str) -> bool:
    code, out = await cs.runtime.default.exec(cid, ["sh", "-c", "ls /cache/deps/v1/*/"])
    return code == 0 and ".tar.zst" in out


async def _reserved(cs: Any, cid: str) -> bool:
    return cid in await cs.reserved.all()


# A developer's machine keeps Next.js's Server Actions key in .next/cache; this one, like
# a container, has /.dockerenv, where Next makes a new key every start and so never hits
# its webpack cache (supervisor/buildenv.py). The host reference gets what a developer has.
HOST_ENV = {
    "NEXT_SERVER_ACTIONS_ENCRYPTION_KEY": base64.b64encode(b"bench-host" * 3 + b"..").decode()
}


async def host(app: str, project: Project, browser: Browser, rounds: int, again: bool) -> Run:
    """`npm run dev` on the host, as a developer would: start until the entry answers;
    from no build cache, or ``again`` with the one the previous run left."""
    port = free_port()
    if not again:
        for cache in (".next", "node_modules/.vite", ".svelte-kit"):
            run(["rm", "-rf", str(project.path / cache)])
    flags = ["-p", str(port)] if app.startswith("next") else ["--port", str(port), "--strictPort"]
    began = time.monotonic()
    process = subprocess.Popen(
        ["npm", "run", "dev", "--", *flags],
        cwd=project.path,
        env={**npm_env(WORKDIR), **HOST_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    files, path = APPS[app]
    try:
        while not (await probe("127.0.0.1", port, f"localhost:{port}", response_timeout=300)).ready:
            await asyncio.sleep(0.1)
        ready_s = time.monotonic() - began
        view_s, later_s, page = await first_view(
            browser, lambda: f"http://localhost:{port}/", page_text(app)
        )

        async def write(rel: str, content: str) -> None:
            # Whole, as the supervisor writes a file (a temporary file renamed over it):
            # written in place, Vite's watcher read it empty now and then and missed the
            # edit (SvelteKit and Vue lost every other one here).
            target = project.path / rel
            temp = target.with_name(f".{target.name}.bench")
            temp.write_text(content)
            temp.replace(target)

        samples = await hmr(page, app, rounds, write)
        await page.context.close()
        if app.startswith("next"):  # Next writes its webpack cache when idle, as at a desk
            await asyncio.sleep(HOST_IDLE)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
        (project.path / path).write_text(str(files[path]).replace("TEXT", page_text(app)))
    case = HOST_AGAIN if again else HOST
    say(f"{app} {case}: answers {ready_s:.1f}s + first view {view_s:.2f}s, HMR {samples}")
    return Run(app, case, ready_s, view_s, later_s=later_s, hmr_ms=samples)


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(
        f"\n## Framework starts (boost {'off' if args.no_boost else 'on'}, warm-up "
        f"{'off' if args.no_warmup else 'on'}; a shared, loaded 2-core machine: compare within "
        f"this run; load average at the end {os.getloadavg()[0]:.1f})\n"
    )
    print(
        "| app | case | start→ready s | first view s | later view s | total s | x host "
        "| page open at start: app s | its lag after ready s | of which until reload s | load "
        "| deps | boost granted, cpu.max seen while starting | phases ms | HMR p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    # Cold starts against the host's from nothing; the others against its second start,
    # with the caches the first left (as a developer's machine has them).
    hosts = {(r.app, r.case): r for r in runs if r.case in (HOST, HOST_AGAIN)}
    for r in runs:
        ref = hosts.get((r.app, HOST if r.case.startswith("cold") else HOST_AGAIN))
        ref = ref or hosts.get((r.app, HOST))
        hosted = r.case in (HOST, HOST_AGAIN)
        ratio = f"{r.total / ref.total:.1f}" if ref and not hosted and ref.total else ""
        phases = ", ".join(f"{k} {v}" for k, v in r.timings.items() if k != "total")
        p50 = f"{statistics.median(r.hmr_ms):.0f}" if r.hmr_ms else ""
        lost = sum(math.isinf(ms) for ms in r.hmr_ms)
        p50 += f" ({lost} of {len(r.hmr_ms)} lost)" if lost else ""
        cpus = "" if hosted else f"+{r.boost:g}: {', '.join(f'{c:g}' for c in r.cpus)}"
        print(
            f"| {r.app} | {r.case} | {r.ready_s:.1f} | {r.view_s:.2f} | {r.later_s:.2f} "
            f"| {r.total:.1f} | {ratio} | {_maybe(r.watched_s)} | {_maybe(r.lag_s)} "
            f"| {_maybe(r.reload_s)} | {r.load:.1f} "
            f"| {r.dependencies} | {cpus} | {phases} | {p50} |"
        )


def _maybe(seconds: float) -> str:
    return "" if math.isnan(seconds) else f"{seconds:.2f}"


async def main_async(args: argparse.Namespace) -> None:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for app in args.apps.split(","):
                project = prepared(app)
                try:
                    if not args.skip_host:
                        runs.append(await host(app, project, browser, args.hmr, again=False))
                        if args.phases - {"cold"}:
                            runs.append(await host(app, project, browser, 0, again=True))
                    await containers(app, project, browser, args, runs)
                except Exception as exc:  # one app failing must not lose the others' figures
                    say(f"{app}: failed: {exc!r}")
                report(runs, args)
        finally:
            await browser.close()
            remove_labelled_volumes(pool.LABEL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--hmr", type=int, default=3, help="HMR edits (0: none)")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="cold (empty cache volume), warm (another user, a new container: dependencies "
        "restored), user (the same user, a new container: dependencies and build cache "
        "restored), same (the same user's reserved container); the first start always runs",
    )
    parser.add_argument("--repeats", type=int, default=1, help="times the user and same phases run")
    parser.add_argument(
        "--view",
        choices=("gateway", "direct"),
        default="gateway",
        help="first view through a running gateway (as users get it) or straight from the "
        "container's published port",
    )
    parser.add_argument("--no-boost", action="store_true")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument(
        "--no-watch",
        action="store_true",
        help="no page opened at the start request (the starting page's reload at ready)",
    )
    parser.add_argument("--skip-host", action="store_true")
    parser.add_argument(
        "--cold-only", action="store_true", help="only the cold start (e.g. a template image)"
    )
    parser.add_argument("--label", default="", help="appended to the case names")
    args = parser.parse_args()
    args.phases = set(args.phases.split(","))
    if args.phases - set(PHASES):
        parser.error(f"--phases: one or more of {', '.join(PHASES)}")
    pool.RUN = f"frameworks-{secrets.token_hex(4)}"
    pool.LABEL = f"{pool.LABEL_KEY}={pool.RUN}"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
