"""Typed device errors shared by every emulator.

A refused operation raises :class:`DeviceError` *before* it changes any state, so callers can
rely on "error means nothing happened".  The errno is what the kernel's ``store()`` would
return; the message is the kernel-style log line a human needs to understand the refusal.
"""

from __future__ import annotations

import errno as _errno


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
