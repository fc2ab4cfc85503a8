"""TPM 2.0 wire format: the header, and the few commands the emulator itself sends.

Front ends pass guests' commands through untouched; these builders are for what apfs sends on
its own (PCR reads behind ``pcr-<bank>/N``, Startup after a power-on, benchmarks, tests).
All integers are big-endian as in TPM 2.0 Part 1.
"""

from __future__ import annotations

import struct

HEADER_SIZE = 10
TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
TPM_RS_PW = 0x40000009

TPM_CC_STARTUP = 0x144
TPM_CC_SHUTDOWN = 0x145
TPM_CC_GET_RANDOM = 0x17B
TPM_CC_PCR_READ = 0x17E
TPM_CC_PCR_EXTEND = 0x182
TPM_CC_GET_CAPABILITY = 0x17A
TPM_CC_CREATE_PRIMARY = 0x131
TPM_CC_FLUSH_CONTEXT = 0x165
TPM_CC_PCR_ALLOCATE = 0x12B
TPM_CC_PCR_EVENT = 0x13C
TPM_CC_PCR_RESET = 0x13D
TPM_CC_STIR_RANDOM = 0x146
TPM_CC_CONTEXT_LOAD = 0x161
TPM_CC_CONTEXT_SAVE = 0x162
TPM_CC_READ_PUBLIC = 0x173
TPM_CC_HASH = 0x17D
TPM_CC_READ_CLOCK = 0x181

QUICK_COMMANDS = frozenset({
    TPM_CC_GET_RANDOM, TPM_CC_STIR_RANDOM, TPM_CC_PCR_READ, TPM_CC_PCR_EXTEND,
    TPM_CC_PCR_EVENT, TPM_CC_PCR_RESET, TPM_CC_GET_CAPABILITY, TPM_CC_READ_PUBLIC,
    TPM_CC_READ_CLOCK, TPM_CC_HASH, TPM_CC_CONTEXT_SAVE, TPM_CC_CONTEXT_LOAD,
    TPM_CC_FLUSH_CONTEXT,
})
"""Commands that take microseconds and leave the permanent state alone: no key generation
or prime search, no signing, no NV writes (PCRs, the clock and contexts are volatile state).
A /dev write of one may run on the FUSE request loop while its TPM is idle (cheaper than a
thread hand-off).  Measured on libtpms 0.9 in process: 4-43 µs each, none stores ``permall``.
Left out on purpose: Startup and Shutdown (they store the orderly state in NV: a save, and
with ``--state`` an fsync), SelfTest (a full test runs ~50 ms), anything with a key,
a signature, an HMAC/policy session start (RSA secret decryption), or an NV index."""
TPM_RH_OWNER = 0x40000001
TPM_RH_PLATFORM = 0x4000000C

TPM_SU_CLEAR = 0
TPM_SU_STATE = 1

TPM_RC_SUCCESS = 0
TPM_RC_INITIALIZE = 0x100
TPM_RC_COMMAND_SIZE = 0x142
TPM_RC_COMMAND_CODE = 0x143
TPM_RC_LOCALITY = 0x907
TPM_RC_CANCELED = 0x909

TPM_CAP_PCRS = 5
TPM_CAP_TPM_PROPERTIES = 6
TPM_PT_FIXED = 0x100

# TPM_ALG_ID of the PCR banks a TPM 2.0 may allocate, with their digest sizes.
HASH_ALGS: dict[str, tuple[int, int]] = {
    "sha1": (0x0004, 20),
    "sha256": (0x000B, 32),
    "sha384": (0x000C, 48),
    "sha512": (0x000D, 64),
}
PCR_COUNT = 24
PCR_SELECT_SIZE = 3


def command(code: int, body: bytes = b"", tag: int = TPM_ST_NO_SESSIONS) -> bytes:
    """A complete command: header (tag, size, code) then ``body``."""
    return struct.pack(">HII", tag, HEADER_SIZE + len(body), code) + body


def is_quick(command: bytes) -> bool:
    """Whether ``command``'s code is one of :data:`QUICK_COMMANDS`."""
    return len(command) >= HEADER_SIZE and \
        struct.unpack_from(">I", command, 6)[0] in QUICK_COMMANDS


def response_code(response: bytes) -> int:
    """The response's return code; ``ValueError`` if shorter than a header."""
    if len(response) < HEADER_SIZE:
        raise ValueError(f"TPM response of {len(response)} bytes is shorter than its header")
    return struct.unpack_from(">I", response, 6)[0]


def response_size(response: bytes) -> int:
    """The size field of a response header (what a well-formed response's length equals)."""
    if len(response) < HEADER_SIZE:
        raise ValueError(f"TPM response of {len(response)} bytes is shorter than its header")
    return struct.unpack_from(">I", response, 2)[0]


def startup(su: int = TPM_SU_CLEAR) -> bytes:
    return command(TPM_CC_STARTUP, struct.pack(">H", su))


def shutdown(su: int = TPM_SU_CLEAR) -> bytes:
    return command(TPM_CC_SHUTDOWN, struct.pack(">H", su))


def get_random(count: int) -> bytes:
    return command(TPM_CC_GET_RANDOM, struct.pack(">H", count))


def get_capability(capability: int, prop: int, count: int) -> bytes:
    return command(TPM_CC_GET_CAPABILITY, struct.pack(">III", capability, prop, count))


def _bank(bank: str) -> tuple[int, int]:
    try:
        return HASH_ALGS[bank]
    except KeyError:
        raise ValueError(f"unknown PCR bank {bank!r} (known: {', '.join(HASH_ALGS)})") from None


def pcr_select(bank: str, pcrs: list[int]) -> bytes:
    """A TPML_PCR_SELECTION of one bank."""
    bits = bytearray(PCR_SELECT_SIZE)
    for pcr in pcrs:
        if not 0 <= pcr < PCR_COUNT:
            raise ValueError(f"PCR index {pcr} is outside 0..{PCR_COUNT - 1}")
        bits[pcr // 8] |= 1 << (pcr % 8)
    return struct.pack(">IHB", 1, _bank(bank)[0], PCR_SELECT_SIZE) + bytes(bits)


def pcr_allocate(banks: list[str]) -> bytes:
    """PCR_Allocate (platform hierarchy, empty password): all 24 PCRs in each of ``banks``,
    none in the others.  It takes effect at the next _TPM_Init."""
    for bank in banks:
        _bank(bank)
    selection = bytearray(struct.pack(">I", len(HASH_ALGS)))
    for bank, (alg, _size) in HASH_ALGS.items():
        bits = b"\xff\xff\xff" if bank in banks else bytes(PCR_SELECT_SIZE)
        selection += struct.pack(">HB", alg, PCR_SELECT_SIZE) + bits
    body = struct.pack(">I", TPM_RH_PLATFORM) + _password_auth() + bytes(selection)
    return command(TPM_CC_PCR_ALLOCATE, body, tag=TPM_ST_SESSIONS)


def pcr_read(bank: str, pcrs: list[int]) -> bytes:
    return command(TPM_CC_PCR_READ, pcr_select(bank, pcrs))


def parse_pcr_read(response: bytes) -> list[bytes]:
    """The digests of a successful PCR_Read response, in PCR order (at most 8 per call)."""
    rc = response_code(response)
    if rc != TPM_RC_SUCCESS:
        raise ValueError(f"PCR_Read failed with TPM response code {rc:#x}")
    offset = HEADER_SIZE + 4  # pcrUpdateCounter
    (count,) = struct.unpack_from(">I", response, offset)
    offset += 4
    for _ in range(count):  # the selection actually read
        size = response[offset + 2]
        offset += 3 + size
    (count,) = struct.unpack_from(">I", response, offset)
    offset += 4
    digests = []
    for _ in range(count):
        (size,) = struct.unpack_from(">H", response, offset)
        digests.append(response[offset + 2:offset + 2 + size])
        offset += 2 + size
    return digests


def parse_pcr_allocation(response: bytes) -> list[str]:
    """The banks a successful GetCapability(TPM_CAP_PCRS) response shows with at least one
    PCR selected, in the response's order: what the kernel's ``tpm2_get_pcr_allocation``
    counts as allocated (banks of unknown algorithms are left out, as sysfs has no name for
    them)."""
    rc = response_code(response)
    if rc != TPM_RC_SUCCESS:
        raise ValueError(f"GetCapability(PCRS) failed with TPM response code {rc:#x}")
    names = {alg: bank for bank, (alg, _size) in HASH_ALGS.items()}
    offset = HEADER_SIZE + 1 + 4  # moreData, capability
    (count,) = struct.unpack_from(">I", response, offset)
    offset += 4
    banks = []
    for _ in range(count):
        alg, size = struct.unpack_from(">HB", response, offset)
        select = response[offset + 3:offset + 3 + size]
        offset += 3 + size
        if any(select) and alg in names:
            banks.append(names[alg])
    return banks


def _password_auth() -> bytes:
    """An authorization area: the password session with an empty password."""
    auth = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)  # handle, nonce, attributes, hmac
    return struct.pack(">I", len(auth)) + auth


# TPMA_OBJECT of tpm2_createprimary's default: fixedTPM, fixedParent, sensitiveDataOrigin,
# userWithAuth, restricted, decrypt (a storage key).
STORAGE_KEY_ATTRIBUTES = 0x00030072
# TPMT_SYM_DEF_OBJECT AES-128-CFB, the storage keys' symmetric algorithm.
_AES128_CFB = struct.pack(">HHH", 0x0006, 128, 0x0043)
_TPM_ALG_NULL = 0x0010
TPM_ECC_NIST_P256 = 0x0003


def create_primary(key: str) -> bytes:
    """CreatePrimary under the owner hierarchy of tpm2_createprimary's default template:
    ``key`` is ``rsa2048``/``rsa3072`` or ``ecc256`` (NIST P-256)."""
    if key.startswith("rsa") and key[3:] in ("1024", "2048", "3072"):
        # TPMS_RSA_PARMS: symmetric, scheme NULL, keyBits, exponent 0 (65537); unique empty
        params = struct.pack(">HHI", _TPM_ALG_NULL, int(key[3:]), 0) + struct.pack(">H", 0)
        alg = 0x0001
    elif key == "ecc256":
        # TPMS_ECC_PARMS: symmetric, scheme NULL, curve, kdf NULL; unique x and y empty
        params = struct.pack(">HHH", _TPM_ALG_NULL, TPM_ECC_NIST_P256, _TPM_ALG_NULL)
        params += struct.pack(">HH", 0, 0)
        alg = 0x0023
    else:
        raise ValueError(f"unknown primary key {key!r} (rsa1024, rsa2048, rsa3072, ecc256)")
    public = struct.pack(">HHIH", alg, HASH_ALGS["sha256"][0], STORAGE_KEY_ATTRIBUTES, 0)
    return _create_primary(TPM_RH_OWNER, public + _AES128_CFB + params)


def _create_primary(hierarchy: int, public: bytes) -> bytes:
    """CreatePrimary of the TPMT_PUBLIC ``public`` under ``hierarchy`` (empty password)."""
    body = struct.pack(">I", hierarchy) + _password_auth()
    body += struct.pack(">HHH", 4, 0, 0)  # inSensitive: empty userAuth and data
    body += struct.pack(">H", len(public)) + public
    body += struct.pack(">HI", 0, 0)  # outsideInfo, creationPCR: empty
    return command(TPM_CC_CREATE_PRIMARY, body, tag=TPM_ST_SESSIONS)


# The TCG EK Credential Profile's default RSA 2048 EK template (low range, "L-1"): fixedTPM,
# fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt; the policy is
# PolicySecret(TPM_RH_ENDORSEMENT); unique is 256 zero bytes.
EK_RSA2048_ATTRIBUTES = 0x000300B2
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
EK_RSA2048_CERT_INDEX = 0x01C00002


def create_ek_rsa2048() -> bytes:
    """CreatePrimary of the default RSA 2048 EK, as tpm2_createek and swtpm_setup make it."""
    public = struct.pack(">HHIH", 0x0001, HASH_ALGS["sha256"][0], EK_RSA2048_ATTRIBUTES,
                         len(EK_POLICY)) + EK_POLICY
    public += _AES128_CFB + struct.pack(">HHI", _TPM_ALG_NULL, 2048, 0)
    public += struct.pack(">H", 256) + bytes(256)
    return _create_primary(TPM_RH_ENDORSEMENT, public)


def created_handle(response: bytes) -> int:
    """The object handle of a successful CreatePrimary response."""
    rc = response_code(response)
    if rc != TPM_RC_SUCCESS:
        raise ValueError(f"CreatePrimary failed with TPM response code {rc:#x}")
    return struct.unpack_from(">I", response, HEADER_SIZE)[0]


def flush_context(handle: int) -> bytes:
    return command(TPM_CC_FLUSH_CONTEXT, struct.pack(">I", handle))


def pcr_extend(pcr: int, digests: dict[str, bytes]) -> bytes:
    """PCR_Extend of ``pcr`` with one digest per bank, authorised by an empty password."""
    values = bytearray(struct.pack(">I", len(digests)))
    for bank, digest in digests.items():
        alg, size = _bank(bank)
        if len(digest) != size:
            raise ValueError(f"{bank} digest of {len(digest)} bytes, expected {size}")
        values += struct.pack(">H", alg) + digest
    body = struct.pack(">I", pcr) + _password_auth() + bytes(values)
    return command(TPM_CC_PCR_EXTEND, body, tag=TPM_ST_SESSIONS)


# -- NV indices and persistent objects (what --state must keep; the EK certificate) --------

TPM_CC_NV_DEFINE_SPACE = 0x12A
TPM_CC_NV_WRITE = 0x137
TPM_CC_NV_WRITE_LOCK = 0x138
TPM_CC_NV_READ = 0x14E
TPM_CC_EVICT_CONTROL = 0x120
TPM_RH_ENDORSEMENT = 0x4000000B

# TPMA_NV bits (TPM 2.0 Part 2 §13.4).
TPMA_NV_PPWRITE = 1 << 0
TPMA_NV_OWNERWRITE = 1 << 1
TPMA_NV_AUTHWRITE = 1 << 2
TPMA_NV_WRITEDEFINE = 1 << 13
TPMA_NV_PPREAD = 1 << 16
TPMA_NV_OWNERREAD = 1 << 17
TPMA_NV_AUTHREAD = 1 << 18
TPMA_NV_NO_DA = 1 << 25
TPMA_NV_PLATFORMCREATE = 1 << 30
NV_ORDINARY_OWNER = (TPMA_NV_OWNERWRITE | TPMA_NV_AUTHWRITE | TPMA_NV_OWNERREAD
                     | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA)
"""An ordinary index as ``tpm2_nvdefine`` makes it (owner and index auth, no DA)."""


def _authorized(code: int, handles: list[int], parameters: bytes) -> bytes:
    """A command with ``handles``, one empty-password session, then ``parameters``."""
    body = b"".join(struct.pack(">I", h) for h in handles) + _password_auth() + parameters
    return command(code, body, tag=TPM_ST_SESSIONS)


def nv_define_space(auth: int, index: int, size: int, attributes: int) -> bytes:
    """NV_DefineSpace by hierarchy ``auth``: an index with an empty authValue and policy."""
    public = struct.pack(">IHIHH", index, HASH_ALGS["sha256"][0], attributes, 0, size)
    return _authorized(TPM_CC_NV_DEFINE_SPACE, [auth],
                       struct.pack(">H", 0) + struct.pack(">H", len(public)) + public)


def nv_write(auth: int, index: int, data: bytes, offset: int = 0) -> bytes:
    return _authorized(TPM_CC_NV_WRITE, [auth, index],
                       struct.pack(">H", len(data)) + data + struct.pack(">H", offset))


def nv_write_lock(auth: int, index: int) -> bytes:
    return _authorized(TPM_CC_NV_WRITE_LOCK, [auth, index], b"")


def nv_read(auth: int, index: int, size: int, offset: int = 0) -> bytes:
    return _authorized(TPM_CC_NV_READ, [auth, index], struct.pack(">HH", size, offset))


def parse_nv_read(response: bytes) -> bytes:
    """The data of a successful NV_Read response."""
    rc = response_code(response)
    if rc != TPM_RC_SUCCESS:
        raise ValueError(f"NV_Read failed with TPM response code {rc:#x}")
    (size,) = struct.unpack_from(">H", response, HEADER_SIZE + 4)  # after parameterSize
    return response[HEADER_SIZE + 6:HEADER_SIZE + 6 + size]


def evict_control(auth: int, object_handle: int, persistent: int) -> bytes:
    """EvictControl: make a loaded object persistent at ``persistent`` (or evict it)."""
    return _authorized(TPM_CC_EVICT_CONTROL, [auth, object_handle],
                       struct.pack(">I", persistent))


def read_public(handle: int) -> bytes:
    return command(TPM_CC_READ_PUBLIC, struct.pack(">I", handle))


def public_area(response: bytes, offset: int) -> bytes:
    """The TPMT_PUBLIC inside the TPM2B_PUBLIC at ``offset`` of a response."""
    (size,) = struct.unpack_from(">H", response, offset)
    return response[offset + 2:offset + 2 + size]


def rsa_modulus(public: bytes) -> bytes:
    """The ``unique`` (modulus) of an RSA TPMT_PUBLIC (type, nameAlg, attributes, policy,
    TPMS_RSA_PARMS)."""
    (policy_size,) = struct.unpack_from(">H", public, 8)
    offset = 10 + policy_size
    (symmetric,) = struct.unpack_from(">H", public, offset)
    offset += 2 if symmetric == _TPM_ALG_NULL else 6
    (scheme,) = struct.unpack_from(">H", public, offset)
    offset += 2 if scheme == _TPM_ALG_NULL else 4
    offset += 2 + 4  # keyBits, exponent
    (size,) = struct.unpack_from(">H", public, offset)
    return public[offset + 2:offset + 2 + size]


# -- TPM properties (info) -----------------------------------------------------------------

PT_FIXED_COUNT = 0x80
TPM_PT_MANUFACTURER = 0x105
TPM_PT_VENDOR_STRING_1 = 0x106
TPM_PT_FIRMWARE_VERSION_1 = 0x10B
TPM_PT_FIRMWARE_VERSION_2 = 0x10C


def parse_tpm_properties(response: bytes) -> dict[int, int]:
    """property → value of a successful GetCapability(TPM_PROPERTIES) response."""
    rc = response_code(response)
    if rc != TPM_RC_SUCCESS:
        raise ValueError(f"GetCapability(TPM_PROPERTIES) failed with TPM response code "
                         f"{rc:#x}")
    offset = HEADER_SIZE + 1 + 4  # moreData, capability
    (count,) = struct.unpack_from(">I", response, offset)
    pairs = struct.unpack_from(f">{2 * count}I", response, offset + 4)
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def _chars(value: int) -> str:
    """A property holding up to 4 ASCII characters (manufacturer, vendor strings)."""
    return value.to_bytes(4, "big").rstrip(b"\0").decode("ascii", "replace")


def describe_fixed_properties(props: dict[int, int]) -> dict[str, object]:
    """Who made the TPM, as tpm2_getcap properties-fixed shows it."""
    return {
        "family": _chars(props.get(0x100, 0)),
        "level": props.get(0x101),
        "revision": props.get(0x102, 0) / 100,
        "day_of_year": props.get(0x103),
        "year": props.get(0x104),
        "manufacturer": _chars(props.get(TPM_PT_MANUFACTURER, 0)),
        "vendor_string": "".join(_chars(props.get(TPM_PT_VENDOR_STRING_1 + i, 0))
                                 for i in range(4)),
        "vendor_tpm_type": props.get(0x10A),
        "firmware_version": f"{props.get(TPM_PT_FIRMWARE_VERSION_1, 0):#010x}."
                            f"{props.get(TPM_PT_FIRMWARE_VERSION_2, 0):#010x}",
    }
