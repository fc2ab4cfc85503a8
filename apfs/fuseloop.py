"""A cheaper wait for pyfuse3's request loop, for a daemon that runs one worker task.

pyfuse3's ``_session_loop`` calls the module-level ``_wait_fuse_readable()`` before every
request.  Two costs hide there, and each is paid once per FUSE request:

- The stock version serialises worker tasks with a ``trio.Lock``; acquiring it is a trio
  checkpoint, one more pass through the scheduler.  apfs runs exactly one worker (handlers
  never block, and one worker keeps writes ordered), so the lock protects nothing.
- ``trio.lowlevel.wait_readable`` parks the task and goes through epoll and trio's scheduler
  even when the next request is already queued.  Clients of sysfs are sequential (``cat``
  sends READ right after OPEN's reply; ``ls -l`` one READLINK after another).  When the
  client shares the daemon's CPU, the reply wakes it, it preempts the daemon and sends the
  next request before the daemon is back here: one ``poll(0)`` finds it, which makes a
  same-CPU ``cat`` ~1.7x faster.  When the client runs on another CPU, the next request
  arrives a few microseconds after the reply, so we poll for up to ``spin_us`` microseconds
  before parking, like a NIC driver's busy-poll: ~2x faster across CPUs.  The cost is
  bounded: at most ``spin_us`` of CPU after the last request of a burst.  A daemon confined to
  one CPU does not spin: on a shared CPU spinning gains nothing over the single poll
  (measured), and a client that does not preempt the spinning daemon would wait for it.

The replacement counts on exactly one worker: it does not maintain pyfuse3's
``active_readers``, which pyfuse3 reads to decide whether to start another worker.  That is why
the installer returns the ``pyfuse3.main()`` arguments instead of leaving them to the caller.

The hook is private, so pyproject.toml pins pyfuse3 to the versions this was verified on; if a
pyfuse3 without it is installed anyway, the stock loop runs unchanged (slower, equally correct)
and a WARNING says so.  Figures: README, Performance (``scripts/bench-attr``).
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Awaitable, Callable
from types import ModuleType

import pyfuse3
import trio

log = logging.getLogger("apfs")

DEFAULT_SPIN_US = 30
CHECKPOINT_EVERY = 64
"""Requests served back to back before other tasks (signals, front ends) get a turn."""

HOOK = "_wait_fuse_readable"

ONE_WORKER = {"min_tasks": 1, "max_tasks": 1}
"""``pyfuse3.main()`` arguments for both loops: handlers never block, and a single worker
serves writes strictly in the order the kernel sent them."""


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


def install_single_worker_wait(spin_us: int = DEFAULT_SPIN_US, fuse: ModuleType = pyfuse3,
                               fd: int | None = None) -> dict[str, int]:
    """Replace ``fuse._wait_fuse_readable`` with the lean wait on ``fd`` (default: the session's
    /dev/fuse).  Call after ``pyfuse3.init()``; returns the keyword arguments for
    ``pyfuse3.main()``, which the lean wait depends on."""
    if fd is None:
        fd = _fuse_fd()
    if fd is None or not hasattr(fuse, HOOK):
        why = "no /dev/fuse descriptor found" if fd is None else f"it has no {HOOK}()"
        log.warning("apfs: cannot tune pyfuse3 %s's request loop (%s); using its stock loop, "
                    "which costs more per request", getattr(fuse, "__version__", "?"), why)
        return dict(ONE_WORKER)
    if spin_us and len(os.sched_getaffinity(0)) < 2:
        # A client on this CPU gains nothing from a spin over the single poll (measured).
        log.info("apfs: busy-poll off: one CPU available, spinning would delay the client")
        spin_us = 0
    elif spin_us:
        log.info("apfs: busy-poll %d µs after each request", spin_us)
    else:
        log.info("apfs: busy-poll off (--spin-us 0)")
    setattr(fuse, HOOK, _lean_wait(fd, spin_us))
    return dict(ONE_WORKER)


def _lean_wait(fd: int, spin_us: int) -> Callable[[], Awaitable[bool]]:
    """The coroutine function that stands in for pyfuse3's ``_wait_fuse_readable``."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poll = poller.poll
    now = time.perf_counter_ns
    spin_ns = spin_us * 1000
    served = 0

    async def wait_readable() -> bool:
        """True when ``fd`` is readable, False when the session is being closed."""
        nonlocal served
        # Polls at least once, even with spin_ns == 0 (see the module docstring).
        deadline = now() + spin_ns
        while True:
            if poll(0):
                served += 1
                if served % CHECKPOINT_EVERY == 0:
                    await trio.lowlevel.checkpoint()
                return True
            if now() > deadline:
                break
        try:
            await trio.lowlevel.wait_readable(fd)
        except trio.ClosedResourceError:  # pyfuse3.close() is tearing the session down
            return False
        return True

    return wait_readable
