"""Warm the dev server before calling it ready: the user's first view must not be a compile.

Dev servers compile on demand. Next.js compiles a route when it is first requested (the
readiness probe does that for the entry route); Vite answers the HTML at once but
transforms every module, and pre-bundles the dependencies it discovers, only when a
browser asks for them. So once the entry route answers, we load what a browser would: the
entry HTML (the page the readiness probe was answered, when it kept it: not rendered
again), the scripts and module preloads it references, and (for ES modules, which is
how Vite serves a project) the modules they import, breadth first, same origin only,
within a request count and a time budget.

A warm-up failure never fails the start: what the entry route answers decides that, as
before (a compile error in a module shows in the browser's overlay, as without warm-up).
Raw HTTP/1.0 over asyncio: no client library in the container, and a 1.0 request makes
Node answer without chunked encoding and close, so a body is simply read to EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from supervisor.readiness import READ_ERRORS, Answer, read_rest, status_of

log = logging.getLogger(__name__)

MAX_REQUESTS = 400  # a Vite app of a few hundred modules; the rest loads on the first view
# Requests at once. More than a browser's 6 per origin: a dev server works on one module
# while it reads files or waits on esbuild for others. 16 against 6, the same run: warm-up
# 18 % shorter for SvelteKit and Vite React (bench_frameworks, 4 starts each).
CONCURRENCY = 16
CONNECT_TIMEOUT = 2.0

# <script ...> tags (their src and type) and <link rel=modulepreload href=...> in the entry HTML.
_SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.I)
_SRC = re.compile(r"\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.I)
_MODULE_TYPE = re.compile(r"\btype\s*=\s*[\"']?module\b", re.I)
_PRELOAD = re.compile(
    r"<link\b[^>]*?\brel\s*=\s*[\"']modulepreload[\"'][^>]*?\bhref\s*=\s*[\"']([^\"']+)[\"']",
    re.I,
)
# Static and dynamic imports of an ES module as Vite serves it (specifiers already
# rewritten to paths: "/src/App.tsx", "/node_modules/.vite/deps/react.js?v=...").
_IMPORT = re.compile(
    r"""(?:\bimport\s*(?:[\w*{}\s,$]+?\s*from\s*)?|\bexport\s*[\w*{}\s,$]+?\s*from\s*)["']([^"']+)["']"""
    r"""|\bimport\s*\(\s*["']([^"'$`]+)["']\s*\)"""
)
# Block comments: JSDoc types name modules as `import('./types.js')` (SvelteKit's client
# runtime does, for files that exist only as .d.ts): loading them is a 404 each, and a
# "failed" line in the user's log.
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)


@dataclass
class WarmupReport:
    requests: int = 0
    failed: list[str] = field(default_factory=list)  # "path: HTTP 500" / "path: timeout"
    elapsed_ms: int = 0
    truncated: bool = False  # stopped at MAX_REQUESTS or the budget


async def fetch(host: str, port: int, host_header: str, path: str, timeout: float) -> Answer:
    """GET ``path`` with ``Host: host_header``; the answer's status, type and body."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT
            )
            try:
                request = (
                    f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\n"
                    "User-Agent: preview-supervisor (warm-up)\r\nAccept: */*\r\n\r\n"
                )
                writer.write(request.encode("latin-1"))
                await writer.drain()
                status = status_of(await reader.readline())
                page = await read_rest(reader, status)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except READ_ERRORS:
        return Answer(None)
    return page


def references(path: str, answer: Answer, module: bool = True) -> list[tuple[str, bool]]:
    """Same-origin paths a browser would load next from this answer, each with whether
    it is loaded as an ES module. Only HTML and modules are read for more: a classic
    script (Next.js's webpack chunks) loads its chunks itself, and the import-like text
    in it is not an import."""
    text = answer.body.decode("utf-8", "replace")
    html = "html" in answer.content_type
    if not html and not ("javascript" in answer.content_type and module):
        return []
    # Inline module scripts import too (SvelteKit's entry page starts its client that way).
    code = _BLOCK_COMMENT.sub(" ", text)
    found = [(static or dynamic, True) for static, dynamic in _IMPORT.findall(code)]
    if html:
        scripts = [
            (src.group(1), bool(_MODULE_TYPE.search(attrs)))
            for attrs in _SCRIPT_TAG.findall(text)
            if (src := _SRC.search(attrs))
        ]
        found = scripts + [(href, True) for href in _PRELOAD.findall(text)] + found
    out = []
    for ref, is_module in found:
        parts = urlsplit(urljoin(path, ref))
        # Another origin, or a bare specifier that no dev server serves as is.
        if parts.scheme or parts.netloc or not parts.path.startswith("/"):
            continue
        if not (ref.startswith(("/", "./", "../"))):
            continue
        # A dev server writes out every import it serves with its extension; a relative
        # one without is text in a string (React's own messages show
        # `import('./MyComponent')`), and asking for it logs an error in the user's log.
        if ref.startswith(".") and "." not in parts.path.rsplit("/", 1)[-1]:
            continue
        out.append((parts.path + (f"?{parts.query}" if parts.query else ""), is_module))
    return out


async def warm(
    host: str,
    port: int,
    host_header: str,
    budget: float,
    on_progress: Callable[[int], None] = lambda n: None,
    entry: Answer | None = None,
) -> WarmupReport:
    """Load the entry route and its module graph; see the module docstring. ``entry``:
    the entry route's answer the readiness probe already has (not asked for again)."""
    report = WarmupReport()
    started = time.monotonic()
    deadline = started + budget
    seen = {"/"}
    queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    def follow(path: str, answer: Answer, module: bool) -> None:
        """Queue what a browser would load next from this answer, once each."""
        for ref, is_module in references(path, answer, module):
            if ref in seen:
                continue
            if len(seen) >= MAX_REQUESTS:
                report.truncated = True
                break
            seen.add(ref)
            queue.put_nowait((ref, is_module))

    if entry is None:
        queue.put_nowait(("/", True))
    else:
        follow("/", entry, True)

    async def worker() -> None:
        while True:
            path, module = await queue.get()
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    report.truncated = True
                    continue
                answer = await fetch(host, port, host_header, path, remaining)
                report.requests += 1
                on_progress(report.requests)
                if answer.status is None or answer.status >= 400:
                    report.failed.append(
                        f"{path}: " + (f"HTTP {answer.status}" if answer.status else "no answer")
                    )
                    continue
                follow(path, answer, module)
            finally:
                queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
    try:
        await queue.join()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    report.elapsed_ms = int((time.monotonic() - started) * 1000)
    return report
