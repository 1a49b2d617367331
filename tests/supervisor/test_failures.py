"""Short reasons for failures, from real-looking output."""

from __future__ import annotations

import signal

import pytest

from supervisor.failures import classify, relevant_lines


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (
            "Error: listen EADDRINUSE: address already in use :::3000",
            "port 3000 is already in use (EADDRINUSE)",
        ),
        ("Error: Cannot find module 'express'\nRequire stack:", "Module not found: 'express'"),
        (
            "Error [ERR_MODULE_NOT_FOUND]: Cannot find package 'react-dom' imported from /w/a.js",
            "Module not found: 'react-dom'",
        ),
        (
            "Module not found: Error: Can't resolve 'react-dom' in '/workspace/src'",
            "Module not found: 'react-dom'",
        ),
        (
            '[plugin:vite:import-analysis] Failed to resolve import "lodash" from "src/a.js"',
            "Module not found: 'lodash'",
        ),
        (
            "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory",
            "out of memory",
        ),
        (
            "npm warn EBADENGINE Unsupported engine {\n"
            "npm warn EBADENGINE   package: 'vite@7.0.0',",
            "Node.js version mismatch: npm warn EBADENGINE Unsupported engine {",
        ),
        (
            "You are using Node.js 18.0.0. Vite requires Node.js version 20.19+ or 22.12+.",
            "Node.js version mismatch: You are using Node.js 18.0.0. Vite requires Node.js "
            "version 20.19+ or 22.12+.",
        ),
        (
            "/workspace/server.js:3\n  const x = ;\n            ^\n\n"
            "SyntaxError: Unexpected token ';'",
            "syntax error: SyntaxError: Unexpected token ';'",
        ),
    ],
)
def test_recognised(output: str, reason: str) -> None:
    assert classify(output.splitlines(), 1) == reason


def test_exit_codes_and_signals() -> None:
    assert classify(["nothing useful"], 3) == "exited with code 3"
    assert "out of memory" in classify([], -signal.SIGKILL)
    assert classify([], -signal.SIGSEGV) == "killed by SIGSEGV"
    assert classify(["Cannot find module 'x'"], -9, oom_killed=True).startswith("out of memory")


def test_relevant_lines_prefer_errors_then_tail() -> None:
    lines = ["starting", "Error: boom", "at foo (a.js:1)", "still here"]
    assert relevant_lines(lines) == ["Error: boom"]
    quiet = [f"line {i}" for i in range(20)]
    assert relevant_lines(quiet, limit=3) == ["line 17", "line 18", "line 19"]
