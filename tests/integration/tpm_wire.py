"""TPM 2.0 marshalling for the differential test: build any command from its parts, and
read the fields of a response a comparison needs.  Big-endian, TPM 2.0 Part 2 structures.

Not the emulator's own builders (:mod:`vdev.tpm.commands` covers what apfs sends itself);
these cover what a test sends on a client's behalf, including deliberately malformed bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ST_NO_SESSIONS = 0x8001
ST_SESSIONS = 0x8002
RS_PW = 0x40000009
RH_OWNER = 0x40000001
RH_NULL = 0x40000007
RH_LOCKOUT = 0x4000000A
RH_ENDORSEMENT = 0x4000000B
RH_PLATFORM = 0x4000000C

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_HMAC = 0x0005
ALG_AES = 0x0006
ALG_KEYEDHASH = 0x0008
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_ECC = 0x0023
ALG_SYMCIPHER = 0x0025
ALG_CFB = 0x0043
DIGEST_SIZES = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64}
BANKS = (ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512)

CC = {
    "NV_UndefineSpace": 0x122, "EvictControl": 0x120, "Clear": 0x126, "ClearControl": 0x127,
    "HierarchyChangeAuth": 0x129, "NV_DefineSpace": 0x12A, "CreatePrimary": 0x131,
    "NV_Increment": 0x134, "NV_SetBits": 0x135, "NV_Extend": 0x136, "NV_Write": 0x137,
    "DictionaryAttackLockReset": 0x139, "PCR_Event": 0x13C, "PCR_Reset": 0x13D,
    "SequenceComplete": 0x13E, "IncrementalSelfTest": 0x142, "SelfTest": 0x143,
    "Startup": 0x144, "Shutdown": 0x145, "StirRandom": 0x146, "NV_Read": 0x14E,
    "SequenceUpdate": 0x15C, "ContextSave": 0x162, "FlushContext": 0x165,
    "NV_ReadPublic": 0x169, "PolicyAuthValue": 0x16B, "PolicyCommandCode": 0x16C,
    "ReadPublic": 0x173, "StartAuthSession": 0x176, "ECC_Parameters": 0x178,
    "GetCapability": 0x17A, "GetRandom": 0x17B, "GetTestResult": 0x17C, "Hash": 0x17D,
    "PCR_Read": 0x17E, "PolicyPCR": 0x17F, "PolicyRestart": 0x180, "ReadClock": 0x181,
    "PCR_Extend": 0x182, "HashSequenceStart": 0x186, "PolicyGetDigest": 0x189,
    "TestParms": 0x18A, "PolicyPassword": 0x18C,
}


def u8(value: int) -> bytes:
    return struct.pack(">B", value)


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def tpm2b(data: bytes) -> bytes:
    return u16(len(data)) + data


def password(secret: bytes = b"", handle: int = RS_PW, attributes: int = 0) -> bytes:
    """An authorization area of one password session (TPMS_AUTH_COMMAND, size first)."""
    auth = u32(handle) + tpm2b(b"") + u8(attributes) + tpm2b(secret)
    return u32(len(auth)) + auth


def command(code: int | str, handles: tuple[int, ...] = (), params: bytes = b"",
            auth: bytes | None = None, tag: int | None = None,
            size_delta: int = 0) -> bytes:
    """A command: header, handles, the authorization area if ``auth`` (then tag 0x8002),
    parameters.  ``tag`` and ``size_delta`` (added to the header's size field) make
    malformed ones."""
    code = CC[code] if isinstance(code, str) else code
    body = b"".join(u32(h) for h in handles) + (auth or b"") + params
    if tag is None:
        tag = ST_SESSIONS if auth is not None else ST_NO_SESSIONS
    return struct.pack(">HII", tag, 10 + len(body) + size_delta, code) + body


def pcr_selection(banks: dict[int, list[int]]) -> bytes:
    """TPML_PCR_SELECTION: ``{alg: [pcr, ...]}``, 3-byte bitmaps."""
    out = u32(len(banks))
    for alg, pcrs in banks.items():
        bits = bytearray(3)
        for pcr in pcrs:
            bits[pcr // 8] |= 1 << (pcr % 8)
        out += u16(alg) + u8(3) + bytes(bits)
    return out


def digest_values(values: dict[int, bytes]) -> bytes:
    """TPML_DIGEST_VALUES."""
    return u32(len(values)) + b"".join(u16(alg) + d for alg, d in values.items())


def rsa_template(bits: int = 2048, attributes: int = 0x00030072) -> bytes:
    """TPMT_PUBLIC of an RSA storage key (tpm2_createprimary's default)."""
    return (u16(ALG_RSA) + u16(ALG_SHA256) + u32(attributes) + tpm2b(b"")
            + u16(ALG_AES) + u16(128) + u16(ALG_CFB) + u16(ALG_NULL) + u16(bits) + u32(0)
            + tpm2b(b""))


def ecc_template(curve: int = 0x0003, attributes: int = 0x00030072) -> bytes:
    """TPMT_PUBLIC of an ECC storage key on ``curve`` (NIST P-256 by default)."""
    return (u16(ALG_ECC) + u16(ALG_SHA256) + u32(attributes) + tpm2b(b"")
            + u16(ALG_AES) + u16(128) + u16(ALG_CFB) + u16(ALG_NULL) + u16(curve)
            + u16(ALG_NULL) + tpm2b(b"") + tpm2b(b""))


def create_primary(hierarchy: int, template: bytes, secret: bytes = b"",
                   user_auth: bytes = b"") -> bytes:
    sensitive = tpm2b(user_auth) + tpm2b(b"")
    params = tpm2b(sensitive) + tpm2b(template) + tpm2b(b"") + u32(0)
    return command("CreatePrimary", (hierarchy,), params, password(secret))


def nv_public(index: int, attributes: int, size: int, name_alg: int = ALG_SHA256) -> bytes:
    return tpm2b(u32(index) + u16(name_alg) + u32(attributes) + tpm2b(b"") + u16(size))


class Reader:
    """A cursor over a response's bytes: the fields come out in wire order."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError(f"response of {len(self.data)} bytes ends before offset "
                             f"{self.offset + size}")
        out = self.data[self.offset:self.offset + size]
        self.offset += size
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.offset)


@dataclass(frozen=True)
class Header:
    tag: int
    size: int
    rc: int


def header(response: bytes) -> Header:
    if len(response) < 10:
        raise ValueError(f"response of {len(response)} bytes is shorter than a header")
    return Header(*struct.unpack_from(">HII", response))


def parameters(response: bytes, handles: int = 0) -> Reader:
    """A reader at the response's parameters (after ``handles`` handles and, with
    sessions, the parameterSize field)."""
    reader = Reader(response, 10 + 4 * handles)
    if header(response).tag == ST_SESSIONS:
        reader.u32()
    return reader
