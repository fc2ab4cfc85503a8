"""CMD_SET_STATEBLOB / CMD_GET_STATEBLOB requests and the results swtpm 0.7.1 answers them
with, shared by the unit test of vdev.tpm.swtpm and the differential test that runs them
against Debian's real swtpm and an apfs mount alike (tests/integration/test_tpm_stateblob.py).

Each SET case is built from blobs its TPM gave (GET_STATEBLOB while running), so the same
case runs on either TPM.  Run in order while the TPM is stopped: the last case sets the TPM's
own permanent state back.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from vdev.tpm import swtpm as sw
from vdev.tpm import swtpm_blob as blob

REQUEST = struct.Struct(">III")
"""State flags, blob type, then the offset (``ptm_getstate``) or the data's length
(``ptm_setstate``)."""
TAG_HMAC = 3
"""A swtpm TLV tag that is neither TAG_MIGRATION_DATA nor TAG_DATA."""


class Blobs(NamedTuple):
    """A TPM's own blobs as GET_STATEBLOB gave them: wrapped permanent and volatile."""

    permanent: bytes
    volatile: bytes

    @property
    def body(self) -> bytes:
        """The permanent blob after its header (the TLVs)."""
        return self.permanent[blob.HEADER.size:]

    @property
    def plain(self) -> bytes:
        """libtpms's permanent blob, as swtpm stores it in ``tpm2-00.permall``."""
        plain = blob.unwrap(self.permanent)
        assert plain is not None
        return plain


def header(rest: bytes = b"", *, version: int = 2, min_version: int = 1, hdrsize: int = 10,
           flags: int = blob.BLOB_FLAG_MIGRATION_DATA) -> bytes:
    """A blob header with a right totlen, then ``rest``."""
    return blob.HEADER.pack(version, min_version, hdrsize, flags,
                            blob.HEADER.size + len(rest)) + rest


def tlv(tag: int, value: bytes) -> bytes:
    return blob.TLV.pack(tag, len(value)) + value


class SetCase(NamedTuple):
    name: str
    flags: int
    blob_type: int
    data: Callable[[Blobs], bytes]
    result: int | None
    """swtpm's result; None: libtpms's refusal code, compared between TPMs (non-zero)."""

    def request(self, blobs: Blobs) -> bytes:
        data = self.data(blobs)
        return (struct.pack(">I", sw.CMD_SET_STATEBLOB)
                + REQUEST.pack(self.flags, self.blob_type, len(data)) + data)


PERMANENT, VOLATILE, SAVESTATE = sw.BLOB_PERMANENT, sw.BLOB_VOLATILE, sw.BLOB_SAVESTATE

SET_CASES = [
    SetCase("wrapped permanent", 0, PERMANENT, lambda b: b.permanent, sw.TPM_SUCCESS),
    SetCase("wrapped volatile", 0, VOLATILE, lambda b: b.volatile, sw.TPM_SUCCESS),
    SetCase("request flag DECRYPTED is ignored", 1, PERMANENT, lambda b: b.permanent,
            sw.TPM_SUCCESS),
    SetCase("empty savestate: the state stays", 0, SAVESTATE, lambda b: b"", sw.TPM_SUCCESS),
    SetCase("empty permanent: the state stays", 0, PERMANENT, lambda b: b"", sw.TPM_SUCCESS),
    SetCase("header alone: the state stays", 0, PERMANENT, lambda b: header(),
            sw.TPM_SUCCESS),
    SetCase("version-1 header around the plain blob", 0, PERMANENT,
            lambda b: header(b.plain, version=1, flags=0), sw.TPM_SUCCESS),
    SetCase("header version 3 (min 1): nothing read, the state stays", 0, PERMANENT,
            lambda b: header(b.body, version=3), sw.TPM_SUCCESS),
    SetCase("a TLV of another tag before MIGRATION_DATA is skipped", 0, PERMANENT,
            lambda b: header(tlv(TAG_HMAC, b"x") + b.body), sw.TPM_SUCCESS),
    SetCase("no MIGRATION_DATA TLV", 0, PERMANENT, lambda b: header(tlv(blob.TAG_DATA, b.plain)),
            blob.TPM_FAIL),
    SetCase("no DATA TLV inside MIGRATION_DATA", 0, PERMANENT,
            lambda b: header(tlv(blob.TAG_MIGRATION_DATA, tlv(TAG_HMAC, b.plain))),
            blob.TPM_FAIL),
    SetCase("a TLV longer than the blob", 0, PERMANENT,
            lambda b: header(blob.TLV.pack(blob.TAG_MIGRATION_DATA, 1 << 20)), blob.TPM_FAIL),
    SetCase("min_version 3", 0, PERMANENT, lambda b: header(b.body, min_version=3),
            blob.TPM_BAD_VERSION),
    SetCase("hdrsize 11", 0, PERMANENT, lambda b: header(b.body, hdrsize=11),
            blob.TPM_BAD_DATASIZE),
    SetCase("5 bytes: no header", 0, PERMANENT, lambda b: b.permanent[:5],
            blob.TPM_BAD_PARAMETER),
    SetCase("totlen != length", 0, PERMANENT, lambda b: b.permanent + b"\0",
            blob.TPM_BAD_PARAMETER),
    SetCase("request flag ENCRYPTED without a state key", sw.STATE_FLAG_ENCRYPTED, PERMANENT,
            lambda b: b.permanent, blob.TPM_KEYNOTFOUND),
    SetCase("header flag ENCRYPTED without a state key", 0, PERMANENT,
            lambda b: header(b.body, flags=blob.BLOB_FLAG_MIGRATION_DATA
                             | blob.BLOB_FLAG_ENCRYPTED), blob.TPM_KEYNOTFOUND),
    SetCase("header flag MIGRATION_ENCRYPTED without a migration key", 0, PERMANENT,
            lambda b: header(b.body, flags=blob.BLOB_FLAG_MIGRATION_DATA
                             | blob.BLOB_FLAG_MIGRATION_ENCRYPTED), blob.TPM_KEYNOTFOUND),
    SetCase("blob type 0", 0, 0, lambda b: b.permanent, blob.TPM_BAD_PARAMETER),
    SetCase("blob type 4", 0, 4, lambda b: b.permanent, blob.TPM_BAD_PARAMETER),
    SetCase("a permanent blob as savestate", 0, SAVESTATE, lambda b: b.permanent,
            sw.TPM_BAD_TYPE),
    SetCase("garbage in a valid wrapping", 0, PERMANENT, lambda b: blob.wrap(bytes(100)),
            None),
    SetCase("wrapped permanent again", 0, PERMANENT, lambda b: b.permanent, sw.TPM_SUCCESS),
]

GET_CASES = [
    # (blob type, offset, the reply's first 16 bytes or None for a blob of that type)
    (PERMANENT, 0, None),
    (VOLATILE, 0, None),
    (PERMANENT, 1 << 20, bytes(16)),  # offset beyond the blob: result 0, no data
    (SAVESTATE, 0, struct.pack(">IIII", sw.TPM_RETRY, 0, 0, 0)),
    (0, 0, struct.pack(">IIII", sw.TPM_RETRY, 0, 0, 0)),
    (4, 0, struct.pack(">IIII", sw.TPM_RETRY, 0, 0, 0)),
]


def get_request(blob_type: int, offset: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">I", sw.CMD_GET_STATEBLOB) + REQUEST.pack(flags, blob_type, offset)
