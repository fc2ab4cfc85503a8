"""SEV firmware status codes and the typed error that carries one.

Owns: :class:`Status` (the AMD SEV API status codes, pub. 55766 / Linux ``psp-sev.h``) and
:class:`SevError`.  Must not know: which command failed how (the callers say so in the
message), files, FUSE, trio.

A firmware command that fails returns a status and changes nothing; here it raises
:class:`SevError` before any state is touched.  The errno is what the Linux PSP driver returns
to user space for a firmware error (EIO, with the status in the ioctl's ``error`` field).
"""

from __future__ import annotations

import errno
from enum import IntEnum

from vdev.errors import DeviceError


class Status(IntEnum):
    """AMD SEV API status codes."""

    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_CONFIG = 0x03
    INVALID_LENGTH = 0x04
    ALREADY_OWNED = 0x05
    INVALID_CERTIFICATE = 0x06
    POLICY_FAILURE = 0x07
    INACTIVE = 0x08
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    ASID_OWNED = 0x0C
    INVALID_ASID = 0x0D
    WBINVD_REQUIRED = 0x0E
    DFFLUSH_REQUIRED = 0x0F
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    ACTIVE = 0x12
    HWERROR_PLATFORM = 0x13
    HWERROR_UNSAFE = 0x14
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17
    SECURE_DATA_INVALID = 0x18


class SevError(DeviceError):
    """A SEV command failed with ``status``; ``message`` names the command, value and rule.

    ``needed`` is set for INVALID_LENGTH replies that tell the caller the length it needs
    (GET_ID2, PDH_CERT_EXPORT with a short buffer).
    """

    def __init__(self, status: Status, message: str, *, needed: int | None = None) -> None:
        super().__init__(errno.EIO, f"{message} (status {status.name} {int(status):#04x})")
        self.status = status
        self.needed = needed

    def __repr__(self) -> str:
        return f"SevError({self.status.name}, {self.message!r})"
