"""Typed device errors shared by every emulator.

A refused operation raises :class:`DeviceError` *before* it changes any state, so callers can
rely on "error means nothing happened".  The errno is what the kernel's ``store()`` would
return; the message is the kernel-style log line a human needs to understand the refusal.
"""

from __future__ import annotations

import errno as _errno


class WouldWait(Exception):
    """A call made where waiting is forbidden (an event loop serving inline) found its device
    serving another caller.  Nothing happened: make the same call again where it may wait."""


class DeviceError(Exception):
    """A device refused an operation with a kernel errno and an explanation."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message

    @property
    def errno_name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))

    def __repr__(self) -> str:
        return f"DeviceError({self.errno_name}, {self.message!r})"
