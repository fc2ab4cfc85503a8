"""Private mount namespaces through libc: the unshare(2) and mount(2) calls ``apfs run`` needs.

Python 3.11 has no ``os.unshare`` and no ``mount``, so this module holds their ctypes
bindings: declared signatures, and one place where a failed call becomes an ``OSError`` whose
message names the call as a shell user would type it (``mount --bind A B: Permission
denied``).  It knows nothing about apfs mounts or about what is mounted where.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
CAP_SYS_ADMIN = 21
"""What unshare(CLONE_NEWNS) and mount(2) require (capabilities(7))."""

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.unshare.argtypes = (ctypes.c_int,)
_LIBC.unshare.restype = ctypes.c_int
_LIBC.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_LIBC.mount.restype = ctypes.c_int


def _check(result: int, call: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{call}: {os.strerror(code)}")


def has_sys_admin() -> bool:
    """Whether this process may make mount namespaces and mount: CAP_SYS_ADMIN is effective."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def unshare_mounts() -> None:
    """Move this process into a mount namespace of its own (a copy of the current one)."""
    _check(_LIBC.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")


def make_private(path: str) -> None:
    """``mount --make-rprivate PATH``: nothing mounted below ``path`` from now on propagates
    to (or from) the namespace it was copied from, even where that one has shared mounts."""
    _check(_LIBC.mount(None, os.fsencode(path), None, MS_REC | MS_PRIVATE, None),
           f"mount --make-rprivate {path}")


def bind(source: str, target: str) -> None:
    """``mount --bind SOURCE TARGET`` (not recursive: what is mounted below SOURCE stays out)."""
    _check(_LIBC.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None),
           f"mount --bind {source} {target}")


def mount_tmpfs(target: str, options: str) -> None:
    """``mount -t tmpfs -o nosuid,nodev,OPTIONS tmpfs TARGET``."""
    _check(_LIBC.mount(b"tmpfs", os.fsencode(target), b"tmpfs", MS_NOSUID | MS_NODEV,
                       options.encode()),
           f"mount -t tmpfs -o {options} tmpfs {target}")
