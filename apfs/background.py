"""Device work of the mount at background priority.

The threads that run a FUSE queue's device work (TPM commands written to ``dev/tpm0``, SEV
bulk crypto: every ``trio.to_thread`` call of the daemon) lower their own scheduling
priority, once, to :data:`BACKGROUND_NICE`.  When the machine is short of CPU, the request
loop and the processes reading the mount then get it before an RSA key generation does.
Why: measured with ``scripts/bench-tpm-responsive`` on a 2-vCPU VM at load 2.6, ``cat`` of
an AP attribute took 2.89x its idle time while RSA-3072 primaries were made through
``dev/tpm0``, though the daemon's own reads stayed at 0.91x: ``cat``'s fork and exec waited
for the CPU the key generation held; with this, 0.82x and 1.05x in the next two runs.

The vTPM's socket threads stay at normal priority, as swtpm does: serving a remote client is
their whole job, and niced they lost ~10% of a connection-per-command round trip to the
other processes of a loaded machine (``scripts/bench-tpm``, A/B at load 3).

A thread may always lower its priority (raise its nice value) without privileges, and never
raises it back here: trio's thread cache reuses the same threads for device work only.  On
Linux ``setpriority(PRIO_PROCESS, tid)`` applies to that thread alone.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("apfs")

BACKGROUND_NICE = 10
"""Nice 10 weighs about a tenth of nice 0 (CFS): device work still progresses on a busy
machine, but yields most of a contended CPU to the loop and to readers."""

_lowered = threading.local()


def lower_this_thread() -> None:
    """Put the calling thread at background priority (once per thread; a thread already
    at a lower priority keeps it)."""
    if getattr(_lowered, "done", False):
        return
    _lowered.done = True
    thread = threading.get_native_id()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        if nice < BACKGROUND_NICE:
            os.setpriority(os.PRIO_PROCESS, thread, BACKGROUND_NICE)
    except OSError as exc:  # a seccomp'd container, say: device work keeps the loop's
        log.warning("apfs: device work runs at normal priority: setpriority: %s",
                    exc.strerror or exc)
