"""What ``apfs mount`` checks before it starts a daemon, each refusal naming the real problem.

The mount point is looked up in /proc/self/mountinfo before anything touches it: a mount
point whose daemon died (ENOTCONN) or is stopped must be reported, not stat-ed.  Only a path
that is no mount point is then inspected (directory? empty?).
"""

from __future__ import annotations

import argparse
import os
import stat

from apfs import mountinfo, pidfile

KINDS = {stat.S_IFREG: "a regular file", stat.S_IFLNK: "a symbolic link",
         stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


def mount_problem(args: argparse.Namespace, mountpoint: str) -> str | None:
    """The first reason not to mount on ``mountpoint`` (canonical) with ``args``, if any."""
    return (_mountpoint_problem(mountpoint, args.nonempty)
            or (args.config and _config_problem(args.config))
            or (args.log and _log_problem(args.log))
            or None)


def _mountpoint_problem(path: str, nonempty: bool) -> str | None:
    entry = mountinfo.mount_at(path)
    if entry is not None:
        return _mounted_problem(entry)
    above = mountinfo.apfs_mount_above(path)
    if above is not None:
        return (f"{path}: inside the apfs mount {above.mountpoint}; mount on an empty "
                f"directory outside it")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{path}: no such directory (create it first: mkdir -p {path})"
    except OSError as exc:
        return f"{path}: cannot use it as a mount point: {exc.strerror}"
    if not stat.S_ISDIR(mode):
        kind = KINDS.get(stat.S_IFMT(mode), "not a directory")
        return f"{path}: is {kind}, not a directory; mount on an empty directory"
    if nonempty:
        return None
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        return f"{path}: cannot list the directory: {exc.strerror}"
    if entries:
        return (f"{path}: directory not empty ({len(entries)} entries, first {entries[0]!r}): "
                f"the mount would hide them; choose an empty directory or pass --nonempty")
    return None


def _mounted_problem(entry: mountinfo.MountEntry) -> str:
    path = entry.mountpoint
    if not entry.is_apfs:
        return f"{path}: already a mount point ({entry.describe()}); choose an empty directory"
    daemon = pidfile.owner(entry.device)
    if daemon is None:
        return (f"{path}: already a mount point, an apfs mount whose daemon has exited "
                f"(Transport endpoint is not connected); 'apfs umount {path}' clears it")
    return (f"{path}: already a mount point, served by apfs daemon pid {daemon.pid}; "
            f"'apfs umount {path}' first")


def _config_problem(config: str) -> str | None:
    if not os.path.exists(config):
        return f"{config}: no such configuration file"
    if not os.path.isfile(config):
        return f"{config}: not a regular file (--config takes a TOML file)"
    return None


def _log_problem(log: str) -> str | None:
    """Open ``log`` for appending, as the daemon will: the only test that cannot be wrong."""
    try:
        with open(log, "a"):
            return None
    except FileNotFoundError:
        return (f"--log {log}: directory {os.path.dirname(os.path.abspath(log))} "
                f"does not exist")
    except IsADirectoryError:
        return f"--log {log}: is a directory; --log takes a file name"
    except OSError as exc:
        return f"--log {log}: cannot write to it: {exc.strerror}"
