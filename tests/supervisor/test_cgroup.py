"""cgroup v1 and v2 readers on fixture trees, the CPU meter, and the disk helpers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from supervisor.cgroup import Cgroup, CpuMeter, disk_total, tree_size
from supervisor.diskquota import BtrfsQuota, DiskSample

GIB = 1 << 30


def write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def meminfo(tmp_path: Path, total_kib: int = 16 * 1024 * 1024) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       {total_kib} kB\nMemFree:        1 kB\n")
    return path


def test_v1(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(
        root,
        {
            "memory/memory.usage_in_bytes": str(600 * 1024 * 1024),
            "memory/memory.limit_in_bytes": str(2 * GIB),
            "memory/memory.stat": "cache 1\ntotal_inactive_file 104857600\n",
            "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            "cpuacct/cpuacct.usage": "123456789",
            "cpu/cpu.cfs_quota_us": "150000",
            "cpu/cpu.cfs_period_us": "100000",
        },
    )
    cg = Cgroup(root, meminfo(tmp_path))
    assert cg.version == 1
    sample = cg.sample()
    assert sample.memory_used == 500 * 1024 * 1024  # inactive page cache left out
    assert sample.memory_limit == 2 * GIB
    assert sample.cpu_usage_ns == 123456789
    assert sample.oom_kills == 2
    assert sample.cpu_limit == 1.5


def test_v1_unlimited_memory_is_the_hosts(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(
        root,
        {
            "memory/memory.usage_in_bytes": "1000",
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "cpu,cpuacct/cpuacct.usage": "5",
        },
    )
    sample = Cgroup(root, meminfo(tmp_path, 1024)).sample()
    assert sample.memory_limit == 1024 * 1024
    assert sample.cpu_usage_ns == 5


def test_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(
        root,
        {
            "cgroup.controllers": "cpu memory pids",
            "memory.current": str(300 * 1024 * 1024),
            "memory.max": str(GIB),
            "memory.stat": "anon 1\ninactive_file 52428800\nactive_file 3\n",
            "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
            "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            "cpu.max": "200000 100000",
        },
    )
    cg = Cgroup(root, meminfo(tmp_path))
    assert cg.version == 2
    sample = cg.sample()
    assert sample.memory_used == 250 * 1024 * 1024
    assert sample.memory_limit == GIB
    assert sample.cpu_usage_ns == 2_500_000_000
    assert sample.oom_kills == 1
    assert sample.cpu_limit == 2.0


def test_v2_max_means_the_hosts_memory(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(
        root,
        {
            "memory.current": "10",
            "memory.max": "max",
            "cpu.stat": "usage_usec 1\n",
            "cpu.max": "max 100000",
        },
    )
    sample = Cgroup(root, meminfo(tmp_path, 2048)).sample()
    assert sample.memory_limit == 2048 * 1024
    assert sample.cpu_limit is None  # no CPU limit either


def test_no_cgroup_still_reports_memory_total(tmp_path: Path) -> None:
    cg = Cgroup(tmp_path / "missing", meminfo(tmp_path, 4096))
    assert cg.version is None
    assert cg.sample().memory_limit == 4096 * 1024


def test_this_host_is_readable() -> None:
    sample = Cgroup().sample()
    assert sample.memory_limit > 0
    assert sample.cpu_usage_ns is not None


def test_cpu_meter_is_percent_of_one_core() -> None:
    meter = CpuMeter()
    assert meter.update(1_000_000_000, 100.0) == 0.0  # first sample: no interval yet
    assert meter.update(1_500_000_000, 101.0) == 50.0
    assert meter.update(3_500_000_000, 102.0) == 200.0  # two cores busy
    assert meter.update(None, 103.0) == 0.0


def test_tree_size_counts_hard_links_once_and_skips_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10000)
    (tmp_path / "b").hardlink_to(tmp_path / "a")
    (tmp_path / "c").symlink_to("/usr")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "e").write_bytes(b"y" * 5000)
    size = tree_size(tmp_path)
    assert 15000 <= size < 15000 + 5 * 8192
    assert disk_total(tmp_path) > size


def _qgroup(tmp_path: Path, **values: int) -> BtrfsQuota:
    for name, value in values.items():
        (tmp_path / name).write_text(f"{value}\n")
    return BtrfsQuota(tmp_path, tmp_path)


def test_btrfs_quota_counts_writes_not_yet_committed_against_the_limit(tmp_path: Path) -> None:
    # Simple quotas: referenced == exclusive == what the container wrote; 30 MiB more are
    # reserved (written, not committed yet) and count already; metadata estimates do not.
    quota = _qgroup(
        tmp_path,
        referenced=50 << 20,
        exclusive=50 << 20,
        max_referenced=100 << 20,
        limit_flags=1,
        rsv_data=30 << 20,
        rsv_meta_pertrans=0,
        rsv_meta_prealloc=1 << 20,
    )
    assert quota.sample() == DiskSample(used=80 << 20, total=100 << 20)


def test_btrfs_quota_with_full_accounting_leaves_the_shared_image_out(tmp_path: Path) -> None:
    # Full accounting: referenced also holds the 400 MiB of image the container shares.
    quota = _qgroup(
        tmp_path,
        referenced=410 << 20,
        exclusive=10 << 20,
        max_referenced=500 << 20,
        limit_flags=1,
        rsv_data=0,
    )
    assert quota.sample() == DiskSample(used=10 << 20, total=100 << 20)


def test_btrfs_quota_tells_when_the_kernel_stopped_enforcing(tmp_path: Path) -> None:
    (tmp_path / "0_300").mkdir()
    quota = _qgroup(tmp_path / "0_300", referenced=1, exclusive=1, max_referenced=2, rsv_data=0)
    assert quota.consistent()  # no status file: nothing to tell
    (tmp_path / "inconsistent").write_text("0\n")
    assert quota.consistent()
    (tmp_path / "inconsistent").write_text("1\n")
    assert not quota.consistent()


def test_btrfs_quota_without_a_limit_reports_the_filesystem_free_space(tmp_path: Path) -> None:
    quota = _qgroup(tmp_path, referenced=5 << 20, exclusive=5 << 20, max_referenced=0,
                    limit_flags=0, rsv_data=0)  # fmt: skip
    sample = quota.sample()
    assert sample.used == 5 << 20 and sample.total > sample.used


def test_no_btrfs_quota_off_btrfs(tmp_path: Path) -> None:
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True)
    if kind.stdout.strip() == b"btrfs":
        pytest.skip("the temporary directory is on btrfs")
    assert BtrfsQuota.find(tmp_path) is None  # not btrfs (the ioctl is refused)
