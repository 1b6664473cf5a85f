"""Which mount holds a path, read from /proc/self/mountinfo.

Several decisions hang on it: a watch on NFS, SMB or FUSE must poll (inotify
sees only this host's writes there), a ledger must not live on a network
filesystem (SQLite's locking is unsafe there), and an archive folder on
another mount than its watch cannot take a rename, even when both are the
same filesystem bind-mounted twice (systemd's ReadWritePaths= makes such
mounts): `st_dev` cannot tell that case, the mount table can.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: its id, where it is mounted, and the type."""

    mount_id: int
    point: str
    fstype: str


def read_mountinfo(path: str = MOUNTINFO) -> str | None:
    """The mount table's text, or None where it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def mount_of(path: str | Path, mountinfo: str) -> Mount | None:
    """The mount holding `path` (the longest mount point above it), given
    the mount table's text; None when no line covers it."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # Equal lengths: a later line is a mount over the earlier one.
        if inside and (best is None or len(point) >= len(best.point)):
            best = Mount(int(fields[0]), point, right.split()[0])
    return best


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
