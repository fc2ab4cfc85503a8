"""swtpm's state blob format: what CMD_GET_STATEBLOB sends and CMD_SET_STATEBLOB takes.

Owns: :func:`wrap` (``SWTPM_NVRAM_GetStateBlob`` of swtpm 0.7.1 without keys: a blob
header, then ``TLV(TAG_MIGRATION_DATA, TLV(TAG_DATA, libtpms blob))``) and :func:`unwrap`
(``SWTPM_NVRAM_SetStateBlob``: the same checks in the same order, each refusal a
:class:`BlobRefused` with swtpm's TPM_RESULT), so blobs move between apfs and swtpm (QEMU's
migration, or any tool that carries them) in either direction.

Must not know: the TPM, the control channel's framing, sockets.

Layout (``src/swtpm/swtpm_nvstore.c``, ``tlv.h``), big endian: ``blobheader {u8 version,
u8 min_version, u16 hdrsize, u16 flags, u32 totlen}`` (totlen counts the header), then the
header's version decides: version 1 is the libtpms blob as it is; version 2 is a sequence of
``{u16 tag, u32 length, value}`` in which swtpm looks for its tag, skipping others.  This TPM
has no state or migration key (no ``--key``/``--migration-key``), so an encrypted blob is
refused as swtpm without keys refuses it.
"""

from __future__ import annotations

import struct

from vdev.tpm.libtpms import TPM_FAIL

# -- TPM_RESULTs of swtpm's checks (TPM 1.2 codes, libtpms's tpm_error.h; TPM_FAIL is the
# binding's) -------------------------------------------------------------------------------
TPM_BAD_PARAMETER = 0x03
TPM_KEYNOTFOUND = 0x0D
TPM_BAD_DATASIZE = 0x2B
TPM_BAD_VERSION = 0x2E

HEADER = struct.Struct(">BBHHI")
"""``blobheader``: version, min_version, hdrsize, flags, totlen."""
BLOB_HEADER_VERSION = 2
"""The newest header version swtpm 0.7.1 reads and the one it writes."""
MIN_VERSION = 1
"""The min_version swtpm writes: a version-1 reader can take the header."""
BLOB_FLAG_ENCRYPTED = 0x01
BLOB_FLAG_MIGRATION_ENCRYPTED = 0x02
BLOB_FLAG_MIGRATION_DATA = 0x04

TLV = struct.Struct(">HI")
"""``tlv_header``: tag, length of the value that follows."""
TAG_DATA = 1
TAG_MIGRATION_DATA = 4


class BlobRefused(Exception):
    """swtpm would refuse this blob: ``result`` is the TPM_RESULT CMD_SET_STATEBLOB answers,
    ``message`` names the rule (swtpm's log line)."""

    def __init__(self, result: int, message: str) -> None:
        super().__init__(message)
        self.result = result
        self.message = message


def _tlv(tag: int, value: bytes) -> bytes:
    return TLV.pack(tag, len(value)) + value


def wrap(plain: bytes) -> bytes:
    """The blob GET_STATEBLOB sends for libtpms's ``plain`` blob (no keys: flags
    BLOB_FLAG_MIGRATION_DATA only)."""
    body = _tlv(TAG_MIGRATION_DATA, _tlv(TAG_DATA, plain))
    return HEADER.pack(BLOB_HEADER_VERSION, MIN_VERSION, HEADER.size,
                       BLOB_FLAG_MIGRATION_DATA, HEADER.size + len(body)) + body


def unwrap(blob: bytes, encrypted: bool = False) -> bytes | None:
    """libtpms's blob inside ``blob``, or None where swtpm calls ``TPMLIB_SetState(type,
    NULL, 0)`` (no data at all, a header alone, a header version it does not know): the
    TPM keeps the state it has.  ``encrypted``: the request's STATE_FLAG_ENCRYPTED.
    Raises :class:`BlobRefused` as SWTPM_NVRAM_SetStateBlob refuses."""
    if not blob:
        return None
    version, flags, data = _check_header(blob)
    if not data:
        return None
    if flags & BLOB_FLAG_MIGRATION_ENCRYPTED:
        raise BlobRefused(TPM_KEYNOTFOUND, "missing migration key to decrypt the blob "
                                           "(header flag MIGRATION_ENCRYPTED)")
    migration = _plain_data(data, TAG_MIGRATION_DATA, version)
    if encrypted or flags & BLOB_FLAG_ENCRYPTED:
        raise BlobRefused(TPM_KEYNOTFOUND, "missing state key to decrypt the blob (flag "
                                           "ENCRYPTED)")
    if migration is None:
        return None
    return _plain_data(migration, TAG_DATA, version)


def _check_header(blob: bytes) -> tuple[int, int, bytes]:
    """SWTPM_NVRAM_CheckHeader: (version, flags, what follows the header)."""
    # swtpm compares with sizeof(bh), bh a pointer (8 bytes), then reads totlen past the end
    # of an 8- or 9-byte blob; both refusals are TPM_BAD_PARAMETER.
    if len(blob) < HEADER.size:
        raise BlobRefused(TPM_BAD_PARAMETER, f"not enough bytes for header: {len(blob)}")
    version, min_version, hdrsize, flags, totlen = HEADER.unpack_from(blob)
    if totlen != len(blob):
        raise BlobRefused(TPM_BAD_PARAMETER, f"broken header: totlen {totlen} != "
                                             f"{len(blob)}")
    if min_version > BLOB_HEADER_VERSION:
        raise BlobRefused(TPM_BAD_VERSION, f"minimum required version for the blob is "
                                           f"{min_version}, swtpm supports "
                                           f"{BLOB_HEADER_VERSION}")
    if hdrsize != HEADER.size:
        raise BlobRefused(TPM_BAD_DATASIZE, f"bad header size: {hdrsize} != {HEADER.size}")
    return version, flags, blob[hdrsize:]


def _plain_data(data: bytes, tag: int, version: int) -> bytes | None:
    """SWTPM_NVRAM_GetPlainData: version 1 is ``data`` itself, version 2 the value of the
    first TLV with ``tag``; another version yields nothing (None), as swtpm's switch
    without a default."""
    if version == 1:
        return data
    if version != BLOB_HEADER_VERSION:
        return None
    value = find_tag(data, tag)
    if value is None:
        raise BlobRefused(TPM_FAIL, f"could not find plain data (TLV tag {tag}) in the "
                                    "byte stream")
    return value


def find_tag(data: bytes, tag: int) -> bytes | None:
    """tlv_data_find_tag: the value of the first TLV with ``tag``, or None if a TLV
    overruns ``data`` before it."""
    offset = 0
    while offset + TLV.size <= len(data):
        found, length = TLV.unpack_from(data, offset)
        offset += TLV.size
        if offset + length > len(data):
            return None
        if found == tag:
            return data[offset:offset + length]
        offset += length
    return None
