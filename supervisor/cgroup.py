"""CPU and memory of this container from its cgroup (v1 or v2), and disk of the workspace.

Inside a container /proc/meminfo and /proc/stat describe the host, so the numbers come
from the cgroup files Docker mounts at /sys/fs/cgroup. Memory "used" leaves out inactive
page cache, as ``docker stats`` does: the kernel reclaims it before it OOM-kills anyone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# cgroup v1 writes a huge page-aligned number for "no limit".
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupSample:
    cpu_usage_ns: int | None
    memory_used: int
    memory_limit: int
    oom_kills: int
    cpu_limit: float | None = None  # cores (quota / period); None: no limit


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    raw = _read(path)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _flat_keyed(path: Path) -> dict[str, int]:
    """A cgroup "flat keyed" file (``name value`` per line), e.g. memory.stat."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        try:
            out[name] = int(value)
        except ValueError:
            continue
    return out


def cpu_max(raw: str | None) -> float | None:
    """Cores allowed by a cgroup v2 ``cpu.max`` ("200000 100000"; "max 100000": none).
    Docker's live update (boost.py in the gateway) rewrites this file."""
    quota, _, period = (raw or "").partition(" ")
    try:
        return int(quota) / int(period or 100000)
    except ValueError:
        return None


def host_memory_total(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


class Cgroup:
    """Reads this process's cgroup; ``root`` is /sys/fs/cgroup (a fixture in tests)."""

    def __init__(
        self, root: Path = Path("/sys/fs/cgroup"), meminfo: Path = Path("/proc/meminfo")
    ) -> None:
        self.root = root
        self.meminfo = meminfo
        self.version = self.detect(root)

    @staticmethod
    def detect(root: Path) -> Literal[1, 2] | None:
        # Hybrid hosts have both; the v1 memory controller is the one that limits us.
        if (root / "memory" / "memory.usage_in_bytes").exists():
            return 1
        if (root / "memory.current").exists() or (root / "cgroup.controllers").exists():
            return 2
        return None

    def sample(self) -> CgroupSample:
        if self.version == 1:
            return self._v1()
        if self.version == 2:
            return self._v2()
        return CgroupSample(None, 0, host_memory_total(self.meminfo), 0)

    def cpu_usage_ns(self) -> int | None:
        """Only the CPU time used (one file): a sleeping preview's heartbeat, whose memory
        and limits cannot change while its dev server is frozen."""
        if self.version == 1:
            cpu_dir = next(
                (self.root / d for d in ("cpuacct", "cpu,cpuacct") if (self.root / d).is_dir()),
                self.root / "cpuacct",
            )
            return _int(cpu_dir / "cpuacct.usage")
        if self.version == 2:
            usec = _flat_keyed(self.root / "cpu.stat").get("usage_usec")
            return usec * 1000 if usec is not None else None
        return None

    def _limit(self, raw: int | None) -> int:
        host = host_memory_total(self.meminfo)
        if raw is None or raw >= _UNLIMITED:
            return host
        return min(raw, host) if host else raw

    def _v1(self) -> CgroupSample:
        mem = self.root / "memory"
        usage = _int(mem / "memory.usage_in_bytes") or 0
        stat = _flat_keyed(mem / "memory.stat")
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        oom = _flat_keyed(mem / "memory.oom_control").get("oom_kill", 0)
        quota, period = (
            _int(self.root / "cpu" / "cpu.cfs_quota_us"),
            _int(self.root / "cpu" / "cpu.cfs_period_us"),
        )
        return CgroupSample(
            cpu_limit=quota / period if quota and quota > 0 and period else None,
            cpu_usage_ns=self.cpu_usage_ns(),
            memory_used=max(usage - inactive, 0),
            memory_limit=self._limit(_int(mem / "memory.limit_in_bytes")),
            oom_kills=oom,
        )

    def _v2(self) -> CgroupSample:
        usage = _int(self.root / "memory.current") or 0
        inactive = _flat_keyed(self.root / "memory.stat").get("inactive_file", 0)
        raw_max = _read(self.root / "memory.max")
        limit = None if raw_max in (None, "max") else int(raw_max)
        return CgroupSample(
            cpu_limit=cpu_max(_read(self.root / "cpu.max")),
            cpu_usage_ns=self.cpu_usage_ns(),
            memory_used=max(usage - inactive, 0),
            memory_limit=self._limit(limit),
            oom_kills=_flat_keyed(self.root / "memory.events").get("oom_kill", 0),
        )


class CpuMeter:
    """CPU % between successive samples; 100 means one core busy (as ``docker stats``)."""

    def __init__(self) -> None:
        self._last: tuple[int, float] | None = None

    def update(self, usage_ns: int | None, now: float) -> float:
        if usage_ns is None:
            return 0.0
        last, self._last = self._last, (usage_ns, now)
        if last is None or now <= last[1] or usage_ns < last[0]:
            return 0.0
        return round((usage_ns - last[0]) / ((now - last[1]) * 1e9) * 100, 2)


def disk_total(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize


def tree_size(path: Path) -> int:
    """Bytes allocated under ``path`` (like ``du``; symlinks not followed, hard links once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total
