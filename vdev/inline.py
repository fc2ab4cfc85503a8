"""Calls that must not wait: an event loop that serves a request inline marks its thread, and
a device lock found held then raises :class:`~vdev.errors.WouldWait` instead of blocking the
loop (the caller makes the call again in a worker thread).

Why a mark on the thread and not a parameter: the lock sits several calls below the file
that was read or written (a PCR file → ``VTpm.transmit`` → the TPM's lock), and only the
event loop knows that it may not wait.
"""

from __future__ import annotations

import threading

_marks = threading.local()


class NoWait:
    """``with NO_WAIT:`` marks the current thread for the duration (not reentrant)."""

    def __enter__(self) -> None:
        _marks.no_wait = True

    def __exit__(self, *exc: object) -> None:
        _marks.no_wait = False


NO_WAIT = NoWait()


def waiting_forbidden() -> bool:
    """Whether the current thread is inside ``with NO_WAIT:``."""
    return getattr(_marks, "no_wait", False)
