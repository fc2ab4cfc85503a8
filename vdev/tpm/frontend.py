"""What the socket protocols of a vTPM (swtpm's, the Microsoft simulator's) share.

Owns: :class:`Reply` (what a protocol core answers to the bytes it was fed: bytes to send,
and whether to close the connection and why), :class:`Malformed` (a frame that cannot be
parsed: the connection is closed with that reason), :func:`run_command` (one TPM command of
a client through :meth:`vdev.tpm.vtpm.VTpm.transmit`, with a powered-off TPM or a locality
out of range answered as swtpm answers them) and the swtpm/mssim size limits.

Must not know: sockets, threads, trio.  A protocol core is fed bytes (and, for swtpm's UNIX
control channel, file descriptors) and returns :class:`Reply` values; the servers in
``apfs.tpm.sockets`` only move bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vdev.tpm import commands
from vdev.tpm.engine import MAX_LOCALITY
from vdev.tpm.errors import TpmStateError
from vdev.tpm.virtio import TPM_BUFSIZE
from vdev.tpm.vtpm import VTpm

TPM_RC_FAILURE = 0x101
MAX_COMMAND = TPM_BUFSIZE
"""The largest TPM command a front end accepts: every command goes through the virtio
device, whose driver buffer is 4096 bytes (swtpm's default buffer size is the same)."""
MAX_BLOB = 512 * 1024
"""The largest state blob or measured-data length accepted in one request (a libtpms
permanent state is ~10 KiB; a larger length is taken as a garbage frame)."""

U32 = struct.Struct(">I")


class Malformed(Exception):
    """A frame that cannot be parsed; ``reason`` names the value and the rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Reply:
    """Bytes to send back, then (if ``close`` is set) close the connection for that reason.
    ``close`` is logged by the server unless ``quiet`` (a client's orderly goodbye); ``log``
    is a refusal or an ignored request in words, for the server's log."""

    data: bytes = b""
    close: str | None = None
    quiet: bool = False
    log: str | None = None


def error_response(rc: int) -> bytes:
    """A TPM 2.0 error response as libtpms and swtpm write it: ``80 01 00 00 00 0a <rc>``."""
    return struct.pack(">HII", commands.TPM_ST_NO_SESSIONS, commands.HEADER_SIZE, rc)


FATAL_RESPONSE = error_response(TPM_RC_FAILURE)
"""What swtpm answers every command while the TPM is not initialised (before CMD_INIT, after
CMD_STOP), and the simulator while powered off."""


def run_command(tpm: VTpm, command: bytes, locality: int) -> bytes:
    """One client command: the TPM's response, or the error response a TPM without power or
    a locality outside 0..4 gets from swtpm (TPM_RC_FAILURE, TPM_RC_LOCALITY).  A virtio
    refusal (:class:`~vdev.tpm.virtio.VirtioError`) propagates: the server closes that
    connection with its message."""
    if locality > MAX_LOCALITY:
        return error_response(commands.TPM_RC_LOCALITY)
    try:
        return tpm.transmit(command, locality)
    except TpmStateError:  # the engine refuses commands while powered off
        return FATAL_RESPONSE
