"""The SEV kernel-hashes table QEMU builds for a measured direct kernel boot.

Owns: the 176-byte table (``kernel-hashes=on``): header GUID, three entries (cmdline, initrd,
kernel) each ``GUID | u16 50 | sha256``, zero padding to a multiple of 16 (QEMU pads it for the
firmware's 16-byte LAUNCH_UPDATE_DATA rule; the header length field says 168).  Must not know:
where it goes in guest memory (:mod:`vdev.sev.ovmf`), measurements.

Hashes: cmdline = sha256(cmdline + NUL) (no ``-append`` = sha256(NUL)); initrd = sha256 of the
file (none = sha256 of nothing); kernel = sha256 of the bzImage exactly as given.
"""

from __future__ import annotations

import struct
import uuid

from vdev.sev.crypto import BLOCK, sha256

TABLE_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
CMDLINE_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
INITRD_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
KERNEL_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b")
ENTRY_LEN = 16 + 2 + 32
TABLE_LEN = 16 + 2 + 3 * ENTRY_LEN  # 168, the header's length field
PADDED_LEN = -(-TABLE_LEN // BLOCK) * BLOCK  # 176


def _entry(guid: uuid.UUID, digest: bytes) -> bytes:
    return guid.bytes_le + struct.pack("<H", ENTRY_LEN) + digest


def cmdline_bytes(cmdline: str | bytes | None) -> bytes:
    """The command line as QEMU hashes it: its bytes and the terminating NUL."""
    if isinstance(cmdline, str):
        cmdline = cmdline.encode()
    return (cmdline or b"") + b"\x00"


def kernel_hashes_table(kernel: bytes, initrd: bytes | None, cmdline: str | bytes | None) -> bytes:
    """The padded table (176 bytes) for these boot files."""
    table = (
        TABLE_GUID.bytes_le
        + struct.pack("<H", TABLE_LEN)
        + _entry(CMDLINE_GUID, sha256(cmdline_bytes(cmdline)))
        + _entry(INITRD_GUID, sha256(initrd or b""))
        + _entry(KERNEL_GUID, sha256(kernel))
    )
    return table.ljust(PADDED_LEN, b"\x00")
