"""User code is started first in the OOM killer's line, as the same process."""

from __future__ import annotations

import subprocess

from supervisor.procs import USER_OOM_SCORE_ADJ, oom_first


def test_oom_first_raises_the_score_and_execs_in_place() -> None:
    argv = oom_first(["sh", "-c", 'cat /proc/self/oom_score_adj; echo "$$"; echo "$1"', "-", "a b"])
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=10)
    score, pid, arg = out.split("\n")[:3]
    assert int(score) == USER_OOM_SCORE_ADJ
    assert int(pid) == child.pid  # exec'd: the pid we signal is the program's
    assert arg == "a b"  # arguments pass through unsplit
