"""A cheaper wait for pyfuse3's request loop, and the hand-over that lets a handler block.

pyfuse3's ``_session_loop`` calls the module-level ``_wait_fuse_readable()`` before every
request.  Two costs hide there, and each is paid once per FUSE request:

- The stock version serialises worker tasks with a ``trio.Lock``; acquiring it is a trio
  checkpoint, one more pass through the scheduler.  Here one worker serves every request
  that answers at once (every sysfs attribute), so nothing needs serialising on that path.
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

Handlers that block (a TPM command on /dev/tpm0 awaits a worker thread for up to seconds)
must not stop the other requests.  pyfuse3 starts up to ``max_tasks`` workers (the
replacement leaves its ``active_readers`` at 0, so it starts them one per request until
there are :data:`MAX_WORKERS`), but only one task may wait on /dev/fuse: the others stand by
on a parking lot.  A handler about to block calls :meth:`LeanWait.hand_over`, which wakes one
standby worker to take over the wait; a worker never reads /dev/fuse without a ``poll(0)``
that says a request is there, with no checkpoint in between, so two workers can never race
for one request (the descriptor blocks).  Requests that answer at once never yield, so they
are still served strictly in the order the kernel sent them, by whichever worker got them.

The hook is private, so pyproject.toml pins pyfuse3 to the versions this was verified on; if a
pyfuse3 without it is installed anyway, the stock loop runs unchanged (slower, equally correct;
its own workers take over while a handler blocks) and a WARNING says so.  Figures: README,
Performance (``scripts/bench-attr``).
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable
from types import ModuleType

import pyfuse3
import trio

log = logging.getLogger("apfs")

DEFAULT_SPIN_US = 30
CHECKPOINT_EVERY = 64
"""Requests served back to back before other tasks (signals, front ends) get a turn."""

HOOK = "_wait_fuse_readable"

MAX_WORKERS = 16
"""Workers pyfuse3 may run: one serves the requests, the others stand by for handlers that
block (at most ``MAX_WORKERS - 1`` TPM commands in flight before sysfs waits too)."""
LOOP_ARGS = {"min_tasks": 1, "max_tasks": MAX_WORKERS}
"""``pyfuse3.main()`` arguments for both loops."""


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


class LeanWait:
    """The replacement of ``_wait_fuse_readable`` on ``fd`` (see the module docstring)."""

    def __init__(self, fd: int, spin_us: int) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._fd = fd
        self._spin_ns = spin_us * 1000
        self._served = 0
        self._fd_waiter = False
        self._standby = trio.lowlevel.ParkingLot()

    def hand_over(self) -> None:
        """A handler is about to block: a standby worker takes over the wait, if the
        blocking one was the last to wait (it usually was)."""
        if not self._fd_waiter:
            self._standby.unpark()

    async def __call__(self) -> bool:
        """True when a request can be read at once, False when the session is closing."""
        poll = self._poll.poll
        now = time.perf_counter_ns
        while True:
            # Polls at least once, even with spin_ns == 0 (see the module docstring).
            deadline = now() + self._spin_ns
            while True:
                ready = poll(0)
                if ready:
                    if ready[0][1] & ~select.POLLIN:
                        # The session is gone (unmounted): every standby worker must come
                        # and read the end of it, or pyfuse3.main() would wait for them.
                        self._standby.unpark_all()
                        return True
                    self._served += 1
                    if self._served % CHECKPOINT_EVERY:
                        return True
                    # Let other tasks run; another worker may take this request meanwhile,
                    # so poll again rather than trust this answer.
                    await trio.lowlevel.checkpoint()
                    continue
                if now() > deadline:
                    break
            if self._fd_waiter:
                await self._standby.park()
                continue
            self._fd_waiter = True
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:  # pyfuse3.close() is tearing the session down
                self._standby.unpark_all()
                return False
            finally:
                self._fd_waiter = False


def install_lean_wait(spin_us: int = DEFAULT_SPIN_US, fuse: ModuleType = pyfuse3,
                      fd: int | None = None) -> tuple[dict[str, int], Callable[[], None]]:
    """Replace ``fuse._wait_fuse_readable`` with the lean wait on ``fd`` (default: the
    session's /dev/fuse).  Call after ``pyfuse3.init()``; returns the keyword arguments for
    ``pyfuse3.main()`` and the hand-over a handler calls before it blocks (a no-op with the
    stock loop, whose own workers take over)."""
    if fd is None:
        fd = _fuse_fd()
    if fd is None or not hasattr(fuse, HOOK):
        why = "no /dev/fuse descriptor found" if fd is None else f"it has no {HOOK}()"
        log.warning("apfs: cannot tune pyfuse3 %s's request loop (%s); using its stock loop, "
                    "which costs more per request", getattr(fuse, "__version__", "?"), why)
        return dict(LOOP_ARGS), _nothing
    if spin_us and len(os.sched_getaffinity(0)) < 2:
        # A client on this CPU gains nothing from a spin over the single poll (measured).
        log.info("apfs: busy-poll off: one CPU available, spinning would delay the client")
        spin_us = 0
    elif spin_us:
        log.info("apfs: busy-poll %d µs after each request", spin_us)
    else:
        log.info("apfs: busy-poll off (--spin-us 0)")
    wait = LeanWait(fd, spin_us)
    setattr(fuse, HOOK, wait)
    return dict(LOOP_ARGS), wait.hand_over


def _nothing() -> None:
    pass
