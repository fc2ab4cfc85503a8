"""A cheaper wait for pyfuse3's request loop, for a daemon that runs one worker task.

pyfuse3's ``_session_loop`` calls ``_wait_fuse_readable()`` before every request.  The stock
version serialises its worker tasks with a ``trio.Lock``: acquiring it is a trio checkpoint,
i.e. one more pass through the scheduler for every FUSE request.  apfs runs exactly one
worker (``pyfuse3.main(min_tasks=1, max_tasks=1)``: handlers never block, and a single worker
keeps every write ordered), so the lock protects nothing.  Without it a ``cat`` of an
attribute (OPEN, READ, READ, FLUSH, RELEASE) drops from ~150 µs to ~95 µs on the machines
we measured (scripts/bench-attr).

The replacement is installed only if pyfuse3 still has the hook; otherwise the stock loop runs
unchanged (slower, equally correct).
"""

from __future__ import annotations

import logging
import os

import pyfuse3
import trio

log = logging.getLogger("apfs")


def _fuse_fd() -> int | None:
    """The /dev/fuse descriptor pyfuse3.init() opened (pyfuse3 does not export it)."""
    found = None
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found = int(name)
        except OSError:
            continue  # the descriptor listdir itself used
    return found


def install_single_worker_wait() -> bool:
    """Call after ``pyfuse3.init()``; returns whether the lean wait is in place."""
    fd = _fuse_fd()
    if fd is None or not hasattr(pyfuse3, "_wait_fuse_readable"):
        log.info("apfs: pyfuse3's request loop cannot be tuned here; using it as it is")
        return False

    async def wait_readable() -> bool:
        try:
            await trio.lowlevel.wait_readable(fd)
        except trio.ClosedResourceError:  # pyfuse3.close() is tearing the session down
            return False
        return True

    pyfuse3._wait_fuse_readable = wait_readable
    return True
