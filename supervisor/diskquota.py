"""The container's whole disk use as the kernel counts it, for the heartbeat.

Docker's btrfs driver gives each container's filesystem its own subvolume and turns the
``size`` storage option (PREVIEW_CONTAINER_DISK_MB, set by the gateway) into that
subvolume's qgroup limit on referenced bytes. The kernel publishes the qgroup under
``/sys/fs/btrfs/<fsid>/qgroups/0_<subvolume id>/`` (Linux 5.9+), in files anyone may read:
a few small reads, cheap enough for every heartbeat, where walking the tree would cost tens
of milliseconds per 10k files and /tmp or $HOME may hold any number. The two ids come from
ioctls that need no capability: BTRFS_IOC_FS_INFO (fsid) and BTRFS_IOC_INO_LOOKUP of the
subvolume's root directory (which the kernel answers for anyone with its tree id).

- used = exclusive + rsv_data: the extents only this container holds (whatever it wrote,
  wherever), plus data written that the next transaction commit (up to 30 s away) has not
  counted yet, which the kernel already holds against the limit. Metadata reservations
  are left out: estimates that come and go by megabytes with every commit.
- total = max_referenced - (referenced - exclusive): the limit, less the image's files the
  container shares when accounting is full (with simple quotas, what scripts/btrfs-quota
  sets up, referenced is exclusive and total the limit itself).

Other storage drivers: see ``heartbeat.DiskMeter``.
"""

from __future__ import annotations

import fcntl
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

SYSFS = Path("/sys/fs/btrfs")
# _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args) and _IOWR(0x94, 18, struct
# btrfs_ioctl_ino_lookup_args), from include/uapi/linux/btrfs.h.
_FS_INFO = 0x8400941F
_FS_INFO_SIZE = 1024
_INO_LOOKUP = 0xD0009412
_INO_LOOKUP_SIZE = 4096
_FIRST_FREE_OBJECTID = 256  # a subvolume's root directory
_LIMIT_MAX_RFER = 1  # BTRFS_QGROUP_LIMIT_MAX_RFER in limit_flags


@dataclass(frozen=True)
class DiskSample:
    used: int
    total: int


def _ids(path: Path) -> tuple[str, int]:
    """(filesystem uuid, subvolume id) of the btrfs subvolume holding ``path``; OSError
    when it is not on btrfs."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        info = bytearray(_FS_INFO_SIZE)
        fcntl.ioctl(fd, _FS_INFO, info, True)
        lookup = bytearray(_INO_LOOKUP_SIZE)
        struct.pack_into("=QQ", lookup, 0, 0, _FIRST_FREE_OBJECTID)
        fcntl.ioctl(fd, _INO_LOOKUP, lookup, True)
    finally:
        os.close(fd)
    fsid = str(uuid.UUID(bytes=bytes(info[16:32])))
    (tree,) = struct.unpack_from("=Q", lookup, 0)
    return fsid, int(tree)


class BtrfsQuota:
    """The qgroup of the subvolume mounted at ``root``."""

    def __init__(self, qgroup: Path, root: Path) -> None:
        self.qgroup = qgroup
        self.root = root

    @classmethod
    def find(cls, root: Path = Path("/"), sysfs: Path = SYSFS) -> BtrfsQuota | None:
        """None when ``root`` is not a btrfs subvolume with quotas on (no bound to read)."""
        try:
            fsid, tree = _ids(root)
        except OSError:
            return None
        qgroup = sysfs / fsid / "qgroups" / f"0_{tree}"
        return cls(qgroup, root) if (qgroup / "referenced").exists() else None

    def consistent(self) -> bool:
        """False when the kernel marked the filesystem's quotas inconsistent: it then
        enforces no limit at all (full accounting after Docker removed a container, on
        current kernels; scripts/btrfs-quota explains)."""
        try:
            return (self.qgroup.parent / "inconsistent").read_text().strip() != "1"
        except OSError:
            return True  # kernels before 5.9's sysfs files: nothing to tell

    def _value(self, name: str) -> int:
        return int((self.qgroup / name).read_text())

    def sample(self) -> DiskSample:
        """OSError when the qgroup went away (quotas turned off)."""
        try:
            exclusive, referenced = self._value("exclusive"), self._value("referenced")
            limited = self._value("limit_flags") & _LIMIT_MAX_RFER
            limit = self._value("max_referenced") if limited else 0
            pending = self._value("rsv_data")
        except ValueError as exc:
            raise OSError(f"unreadable qgroup {self.qgroup}: {exc}") from None
        used = exclusive + pending
        if limit:
            return DiskSample(used=used, total=limit - (referenced - exclusive))
        st = os.statvfs(self.root)  # no bound: what the filesystem has left
        return DiskSample(used=used, total=used + st.f_bavail * st.f_frsize)


def statvfs_sample(path: Path) -> DiskSample:
    """Use and size of the filesystem at ``path``: the container's own on drivers whose
    bound is the filesystem's size (overlay2 on XFS with project quotas, zfs)."""
    st = os.statvfs(path)
    return DiskSample(
        used=(st.f_blocks - st.f_bfree) * st.f_frsize, total=st.f_blocks * st.f_frsize
    )
