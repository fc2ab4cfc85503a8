"""``apfs umount`` of one apfs mount: bounded in time even when the daemon does not answer.

Nothing here looks inside the mount.  ``umount2(2)`` of a FUSE mount needs nothing from its
daemon (the kernel sends no request for it), so it returns at once whether the daemon is
healthy, stopped (SIGSTOP), stuck in a handler or dead.  What may then be left is a daemon
that does not exit on its own: it is found by its pid file (:mod:`apfs.pidfile`), asked to
stop with SIGTERM (and SIGCONT, so a stopped one can act on it), and killed after a bound.

A busy mount (a process has a file open or its working directory there) is refused with
EBUSY like umount(8) does, unless ``lazy`` is asked for, or unless the daemon cannot serve
it anyway (stopped, dead, or requests waiting for it for seconds): then it is detached.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import time

from apfs import pidfile
from apfs.mountinfo import MountEntry, mount_at
from apfs.pidfile import Process

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
EXIT_WAIT = 3.0
"""A daemon that answers exits within milliseconds of losing its mount."""
SIGNAL_WAIT = 2.0
"""How long a daemon gets to act on SIGTERM, and the kernel to reap it after SIGKILL."""
STUCK_AFTER = 2.0
"""Requests still waiting for the daemon after this long: it does not answer."""
FUSECTL = "/sys/fs/fuse/connections"
POLL = 0.02
LIBC = ctypes.CDLL(None, use_errno=True)


class UnmountError(Exception):
    """Why the mount was left as it was (the message names the mount point and the rule)."""


def unmount(entry: MountEntry, lazy: bool = False) -> str | None:
    """Unmount the apfs mount ``entry`` and stop its daemon; returns a note for the user."""
    daemon = pidfile.owner(entry.device)
    code = _umount(entry.mountpoint, lazy=False)
    if code == errno.EBUSY:
        serving = daemon is not None and not _stuck(entry, daemon)
        if serving and not lazy:
            raise UnmountError(
                f"{entry.mountpoint}: target is busy: a process has a file open or its working "
                f"directory there (see: fuser -vm {entry.mountpoint}); apfs umount --lazy "
                f"detaches it now")
        if serving:
            _detach(entry.mountpoint)
            return (f"{entry.mountpoint}: detached; its daemon (pid {daemon.pid}) serves the "
                    f"files still open there and exits when the last one is closed")
        # The daemon cannot serve those users any more: stop it (its end aborts the FUSE
        # connection, so waiting clients fail with ENOTCONN), then unmount, detaching if a
        # process still sits in the mount.
        _stop(daemon, patience=0.0)
        if _umount(entry.mountpoint, lazy=False) == errno.EBUSY:
            _detach(entry.mountpoint)
    elif code:
        raise UnmountError(f"{entry.mountpoint}: cannot unmount: {os.strerror(code)}")
    _stop(daemon, patience=0.0 if daemon is not None and daemon.stopped() else EXIT_WAIT)
    pidfile.forget(entry.device)
    return None


def _detach(mountpoint: str) -> None:
    code = _umount(mountpoint, lazy=True)
    if code:
        raise UnmountError(f"{mountpoint}: cannot detach: {os.strerror(code)}")


def _umount(mountpoint: str, lazy: bool) -> int:
    """umount2(2) of ``mountpoint``; 0 or the errno.  Non-root callers go through fusermount3,
    which unmounts FUSE mounts the caller owns."""
    if os.geteuid() == 0:
        flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
        if LIBC.umount2(os.fsencode(mountpoint), flags) == 0:
            return 0
        return ctypes.get_errno()
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SIGNAL_WAIT * 2)
    if done.returncode == 0:
        return 0
    return errno.EBUSY if "busy" in done.stderr else errno.EPERM


def _stuck(entry: MountEntry, daemon: Process) -> bool:
    """True if the daemon does not answer: stopped, or requests wait for it for seconds."""
    if daemon.stopped():
        return True
    deadline = time.monotonic() + STUCK_AFTER
    while time.monotonic() < deadline:
        waiting = _waiting(entry.minor)
        if waiting is None or waiting == 0:
            return False  # cannot tell, or it answered: treat it as a healthy busy mount
        time.sleep(POLL)
    return True


def _waiting(minor: int) -> int | None:
    """Requests the kernel sent the FUSE connection ``minor`` that are not answered yet;
    None if that cannot be known (fusectl not mounted and not mountable by this user)."""
    if mount_at(FUSECTL) is None and os.geteuid() == 0:
        LIBC.mount(b"fusectl", FUSECTL.encode(), b"fusectl", 0, None)  # as systemd does at boot
    try:
        with open(f"{FUSECTL}/{minor}/waiting") as f:
            return int(f.read())
    except OSError:
        return None


def _stop(daemon: Process | None, patience: float) -> None:
    """Give ``daemon`` ``patience`` seconds to exit by itself, then SIGTERM, then SIGKILL."""
    if daemon is None or _gone(daemon, patience):
        return
    for signals in ((signal.SIGTERM, signal.SIGCONT), (signal.SIGKILL,)):
        for sig in signals:
            if daemon.alive():  # checked just before each signal: never signal a reused pid
                with contextlib.suppress(ProcessLookupError):  # it exited since the check
                    os.kill(daemon.pid, sig)
        if _gone(daemon, SIGNAL_WAIT):
            return
    raise UnmountError(f"the daemon (pid {daemon.pid}) did not exit even after SIGKILL")


def _gone(daemon: Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while daemon.alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True
