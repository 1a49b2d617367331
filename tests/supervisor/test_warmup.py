"""The warm-up before `ready` (supervisor/warmup.py): a real supervisor and a small Node dev
server that serves an entry page and an ES module graph the way Vite does, and records
what it was asked for."""

from __future__ import annotations

import json
from typing import Any

from supervisor.readiness import BODY_TIMEOUT
from supervisor.warmup import Answer, references
from tests.supervisor.conftest import SupervisorProcess, wait_for_event
from tests.supervisor.test_daemon import node_project, prepare_args

# Serves "/" and /src/*.js from the table below; appends "<ms> <path>" to requests.log.
# /src/slow.js answers after a second: `ready` must come after it. A page given as two
# parts is streamed: the second 0.3 s after the first; a second part null never comes.
GRAPH_SERVER = """
const fs = require("fs"), http = require("http");
const files = JSON.parse(fs.readFileSync("graph.json", "utf8"));
http.createServer((q, s) => {
  const path = q.url.split("?")[0];
  fs.appendFileSync("requests.log", Date.now() + " " + q.url + "\\n");
  const body = files[path];
  const send = () => {
    if (body === undefined) { s.writeHead(404); return s.end("not found"); }
    if (Array.isArray(body)) {  // streamed, as a server render is: the rest comes later
      s.writeHead(200, {"content-type": "text/html"});
      s.write(body[0]);
      return body[1] === null ? undefined : setTimeout(() => s.end(body[1]), 300);
    }
    if (body.status) {
      console.log(body.log);
      s.writeHead(body.status, {"content-type": "text/html"});
      return s.end(body.log);
    }
    const type = path.endsWith(".js") ? "text/javascript" : "text/html";
    s.writeHead(200, {"content-type": type});
    s.end(body);
  };
  path === "/src/slow.js" ? setTimeout(send, 1000) : send();
}).listen(Number(process.env.PORT));
"""
GRAPH = {
    "/": (
        '<!doctype html><script type="module" src="/@vite/client"></script>'
        '<script src="https://cdn.example.com/tracker.js"></script>'
        '<link rel="modulepreload" href="/src/preloaded.js">'
        '<script type="module" src="/src/main.js"></script>'
    ),
    "/@vite/client": "export const hot = 1;",
    "/src/preloaded.js": "export default 1;",
    "/src/main.js": (
        'import React from "/node_modules/.vite/deps/react.js?v=abc123";\n'
        'import { a } from "./a.js";\nimport "bare-package";\n'
        'const lazy = () => import("/src/lazy.js");\n'
    ),
    "/node_modules/.vite/deps/react.js": "export default {};",
    "/src/a.js": 'export * from "/src/slow.js";\nexport const a = 1;',
    "/src/slow.js": "export const slow = 1;",
    "/src/lazy.js": "export const lazy = 1;",
}


def requests_made(sup: SupervisorProcess) -> list[tuple[int, str]]:
    lines = (sup.workspace / "requests.log").read_text().splitlines()
    return [(int(ms), path) for ms, path in (line.split(" ", 1) for line in lines)]


def graph_project(sup: SupervisorProcess, graph: dict[str, Any]) -> None:
    node_project(sup, GRAPH_SERVER)
    sup.write("graph.json", json.dumps(graph))


async def test_ready_after_the_entry_module_graph_was_loaded(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory()
    graph_project(sup, GRAPH)
    result = await sup.send("prepare", prepare_args())
    assert result.ok, (result, sup.log()[-2000:])
    made = requests_made(sup)
    paths = {path for _, path in made}
    assert {
        "/@vite/client",
        "/src/preloaded.js",
        "/src/main.js",
        "/node_modules/.vite/deps/react.js?v=abc123",
        "/src/a.js",
        "/src/slow.js",
        "/src/lazy.js",
    } <= paths
    # Never another origin, never a bare specifier no dev server serves as a path.
    assert not any("tracker" in p or "bare-package" in p for p in paths)
    # The entry page was rendered once: the warm-up started from the probe's answer.
    assert [path for _, path in made].count("/") == 1
    ready = await wait_for_event(sup, "ready")
    slow_at = max(ms for ms, path in made if path == "/src/slow.js") / 1000
    assert ready.ts >= slow_at + 0.9  # it answered a second later, and only then: ready
    assert result.result["timings_ms"]["warmup"] >= 900
    timings = result.result["timings_ms"]
    assert timings["devserver"] >= timings["boot"] + timings["answer"] + timings["warmup"]
    assert timings["boot"] >= 0 and timings["answer"] >= 0


async def test_the_warm_up_reads_a_streamed_entry_page_to_its_end(sup_factory: Any) -> None:
    """A server render streams its page: the scripts come at the end of it (Next.js).
    The probe that finds the server ready keeps the whole page, not its first part."""
    sup: SupervisorProcess = sup_factory()
    first, rest = GRAPH["/"].split('<link rel="modulepreload"')
    graph_project(sup, {**GRAPH, "/": [first, '<link rel="modulepreload"' + rest]})
    result = await sup.send("prepare", prepare_args())
    assert result.ok, (result, sup.log()[-2000:])
    paths = [path for _, path in requests_made(sup)]
    assert {"/src/preloaded.js", "/src/main.js", "/src/slow.js"} <= set(paths)
    assert paths.count("/") == 1


async def test_an_entry_page_that_streams_on_does_not_hold_ready(sup_factory: Any) -> None:
    """A render waiting on a slow data source, or a route that is an event stream: its
    head came at once, and `ready` comes BODY_TIMEOUT later (not the probe's 30 s), the
    warm-up following what came and not asking for the page again."""
    sup: SupervisorProcess = sup_factory()
    graph_project(sup, {**GRAPH, "/": [GRAPH["/"], None]})
    result = await sup.send("prepare", prepare_args(), timeout=60)
    assert result.ok, (result, sup.log()[-2000:])
    timings = result.result["timings_ms"]
    assert timings["answer"] < (BODY_TIMEOUT + 3) * 1000, timings
    paths = [path for _, path in requests_made(sup)]
    assert {"/src/preloaded.js", "/src/main.js", "/src/slow.js"} <= set(paths)
    assert paths.count("/") == 1


async def test_a_failing_module_does_not_fail_the_start(sup_factory: Any) -> None:
    """As without warm-up: the browser's overlay shows a module's compile error."""
    sup: SupervisorProcess = sup_factory()
    broken = {"status": 500, "log": "Transform failed: Unexpected token (1:7)"}
    graph_project(sup, {**GRAPH, "/src/main.js": broken})
    result = await sup.send("prepare", prepare_args())
    assert result.ok, result
    logs = await sup.send("logs", {"lines": 50})
    assert any(
        "warm-up" in line and "/src/main.js: HTTP 500" in line for line in logs.result["lines"]
    )


async def test_a_broken_entry_page_still_fails_with_the_framework_message(
    sup_factory: Any,
) -> None:
    sup: SupervisorProcess = sup_factory()
    broken = {"status": 500, "log": "SyntaxError: Unexpected token ';' in app/page.tsx"}
    graph_project(sup, {**GRAPH, "/": broken})
    result = await sup.send("prepare", prepare_args(ready_timeout=3))
    assert not result.ok
    assert "(last answer: HTTP 500)" in (result.error or "")
    assert "SyntaxError: Unexpected token ';'" in (result.error or "")
    hb = await sup.wait_heartbeat(state="failed")
    assert hb.pid is None


async def test_warm_up_off(sup_factory: Any) -> None:
    sup: SupervisorProcess = sup_factory(PREVIEW_WARMUP_SECONDS="0")
    graph_project(sup, GRAPH)
    result = await sup.send("prepare", prepare_args())
    assert result.ok, result
    assert "warmup" not in result.result["timings_ms"]
    assert "/src/slow.js" not in {path for _, path in requests_made(sup)}


def test_references_only_same_origin_paths() -> None:
    html = Answer(
        200,
        "text/html; charset=utf-8",
        b'<script src="//evil.example/x.js"></script><script src="/a.js?t=1"></script>'
        b'<script type="module" src="./b.js"></script>'
        b'<script type="module">Promise.all([import("/@fs/kit/entry.js")])</script>',
    )
    assert references("/", html) == [
        ("/a.js?t=1", False),
        ("/b.js", True),
        ("/@fs/kit/entry.js", True),
    ]
    js = Answer(
        200,
        "application/javascript",
        b'import x from "../up.js"; export { y } from "/y.js"; import "react";'
        b'import("http://other/z.js"); import(`/tmpl/${n}.js`);',
    )
    assert references("/src/deep/m.js", js) == [("/src/up.js", True), ("/y.js", True)]
    # A JSDoc type names a module that is not served (SvelteKit's client runtime).
    jsdoc = Answer(
        200,
        "text/javascript",
        b"/** @param {import('./types.js').Options} o */\nimport { a } from './a.js';",
    )
    assert references("/kit/client.js", jsdoc) == [("/kit/a.js", True)]
    assert references("/", Answer(200, "text/css", b'@import "/x.css";')) == []


def test_references_skip_text_that_only_looks_like_imports() -> None:
    # React's pre-bundled dev build explains lazy() with `import('./MyComponent')`: no
    # dev server writes a served import without its extension (Vite logged an error).
    react = Answer(
        200,
        "text/javascript",
        b'import { a } from "./chunk-Q2.js?v=1";\n'
        b"console.error(\"const MyComponent = lazy(() => import('./MyComponent'))\");",
    )
    assert references("/node_modules/.vite/deps/react-dom.js", react) == [
        ("/node_modules/.vite/deps/chunk-Q2.js?v=1", True)
    ]
    # Next.js serves classic scripts: loaded, never read for imports (the warm-up asked
    # for /_next/static/chunks/normalize.css and friends: 404s in the user's log).
    chunk = Answer(200, "application/javascript", b'import "./normalize.css"; import("./x.js")')
    assert references("/_next/static/chunks/main.js", chunk, module=False) == []


# Boots for 1.5 s before it listens, then compiles its entry for 1 s (as Next.js does on
# the first request); writes down when it started listening.
LATE_SERVER = """
const fs = require("fs"), http = require("http");
let compiled = false;
setTimeout(() => http.createServer((q, s) => {
  const wait = compiled ? 0 : 1000;
  compiled = true;
  setTimeout(() => s.end("<p>hi</p>"), wait);
}).listen(+process.env.PORT, () => fs.writeFileSync("listening", String(Date.now()))), 1500);
"""


async def test_boot_and_answer_timed_and_the_port_tried_often(sup_factory: Any) -> None:
    """`boot` is until the port accepts, `answer` until the entry route answered; ready
    follows the port opening closely (tried every 100 ms, not on a 2 s backoff)."""
    sup: SupervisorProcess = sup_factory()
    node_project(sup, LATE_SERVER)
    result = await sup.send("prepare", prepare_args())
    assert result.ok, (result, sup.log()[-2000:])
    timings = result.result["timings_ms"]
    assert 1400 <= timings["boot"] < 2500, timings
    assert 900 <= timings["answer"] < 2000, timings
    ready = await wait_for_event(sup, "ready")
    listening = int((sup.workspace / "listening").read_text()) / 1000
    # 1 s of compile, the warm-up of one page: well under a backoff step more.
    assert ready.ts - listening < 1.0 + 0.6, (ready.ts, listening)
