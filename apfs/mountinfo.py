"""What is mounted where, read from ``/proc/self/mountinfo`` without touching any mount.

A ``stat`` of a FUSE mount point is a request to its daemon: if the daemon is stopped or stuck
it never returns, and if it died it fails with ENOTCONN.  So every question the CLI and the
daemon ask about a mount (is this path a mount point, is it ours, which FUSE connection is it)
is answered from the kernel's mount table instead.  Nothing here knows about daemons.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
APFS_SOURCE = "apfs"
APFS_FSTYPES = ("fuse.apfs", "fuse")
"""``fsname=apfs,subtype=apfs`` gives ``fuse.apfs``; a libfuse without subtypes says ``fuse``."""

_ESCAPE = re.compile(r"\\([0-7]{3})")
MAX_SYMLINKS = 40  # the kernel's limit (ELOOP)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (proc(5)); ``device`` is ``major:minor`` of the filesystem."""

    device: str
    mountpoint: str
    fstype: str
    source: str

    @property
    def is_apfs(self) -> bool:
        return self.source == APFS_SOURCE and self.fstype in APFS_FSTYPES

    @property
    def minor(self) -> int:
        """For FUSE, the connection's number in /sys/fs/fuse/connections/."""
        return int(self.device.split(":")[1])

    def describe(self) -> str:
        return f"type {self.fstype}, source {self.source}"


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as \ooo octal.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _parse(line: str) -> MountEntry:
    fields = line.split()
    separator = fields.index("-", 6)  # optional fields (shared:N ...) end with a lone "-"
    return MountEntry(device=fields[2], mountpoint=_unescape(fields[4]),
                      fstype=fields[separator + 1], source=_unescape(fields[separator + 2]))


def mounts() -> list[MountEntry]:
    """Every mount visible to this process, in the kernel's order (later ones on top)."""
    with open(MOUNTINFO) as f:
        return [_parse(line) for line in f if line.strip()]


def _top_mounts() -> dict[str, MountEntry]:
    """The mount on top at each mount point."""
    return {entry.mountpoint: entry for entry in mounts()}


def mount_at(path: str) -> MountEntry | None:
    """The mount whose root is ``path`` (canonical), the top one if several are stacked."""
    return _top_mounts().get(path)


def apfs_mount_above(path: str) -> MountEntry | None:
    """The apfs mount that ``path`` (canonical) lies inside, below its root, if any."""
    for mountpoint, entry in _top_mounts().items():
        if entry.is_apfs and path.startswith(mountpoint.rstrip("/") + "/"):
            return entry
    return None


def canonical(path: str) -> str:
    """``path`` made absolute with symlinks resolved, never looking inside an apfs mount.

    ``os.path.realpath`` would ``lstat`` every component, and for a mount point that is the
    mount's root: a request to its daemon, which may never answer.  Here a component is
    looked at only if it is not a mount point, and nothing below an apfs mount's root is
    looked at (the rest of the path is taken as written).
    """
    top = _top_mounts()
    # Not os.path.abspath: it would fold "link/.." before the link is resolved.
    pending = os.path.join(os.getcwd(), path).split("/")
    resolved = "/"
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        here = top.get(resolved)
        if here is not None and here.is_apfs:
            return os.path.normpath(os.path.join(resolved, name, *pending))
        candidate = os.path.join(resolved, name)
        if candidate in top or not os.path.islink(candidate):
            resolved = candidate
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = "/"
        pending[:0] = target.split("/")
    return resolved
