"""Typed errors of the vTPM engine.

They are :class:`vdev.errors.DeviceError`\\ s, so a later control node can answer with the
errno and log the message as every other apfs node does.  A TPM command that fails *inside*
the TPM is no error here: its response carries the TPM response code, as on real hardware.
"""

from __future__ import annotations

import errno

from vdev.errors import DeviceError


class TpmError(DeviceError):
    """The engine refused or failed an operation; ``message`` says which and why."""


class TpmUnavailable(TpmError):
    """libtpms0 is not installed (or cannot be loaded)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENODEV, message)


class TpmInUse(TpmError):
    """libtpms keeps one TPM per process, and this process already has one."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EBUSY, message)


class TpmStateError(TpmError):
    """The operation is not allowed in the TPM's current power state."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class TpmLibraryError(TpmError):
    """A libtpms function returned a ``TPM_RESULT`` other than success."""

    def __init__(self, function: str, rc: int, reason: str = "") -> None:
        self.reason = reason or f"returned TPM_RESULT {rc:#x}"
        super().__init__(errno.EIO, f"{function}: {self.reason}")
        self.function = function
        self.rc = rc
