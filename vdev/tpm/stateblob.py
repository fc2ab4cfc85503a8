"""A vTPM's state as one blob: what ``apfs/tpm/<name>/stateblob`` exports and imports, and
what ``--state DIR`` keeps in ``DIR/tpm-<name>``.

Owns the format; must not know files or FUSE (callers name where the bytes came from).

Format, version 1: a :mod:`vdev.sealed` envelope (header line with magic, version, body length
and the body's SHA-256), whose body is the two libtpms blobs, each with its length::

    apfs-tpm-state 1 <length> <sha256>\\n
    u32 permanent length (big-endian), permanent blob (libtpms ``permall``)
    u32 volatile length, volatile blob (libtpms ``volatilestate``; length 0 when none)

The libtpms blobs carry their own version and integrity checks, which libtpms applies when
it is given them (TPMLIB_SetState); the envelope catches truncation and damage first, with
the reason.
"""

from __future__ import annotations

import struct

from vdev.sealed import SealError, seal, unseal
from vdev.tpm.engine import TpmState

MAGIC = b"apfs-tpm-state"
VERSION = 1
KIND = "an apfs TPM state blob"
MAX_SIZE = 512 << 10
"""The largest blob imported (swtpm's SET_STATEBLOB limit); libtpms's are ~100 kB at most."""
_LENGTH = struct.Struct(">I")


def encode(state: TpmState) -> bytes:
    body = (_LENGTH.pack(len(state.permanent)) + state.permanent
            + _LENGTH.pack(len(state.volatile)) + state.volatile)
    return seal(MAGIC, VERSION, body)


def decode(where: str, raw: bytes) -> TpmState:
    """The state in ``raw``; :class:`~vdev.sealed.SealError` naming ``where`` and what is
    wrong."""
    body = unseal(where, raw, MAGIC, VERSION, KIND)
    blobs = []
    offset = 0
    for name in ("permanent", "volatile"):
        if len(body) < offset + _LENGTH.size:
            raise SealError(f"{where}: damaged: no {name} blob length")
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if len(body) < offset + length:
            raise SealError(f"{where}: damaged: the {name} blob's {length} bytes overrun "
                            "the body")
        blobs.append(body[offset:offset + length])
        offset += length
    if offset != len(body):
        raise SealError(f"{where}: damaged: {len(body) - offset} bytes after the blobs")
    if not blobs[0]:
        raise SealError(f"{where}: damaged: the permanent blob is empty")
    return TpmState(blobs[0], blobs[1])
