"""Short, actionable reasons for a failed install or dev server, from its output."""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence

# (pattern, reason template): the first pattern found in the output wins, so the most
# specific come first. Templates may use the match's named groups.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"EADDRINUSE.*?:(?P<port>\d+)\b", "port {port} is already in use (EADDRINUSE)"),
        (r"EADDRINUSE", "the port is already in use (EADDRINUSE)"),
        (r"JavaScript heap out of memory|ENOMEM|Cannot allocate memory", "out of memory"),
        (
            r"Module not found:.*?(?:resolve|module|package) ['\"](?P<name>[^'\"]+)['\"]",
            "Module not found: '{name}'",
        ),
        (
            r"Cannot find (?:module|package) ['\"](?P<name>[^'\"]+)['\"]",
            "Module not found: '{name}'",
        ),
        (
            r"Failed to resolve import ['\"](?P<name>[^'\"]+)['\"]",
            "Module not found: '{name}'",
        ),
        (r"ERR_MODULE_NOT_FOUND", "Module not found"),
        (
            r"(?P<line>.*(?:EBADENGINE|Unsupported engine|requires Node(?:\.js)? (?:version )?"
            r"[<>=^~]?\s*v?\d+).*)",
            "Node.js version mismatch: {line}",
        ),
        (r"(?P<line>SyntaxError: .*)", "syntax error: {line}"),
        (r"(?P<line>.*(?:command not found|: not found|ENOENT.*spawn).*)", "{line}"),
    )
)
_ERRORISH = re.compile(r"error|ERR!|Error:|failed|Failed|Cannot|cannot|✘|✖", re.IGNORECASE)


def classify(lines: Sequence[str], returncode: int | None = None, oom_killed: bool = False) -> str:
    """One short reason: the first recognised failure in ``lines``, else how it exited."""
    if oom_killed:
        return "out of memory (killed by the kernel's OOM killer)"
    text = "\n".join(lines)
    for pattern, template in _PATTERNS:
        found = pattern.search(text)
        if found:
            groups = {k: (v or "").strip()[:300] for k, v in found.groupdict().items()}
            return template.format(**groups)
    return exit_description(returncode)


def exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return f"killed by {name} (often: out of memory)"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def relevant_lines(lines: Sequence[str], limit: int = 8) -> list[str]:
    """The lines a person should see first: error-looking ones (the latest), else the
    tail of the output."""
    errors = [line for line in lines if _ERRORISH.search(line)]
    chosen = errors[-limit:] if errors else list(lines[-limit:])
    return [line for line in chosen if line.strip()]
