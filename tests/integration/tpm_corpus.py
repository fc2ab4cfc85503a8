"""The differential test's script: raw TPM 2.0 commands, each with the view of its response
that two correct TPMs must agree on (the spec's "Differential testing" comparison rules).

A :class:`Step` is sent to both TPMs in lockstep.  Its bytes are fixed, or built from that
TPM's own earlier answers (handles, which the spec lets differ) through a per-TPM
:data:`Context`.  Both TPMs must answer with the same tag and return code; an error response
must be byte-identical (libtpms answers every error with a bare 10-byte header); a success
is compared through the step's ``view``, which keeps exactly the deterministic fields:

- exact: PCR values, digests, NV contents and NV public areas (names included), policy
  digests, capabilities other than the vendor's properties and transient/session handles,
  ECC curve parameters, error codes;
- the public template of a created key (type, name algorithm, attributes, policy,
  parameters) and its unique field's sizes, never the key material, name or tickets;
- only sizes: random bytes, nonces and HMACs, context blobs, clock info.

The script starts with the TPM powered but not started (its first rows are refused with
TPM_RC_INITIALIZE), and covers malformed commands: bad tags, short and long size fields,
trailing and missing bytes, unknown command codes, bad handles, bad authorization areas and
wrong passwords.  Frames under 10 bytes or over 4096 are left out: they test a transport's
framing (swtpm's data port waits for a whole header), not the TPM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tpm_wire as w

Context = dict[str, int]
"""Per-TPM values captured from its responses (object and session handles)."""
View = Callable[[bytes], Any]


@dataclass(frozen=True)
class Step:
    label: str
    build: bytes | Callable[[Context], bytes]
    view: View
    capture: Callable[[Context, bytes], None] | None = None

    def command(self, context: Context) -> bytes:
        return self.build if isinstance(self.build, bytes) else self.build(context)


# -- views: the deterministic fields of a successful response ---------------------------


def exact(response: bytes) -> bytes:
    return response


def size_only(response: bytes) -> int:
    """Random bytes, clock info, context blobs: only their length is the TPM's to fix."""
    return len(response)


def hmac_session_view(response: bytes) -> tuple[Any, ...]:
    """A response of a command without response handles authorised by an HMAC or policy
    session: its parameters exactly; of its authorization (nonceTPM, attributes, HMAC),
    the sizes and the attributes."""
    reader = w.Reader(response, 10)
    parameters = reader.take(reader.u32())
    nonce, attributes, hmac = reader.tpm2b(), reader.u8(), reader.tpm2b()
    return parameters, len(nonce), attributes, len(hmac)


def _skip_scheme(reader: w.Reader) -> tuple[int, ...]:
    alg = reader.u16()
    return (alg,) if alg == w.ALG_NULL else (alg, reader.u16())


def public_template(public: bytes) -> tuple[Any, ...]:
    """A TPMT_PUBLIC without its key material: everything before ``unique``, then the
    sizes of the unique field's parts."""
    reader = w.Reader(public)
    kind = reader.u16()
    reader.take(2 + 4)  # nameAlg, objectAttributes
    reader.tpm2b()  # authPolicy
    if kind in (w.ALG_RSA, w.ALG_ECC):
        symmetric = reader.u16()
        if symmetric != w.ALG_NULL:
            reader.take(4)  # keyBits, mode
        _skip_scheme(reader)
        if kind == w.ALG_RSA:
            reader.take(2 + 4)  # keyBits, exponent
            unique_sizes: tuple[int, ...] = (len(reader.tpm2b()),)
        else:
            reader.take(2)  # curveID
            _skip_scheme(reader)  # kdf
            unique_sizes = (len(reader.tpm2b()), len(reader.tpm2b()))
    else:
        _skip_scheme(reader)
        unique_sizes = (len(reader.tpm2b()),)
    template_end = reader.offset - sum(unique_sizes) - 2 * len(unique_sizes)
    return public[:template_end], unique_sizes, reader.rest()


def create_primary_view(response: bytes) -> tuple[Any, ...]:
    """CreatePrimary: the template; creationData and creationHash (deterministic: PCR
    selection and digest, locality, parent name); the ticket's tag and hierarchy; the
    name's size."""
    reader = w.parameters(response, handles=1)
    template = public_template(reader.tpm2b())
    creation_data, creation_hash = reader.tpm2b(), reader.tpm2b()
    ticket = (reader.u16(), reader.u32(), len(reader.tpm2b()))
    return template, creation_data, creation_hash, ticket, len(reader.tpm2b())


def read_public_view(response: bytes) -> tuple[Any, ...]:
    reader = w.parameters(response)
    return public_template(reader.tpm2b()), len(reader.tpm2b()), len(reader.tpm2b())


def hash_view(response: bytes, handles: int = 0) -> tuple[Any, ...]:
    """Hash / SequenceComplete: the digest exactly; the ticket's tag and hierarchy, and its
    HMAC only when it is the NULL ticket (an empty digest), else its size."""
    reader = w.parameters(response, handles)
    digest = reader.tpm2b()
    tag, hierarchy, hmac = reader.u16(), reader.u32(), reader.tpm2b()
    return digest, tag, hierarchy, hmac if hierarchy == w.RH_NULL else len(hmac)


def session_view(response: bytes) -> tuple[int, int]:
    """StartAuthSession: the handle's type (HMAC 0x02 / policy 0x03) and nonceTPM's size."""
    reader = w.Reader(response, 10)
    handle = reader.u32()
    return handle >> 24, len(reader.tpm2b())


def context_view(response: bytes) -> tuple[int, int, int]:
    """ContextSave: the saved handle's type, hierarchy, blob size (not sequence or blob)."""
    reader = w.Reader(response, 10)
    reader.take(8)  # sequence
    return reader.u32() >> 24, reader.u32(), len(reader.tpm2b())


def handle_type(response: bytes) -> int:
    """A response whose one handle is the TPM's choice (objects, sequences): its type."""
    return w.Reader(response, 10).u32() >> 24


VENDOR_PROPERTIES = range(0x105, 0x10D)
"""PT_MANUFACTURER, PT_VENDOR_STRING_1..4, PT_VENDOR_TPM_TYPE, PT_FIRMWARE_VERSION_1..2."""
TPM_CAP_HANDLES = 1
TPM_CAP_TPM_PROPERTIES = 6
CHOSEN_HANDLE_TYPES = (0x00, 0x01, 0x40, 0x81)
"""PCRs, NV indices, permanent and persistent handles: their values are the caller's."""


def capability_view(response: bytes) -> tuple[Any, ...]:
    """GetCapability: everything, except the vendor's property values and the values of
    transient objects' and sessions' handles (their count stays)."""
    reader = w.Reader(response, 10)
    more, capability = reader.u8(), reader.u32()
    if capability == TPM_CAP_TPM_PROPERTIES:
        count = reader.u32()
        pairs = [(reader.u32(), reader.u32()) for _ in range(count)]
        return more, capability, [(p, None if p in VENDOR_PROPERTIES else v) for p, v in pairs]
    if capability == TPM_CAP_HANDLES:
        count = reader.u32()
        handles = [reader.u32() for _ in range(count)]
        return more, capability, [h if h >> 24 in CHOSEN_HANDLE_TYPES else h >> 24
                                  for h in handles]
    return more, capability, reader.rest()


def capture_handle(name: str) -> Callable[[Context, bytes], None]:
    def capture(context: Context, response: bytes) -> None:
        if w.header(response).rc == 0:
            context[name] = w.Reader(response, 10).u32()
    return capture


def _handle(name: str, default: int = 0x80FFFFF0) -> Callable[[Context], int]:
    """The handle ``name`` this TPM gave earlier (a never-valid one if it failed)."""
    return lambda context: context.get(name, default)


# -- the script ----------------------------------------------------------------------------

SU_CLEAR, SU_STATE = 0, 1
PW_SESSION = w.password()
NV_ORDINARY, NV_COUNTER, NV_BITS, NV_EXTEND = 0x01500010, 0x01500011, 0x01500012, 0x01500013
NV_OWNER_RW = 0x00020002
NV_AUTH_RW = 0x00040004
NV_NO_DA = 0x02000000
NV_SECRET = b"nv secret"
OWNER_SECRET = b"owner secret"
PERSISTENT = 0x81000010


def _get_random(count: int) -> bytes:
    return w.command("GetRandom", params=w.u16(count))


def _cap(capability: int, prop: int, count: int) -> bytes:
    return w.command("GetCapability", params=w.u32(capability) + w.u32(prop) + w.u32(count))


def _pcr_read(banks: dict[int, list[int]]) -> bytes:
    return w.command("PCR_Read", params=w.pcr_selection(banks))


def before_startup() -> list[Step]:
    return [
        Step("GetRandom before Startup", _get_random(8), exact),
        Step("PCR_Read before Startup", _pcr_read({w.ALG_SHA256: [0]}), exact),
        Step("GetCapability before Startup", _cap(6, 0x100, 8), exact),
        Step("SelfTest before Startup", w.command("SelfTest", params=w.u8(1)), exact),
        Step("Shutdown before Startup", w.command("Shutdown", params=w.u16(SU_CLEAR)), exact),
        Step("bad tag before Startup", w.command("GetRandom", params=w.u16(8), tag=0x8000),
             exact),
        Step("unknown code before Startup", w.command(0x1FF), exact),
        Step("long size before Startup", w.command("Startup", params=w.u16(0), size_delta=2),
             exact),
        Step("Startup(0x0002)", w.command("Startup", params=w.u16(2)), exact),
        Step("Startup(STATE) without a saved state",
             w.command("Startup", params=w.u16(SU_STATE)), exact),
        Step("Startup with trailing bytes", w.command("Startup", params=w.u16(0) + b"\0"),
             exact),
        Step("Startup(CLEAR)", w.command("Startup", params=w.u16(SU_CLEAR)), exact),
        Step("Startup(CLEAR) again", w.command("Startup", params=w.u16(SU_CLEAR)), exact),
    ]


def malformed() -> list[Step]:
    steps = [Step(f"tag {tag:#06x}", w.command("GetRandom", params=w.u16(8), tag=tag), exact)
             for tag in (0x00C4, 0x8000, 0x8014, 0x00C1, 0x8003, 0x0000, 0xFFFF, 0x8002)]
    steps += [Step(f"size field {delta:+d}", w.command("GetRandom", params=w.u16(8),
                                                       size_delta=delta), exact)
              for delta in (-1, -2, 1, 2, 100, 4000)]
    steps += [
        Step("size field 0", b"\x80\x01\0\0\0\0\0\0\x01\x7b\0\x08", exact),
        Step("size field 0xffffffff", b"\x80\x01\xff\xff\xff\xff\0\0\x01\x7b\0\x08", exact),
        Step("size field 10 with parameters", b"\x80\x01\0\0\0\x0a\0\0\x01\x7b\0\x08", exact),
        Step("GetRandom without its parameter", w.command("GetRandom"), exact),
        Step("GetRandom with a trailing byte", w.command("GetRandom", params=w.u16(8) + b"x"),
             exact),
        Step("PCR_Extend without authorization (tag 0x8001)",
             w.command("PCR_Extend", (16,), w.digest_values({})), exact),
        Step("GetRandom with an authorization area",
             w.command("GetRandom", params=w.u16(8), auth=PW_SESSION), exact),
        Step("a header only", w.command(0x17A), exact),
    ]
    steps += [Step(f"unknown command code {code:#x}", w.command(code, params=b"\0" * 4), exact)
              for code in (0x0, 0x11E, 0x100, 0x19A, 0x1FF, 0x20000000, 0x20000001,
                           0x80000144, 0xFFFFFFFF)]
    return steps


def capabilities() -> list[Step]:
    steps = [
        Step("GetCapability ALGS", _cap(0, 0, 127), capability_view),
        Step("GetCapability ALGS from 0x20", _cap(0, 0x20, 4), capability_view),
        Step("GetCapability COMMANDS", _cap(2, 0x11F, 200), capability_view),
        Step("GetCapability COMMANDS page", _cap(2, 0x150, 16), capability_view),
        Step("GetCapability PP_COMMANDS", _cap(3, 0x11F, 200), capability_view),
        Step("GetCapability AUDIT_COMMANDS", _cap(4, 0x11F, 200), capability_view),
        Step("GetCapability PCRS", _cap(5, 0, 1), capability_view),
        Step("GetCapability PT_FIXED", _cap(6, 0x100, 64), capability_view),
        Step("GetCapability PT_VAR", _cap(6, 0x200, 64), capability_view),
        Step("GetCapability PCR_PROPERTIES", _cap(7, 0, 64), capability_view),
        Step("GetCapability ECC_CURVES", _cap(8, 0, 64), capability_view),
        Step("GetCapability AUTH_POLICIES", _cap(9, 0x40000000, 64), capability_view),
        Step("GetCapability unknown capability 0x12", _cap(0x12, 0, 1), exact),
        Step("GetCapability VENDOR_PROPERTY", _cap(0x100, 0, 1), exact),
    ]
    steps += [Step(f"GetCapability HANDLES {first:#010x}", _cap(1, first, 64), capability_view)
              for first in (0x00000000, 0x01000000, 0x02000000, 0x03000000, 0x40000000,
                            0x80000000, 0x81000000, 0x05000000)]
    steps += [Step(f"GetCapability property {prop:#x}", _cap(6, prop, 1), capability_view)
              for prop in range(0x100, 0x130)]
    return steps


def _extend_digest(pcr: int, alg: int) -> bytes:
    return hashlib.new(_HASH_NAMES[alg], f"pcr {pcr}".encode()).digest()


_HASH_NAMES = {w.ALG_SHA1: "sha1", w.ALG_SHA256: "sha256", w.ALG_SHA384: "sha384",
               w.ALG_SHA512: "sha512"}


def pcrs() -> list[Step]:
    def read_all(when: str) -> list[Step]:
        return [Step(f"PCR_Read {_HASH_NAMES[alg]} {first}..{first + 7} {when}",
                     _pcr_read({alg: list(range(first, first + 8))}), exact)
                for alg in w.BANKS for first in (0, 8, 16)]

    steps = read_all("after Startup")
    steps += [Step(f"PCR_Extend {pcr} sha256", w.command(
        "PCR_Extend", (pcr,), w.digest_values({w.ALG_SHA256: _extend_digest(pcr, w.ALG_SHA256)}),
        PW_SESSION), exact) for pcr in range(24)]
    steps += [
        Step("PCR_Extend 16 all banks", w.command("PCR_Extend", (16,), w.digest_values(
            {alg: _extend_digest(16, alg) for alg in w.BANKS}), PW_SESSION), exact),
        Step("PCR_Extend 24 (no such PCR)", w.command(
            "PCR_Extend", (24,), w.digest_values({}), PW_SESSION), exact),
        Step("PCR_Extend with a short sha256 digest", w.command(
            "PCR_Extend", (10,), w.u32(1) + w.u16(w.ALG_SHA256) + bytes(20), PW_SESSION), exact),
        Step("PCR_Extend with unknown algorithm 0x12", w.command(
            "PCR_Extend", (10,), w.u32(1) + w.u16(0x12) + bytes(32), PW_SESSION), exact),
        Step("PCR_Read of 3 banks at once", _pcr_read(
            {w.ALG_SHA1: [16], w.ALG_SHA256: [16], w.ALG_SHA384: [16, 23]}), exact),
        Step("PCR_Read of an unknown bank", _pcr_read({0x12: [0]}), exact),
        Step("PCR_Read with a 4-byte bitmap", w.command("PCR_Read", params=w.u32(1) + w.u16(
            w.ALG_SHA256) + w.u8(4) + b"\xff\xff\xff\xff"), exact),
    ]
    event = bytes(range(256)) * 5
    steps += [Step(f"PCR_Event 16 with {size} bytes", w.command(
        "PCR_Event", (16,), w.tpm2b(event[:size]), PW_SESSION), exact)
        for size in (0, 1, 100, 1024, 1025)]
    steps += [Step(f"PCR_Reset {pcr}", w.command("PCR_Reset", (pcr,), auth=PW_SESSION), exact)
              for pcr in (16, 23, 0, 7, 17, 20, 22)]
    steps += read_all("after extends, events and resets")
    return steps


def hashing() -> list[Step]:
    data = bytes(range(256)) * 4
    steps = [Step(f"Hash {_HASH_NAMES[alg]} of {size} bytes, NULL hierarchy", w.command(
        "Hash", params=w.tpm2b(data[:size]) + w.u16(alg) + w.u32(w.RH_NULL)), hash_view)
        for alg in w.BANKS for size in (0, 3, 1024)]
    steps += [
        Step("Hash sha256, owner hierarchy (a ticket)", w.command(
            "Hash", params=w.tpm2b(b"abc") + w.u16(w.ALG_SHA256) + w.u32(w.RH_OWNER)), hash_view),
        Step("Hash of 1025 bytes", w.command(
            "Hash", params=w.tpm2b(data + b"x") + w.u16(w.ALG_SHA256) + w.u32(w.RH_NULL)), exact),
        Step("Hash with algorithm NULL", w.command(
            "Hash", params=w.tpm2b(b"abc") + w.u16(w.ALG_NULL) + w.u32(w.RH_NULL)), exact),
        Step("Hash with a bad hierarchy", w.command(
            "Hash", params=w.tpm2b(b"abc") + w.u16(w.ALG_SHA256) + w.u32(0x40000099)), exact),
        Step("HashSequenceStart sha384", w.command(
            "HashSequenceStart", params=w.tpm2b(b"") + w.u16(w.ALG_SHA384)),
            handle_type, capture_handle("sequence")),
    ]
    steps += [Step(f"SequenceUpdate {i}", lambda c, i=i: w.command(
        "SequenceUpdate", (_handle("sequence")(c),), w.tpm2b(data[:500] + bytes([i])),
        PW_SESSION), exact) for i in range(3)]
    steps += [
        Step("SequenceComplete", lambda c: w.command(
            "SequenceComplete", (_handle("sequence")(c),),
            w.tpm2b(b"end") + w.u32(w.RH_NULL), PW_SESSION), hash_view),
        Step("SequenceUpdate of the completed sequence", lambda c: w.command(
            "SequenceUpdate", (_handle("sequence")(c),), w.tpm2b(b"x"), PW_SESSION), exact),
    ]
    return steps


def randomness() -> list[Step]:
    steps = [Step(f"GetRandom {n}", _get_random(n), size_only)
             for n in (0, 1, 16, 32, 48, 64, 65, 1000)]
    steps += [Step(f"StirRandom {n} bytes", w.command("StirRandom", params=w.tpm2b(b"s" * n)),
                   exact) for n in (0, 1, 128, 129)]
    return steps


def parameters_and_curves() -> list[Step]:
    def rsa(bits: int) -> bytes:
        return (w.u16(w.ALG_RSA) + w.u16(w.ALG_NULL) + w.u16(w.ALG_NULL) + w.u16(bits)
                + w.u32(0))

    def ecc(curve: int) -> bytes:
        return (w.u16(w.ALG_ECC) + w.u16(w.ALG_NULL) + w.u16(w.ALG_NULL) + w.u16(curve)
                + w.u16(w.ALG_NULL))

    def aes(bits: int) -> bytes:
        return w.u16(w.ALG_SYMCIPHER) + w.u16(w.ALG_AES) + w.u16(bits) + w.u16(w.ALG_CFB)

    parms = {f"RSA-{b}": rsa(b) for b in (512, 1024, 2048, 3072, 4096)}
    parms |= {f"ECC curve {c:#x}": ecc(c) for c in (1, 2, 3, 4, 5, 0x10, 0x20, 0x99)}
    parms |= {f"AES-{b}": aes(b) for b in (128, 192, 256, 100)}
    parms["HMAC sha256"] = w.u16(w.ALG_KEYEDHASH) + w.u16(w.ALG_HMAC) + w.u16(w.ALG_SHA256)
    parms["unknown type 0x99"] = w.u16(0x99)
    steps = [Step(f"TestParms {name}", w.command("TestParms", params=p), exact)
             for name, p in parms.items()]
    steps += [Step(f"ECC_Parameters {curve:#x}", w.command("ECC_Parameters", params=w.u16(
        curve)), exact) for curve in (1, 3, 4, 5, 0x10, 0x99)]
    return steps


def objects() -> list[Step]:
    ecc, rsa = w.ecc_template(), w.rsa_template()
    primary = _handle("primary")
    return [
        Step("CreatePrimary ECC P-256, owner", w.create_primary(w.RH_OWNER, ecc),
             create_primary_view, capture_handle("primary")),
        Step("ReadPublic of the primary", lambda c: w.command("ReadPublic", (primary(c),)),
             read_public_view),
        Step("ContextSave of the primary", lambda c: w.command("ContextSave", (primary(c),)),
             context_view),
        Step("GetCapability HANDLES transient", _cap(1, 0x80000000, 8), capability_view),
        Step("EvictControl to 0x81000010", lambda c: w.command(
            "EvictControl", (w.RH_OWNER, primary(c)), w.u32(PERSISTENT), PW_SESSION), exact),
        Step("ReadPublic 0x81000010", w.command("ReadPublic", (PERSISTENT,)), read_public_view),
        Step("EvictControl to 0x81000010 again", lambda c: w.command(
            "EvictControl", (w.RH_OWNER, primary(c)), w.u32(PERSISTENT), PW_SESSION), exact),
        Step("GetCapability HANDLES persistent", _cap(1, 0x81000000, 8), capability_view),
        Step("EvictControl removes 0x81000010", w.command(
            "EvictControl", (w.RH_OWNER, PERSISTENT), w.u32(PERSISTENT), PW_SESSION), exact),
        Step("ReadPublic of a removed persistent handle",
             w.command("ReadPublic", (PERSISTENT,)), exact),
        Step("CreatePrimary RSA-2048, endorsement", w.create_primary(w.RH_ENDORSEMENT, rsa),
             create_primary_view, capture_handle("rsa")),
        Step("FlushContext of the RSA primary",
             lambda c: w.command("FlushContext", params=w.u32(_handle("rsa")(c))), exact),
        Step("CreatePrimary ECC P-384, platform", w.create_primary(
            w.RH_PLATFORM, w.ecc_template(curve=4)), create_primary_view,
             capture_handle("platform")),
        Step("CreatePrimary ECC, NULL hierarchy", w.create_primary(w.RH_NULL, ecc),
             create_primary_view, capture_handle("null")),
        Step("CreatePrimary with all 3 slots full", w.create_primary(w.RH_OWNER, ecc), exact),
        Step("FlushContext of the platform primary",
             lambda c: w.command("FlushContext", params=w.u32(_handle("platform")(c))), exact),
        Step("FlushContext of the NULL primary",
             lambda c: w.command("FlushContext", params=w.u32(_handle("null")(c))), exact),
        Step("CreatePrimary RSA-1000", w.create_primary(w.RH_OWNER, w.rsa_template(1000)),
             exact),
        Step("CreatePrimary in hierarchy 0x40000002", w.create_primary(0x40000002, ecc), exact),
        Step("CreatePrimary with a sign+decrypt restricted key", w.create_primary(
            w.RH_OWNER, w.ecc_template(attributes=0x00070072)), exact),
        Step("CreatePrimary with a truncated template", w.create_primary(
            w.RH_OWNER, ecc[:-4]), exact),
        Step("FlushContext of the ECC primary",
             lambda c: w.command("FlushContext", params=w.u32(primary(c))), exact),
        Step("FlushContext of it again",
             lambda c: w.command("FlushContext", params=w.u32(primary(c))), exact),
        Step("ReadPublic of a flushed handle",
             lambda c: w.command("ReadPublic", (primary(c),)), exact),
        Step("ReadPublic 0x80FFFFFF", w.command("ReadPublic", (0x80FFFFFF,)), exact),
        Step("ReadPublic of an NV index", w.command("ReadPublic", (0x01500010,)), exact),
        Step("ReadPublic of a PCR", w.command("ReadPublic", (0,)), exact),
        Step("FlushContext of a PCR handle", w.command("FlushContext", params=w.u32(1)), exact),
        Step("FlushContext of a persistent handle",
             w.command("FlushContext", params=w.u32(PERSISTENT)), exact),
        Step("GetCapability HANDLES transient, all flushed", _cap(1, 0x80000000, 8),
             capability_view),
    ]


def sessions() -> list[Step]:
    def start(kind: int, nonce: bytes = b"n" * 16, auth_hash: int = w.ALG_SHA256) -> bytes:
        return w.command("StartAuthSession", (w.RH_NULL, w.RH_NULL), w.tpm2b(nonce)
                         + w.tpm2b(b"") + w.u8(kind) + w.u16(w.ALG_NULL) + w.u16(auth_hash))

    policy = _handle("policy")

    def on_policy(code: str, params: bytes = b"") -> Callable[[Context], bytes]:
        return lambda c: w.command(code, (policy(c),), params)

    return [
        Step("StartAuthSession policy", start(1), session_view, capture_handle("policy")),
        Step("PolicyGetDigest, fresh", on_policy("PolicyGetDigest"), exact),
        Step("PolicyPCR sha256 0,16", on_policy("PolicyPCR", w.tpm2b(b"") + w.pcr_selection(
            {w.ALG_SHA256: [0, 16]})), exact),
        Step("PolicyCommandCode Unseal", on_policy("PolicyCommandCode", w.u32(0x15E)), exact),
        Step("PolicyAuthValue", on_policy("PolicyAuthValue"), exact),
        Step("PolicyGetDigest", on_policy("PolicyGetDigest"), exact),
        Step("PolicyPCR with a wrong digest", on_policy("PolicyPCR", w.tpm2b(bytes(32))
                                                        + w.pcr_selection({w.ALG_SHA256: [0]})),
             exact),
        Step("PolicyRestart", on_policy("PolicyRestart"), exact),
        Step("PolicyPassword", on_policy("PolicyPassword"), exact),
        Step("PolicyGetDigest after restart", on_policy("PolicyGetDigest"), exact),
        Step("PolicyCommandCode of an unknown code", on_policy("PolicyCommandCode",
                                                               w.u32(0x1FF)), exact),
        Step("StartAuthSession trial", start(3), session_view, capture_handle("trial")),
        Step("StartAuthSession HMAC", start(0), session_view, capture_handle("hmac")),
        Step("PCR_Extend authorised by an unknown session", w.command(
            "PCR_Extend", (16,), w.digest_values({}), w.password(handle=0x02000099)), exact),
        Step("PCR_Extend authorised by the HMAC session without an HMAC", lambda c: w.command(
            "PCR_Extend", (16,), w.digest_values({}),
            w.password(handle=_handle("hmac", 0x02FFFFFF)(c), attributes=1)),
             hmac_session_view),
        Step("PCR_Extend authorised by the policy session (policy not met)",
             lambda c: w.command("PCR_Extend", (16,), w.digest_values({}),
                                 w.password(handle=policy(c), attributes=1)), exact),
        Step("StartAuthSession of type 5", start(5), exact),
        Step("StartAuthSession with authHash NULL", start(1, auth_hash=w.ALG_NULL), exact),
        Step("StartAuthSession with a 15-byte nonce", start(1, nonce=b"n" * 15), exact),
        Step("StartAuthSession with a bad tpmKey", w.command(
            "StartAuthSession", (0x80FFFFFF, w.RH_NULL), w.tpm2b(b"n" * 16) + w.tpm2b(b"")
            + w.u8(1) + w.u16(w.ALG_NULL) + w.u16(w.ALG_SHA256)), exact),
        Step("GetCapability HANDLES loaded sessions", _cap(1, 0x02000000, 8), capability_view),
        Step("FlushContext of the trial session",
             lambda c: w.command("FlushContext", params=w.u32(_handle("trial")(c))), exact),
        Step("FlushContext of the HMAC session",
             lambda c: w.command("FlushContext", params=w.u32(_handle("hmac")(c))), exact),
        Step("FlushContext of the policy session",
             lambda c: w.command("FlushContext", params=w.u32(policy(c))), exact),
        Step("PolicyGetDigest of a flushed session", on_policy("PolicyGetDigest"), exact),
    ]


def authorization() -> list[Step]:
    ecc = w.ecc_template()

    def create(auth: bytes) -> bytes:
        sensitive = w.tpm2b(b"") + w.tpm2b(b"")
        params = w.tpm2b(sensitive) + w.tpm2b(ecc) + w.tpm2b(b"") + w.u32(0)
        return w.command("CreatePrimary", (w.RH_OWNER,), params, auth)

    flush_owner = Step("FlushContext of the owner primary", lambda c: w.command(
        "FlushContext", params=w.u32(_handle("owned")(c))), exact)
    return [
        Step("authSize 8", create(w.u32(8) + w.password()[4:12]), exact),
        Step("authSize larger than the command", create(w.u32(200) + w.password()[4:]), exact),
        Step("a password session with reserved attribute bits", create(
            w.password(attributes=0x18)), exact),
        Step("a password session with a nonce", create(
            w.u32(13) + w.u32(w.RS_PW) + w.tpm2b(b"nn") + w.u8(0) + w.tpm2b(b"")), exact),
        Step("two password sessions", create(w.u32(18) + w.password()[4:] * 2), exact),
        Step("HierarchyChangeAuth owner", w.command(
            "HierarchyChangeAuth", (w.RH_OWNER,), w.tpm2b(OWNER_SECRET), PW_SESSION), exact),
        Step("CreatePrimary with an empty owner password", create(PW_SESSION), exact),
        Step("CreatePrimary with a wrong owner password", create(w.password(b"wrong")), exact),
        Step("CreatePrimary with the owner password", create(w.password(OWNER_SECRET)),
             create_primary_view, capture_handle("owned")),
        flush_owner,
        Step("HierarchyChangeAuth owner with a 65-byte password", w.command(
            "HierarchyChangeAuth", (w.RH_OWNER,), w.tpm2b(b"p" * 65),
            w.password(OWNER_SECRET)), exact),
        Step("HierarchyChangeAuth owner back to empty", w.command(
            "HierarchyChangeAuth", (w.RH_OWNER,), w.tpm2b(b""), w.password(OWNER_SECRET)),
            exact),
        Step("GetCapability PT_PERMANENT", _cap(6, 0x200, 1), capability_view),
        Step("DictionaryAttackLockReset", w.command(
            "DictionaryAttackLockReset", (w.RH_LOCKOUT,), auth=PW_SESSION), exact),
        Step("GetCapability PT_LOCKOUT_COUNTER", _cap(6, 0x20E, 1), capability_view),
    ]


def nv() -> list[Step]:
    def define(index: int, attributes: int, size: int, auth: bytes = b"") -> bytes:
        return w.command("NV_DefineSpace", (w.RH_OWNER,),
                         w.tpm2b(auth) + w.nv_public(index, attributes, size), PW_SESSION)

    def write(index: int, data: bytes, offset: int = 0, auth_handle: int = w.RH_OWNER,
              auth: bytes = PW_SESSION) -> bytes:
        return w.command("NV_Write", (auth_handle, index), w.tpm2b(data) + w.u16(offset), auth)

    def read(index: int, size: int, offset: int = 0, auth_handle: int = w.RH_OWNER,
             auth: bytes = PW_SESSION) -> bytes:
        return w.command("NV_Read", (auth_handle, index), w.u16(size) + w.u16(offset), auth)

    def owner_only(code: str, index: int, params: bytes = b"") -> bytes:
        return w.command(code, (w.RH_OWNER, index), params, PW_SESSION)

    ordinary = NV_OWNER_RW | NV_AUTH_RW | NV_NO_DA
    data = hashlib.sha256(b"nv contents").digest()
    return [
        Step("NV_DefineSpace ordinary 32 bytes", define(NV_ORDINARY, ordinary, 32, NV_SECRET),
             exact),
        Step("NV_DefineSpace it again", define(NV_ORDINARY, ordinary, 32), exact),
        Step("NV_ReadPublic", w.command("NV_ReadPublic", (NV_ORDINARY,)), exact),
        Step("NV_Read before any write", read(NV_ORDINARY, 8), exact),
        Step("NV_Write 32 bytes as owner", write(NV_ORDINARY, data), exact),
        Step("NV_ReadPublic after a write (WRITTEN)",
             w.command("NV_ReadPublic", (NV_ORDINARY,)), exact),
        Step("NV_Read 32 bytes as owner", read(NV_ORDINARY, 32), exact),
        Step("NV_Read 8 bytes at 20", read(NV_ORDINARY, 8, 20), exact),
        Step("NV_Read 8 bytes at 30 (past the end)", read(NV_ORDINARY, 8, 30), exact),
        Step("NV_Write 4 bytes at 4 with the index's password", write(
            NV_ORDINARY, b"ABCD", 4, NV_ORDINARY, w.password(NV_SECRET)), exact),
        Step("NV_Write with a wrong index password", write(
            NV_ORDINARY, b"EFGH", 4, NV_ORDINARY, w.password(b"wrong")), exact),
        Step("NV_Write 33 bytes", write(NV_ORDINARY, b"x" * 33), exact),
        Step("NV_Read with the index's password", read(
            NV_ORDINARY, 32, 0, NV_ORDINARY, w.password(NV_SECRET)), exact),
        Step("NV_Read with a wrong index password", read(
            NV_ORDINARY, 32, 0, NV_ORDINARY, w.password(b"wrong")), exact),
        Step("NV_Increment of an ordinary index", owner_only("NV_Increment", NV_ORDINARY), exact),
        Step("NV_DefineSpace counter", define(NV_COUNTER, NV_OWNER_RW | 0x10, 8), exact),
        Step("NV_Read of a counter never incremented", read(NV_COUNTER, 8), exact),
        Step("NV_Increment 1", owner_only("NV_Increment", NV_COUNTER), exact),
        Step("NV_Increment 2", owner_only("NV_Increment", NV_COUNTER), exact),
        Step("NV_Read of the counter", read(NV_COUNTER, 8), exact),
        Step("NV_Write of a counter", write(NV_COUNTER, bytes(8)), exact),
        Step("NV_DefineSpace bits", define(NV_BITS, NV_OWNER_RW | 0x20, 8), exact),
        Step("NV_SetBits 0x0101", owner_only("NV_SetBits", NV_BITS, w.u32(0) + w.u32(0x101)),
             exact),
        Step("NV_SetBits 0x8000", owner_only("NV_SetBits", NV_BITS, w.u32(0x8000) + w.u32(0)),
             exact),
        Step("NV_Read of the bits", read(NV_BITS, 8), exact),
        Step("NV_DefineSpace extend sha256", define(NV_EXTEND, NV_OWNER_RW | 0x40, 32), exact),
        Step("NV_Extend 1", owner_only("NV_Extend", NV_EXTEND, w.tpm2b(b"event 1")), exact),
        Step("NV_Extend 2", owner_only("NV_Extend", NV_EXTEND, w.tpm2b(b"event 2")), exact),
        Step("NV_Read of the extend index", read(NV_EXTEND, 32), exact),
        Step("NV_ReadPublic of the extend index", w.command("NV_ReadPublic", (NV_EXTEND,)),
             exact),
        Step("GetCapability HANDLES NV", _cap(1, 0x01000000, 16), capability_view),
        Step("NV_DefineSpace of 4096 bytes", define(0x01500020, NV_OWNER_RW, 4096), exact),
        Step("NV_DefineSpace without a write attribute",
             define(0x01500021, 0x00020000, 8), exact),
        Step("NV_DefineSpace of a counter of 4 bytes",
             define(0x01500022, NV_OWNER_RW | 0x10, 4), exact),
        Step("NV_DefineSpace in the platform range as owner",
             define(0x01C00000, NV_OWNER_RW, 8), exact),
        Step("NV_ReadPublic of an undefined index",
             w.command("NV_ReadPublic", (0x01500099,)), exact),
        Step("NV_Read of an undefined index", read(0x01500099, 8), exact),
        Step("NV_UndefineSpace counter", owner_only("NV_UndefineSpace", NV_COUNTER), exact),
        Step("NV_UndefineSpace bits", owner_only("NV_UndefineSpace", NV_BITS), exact),
        Step("NV_UndefineSpace extend", owner_only("NV_UndefineSpace", NV_EXTEND), exact),
        Step("NV_UndefineSpace extend again", owner_only("NV_UndefineSpace", NV_EXTEND), exact),
    ]


def clear_and_shutdown() -> list[Step]:
    return [
        Step("SelfTest full", w.command("SelfTest", params=w.u8(1)), exact),
        Step("IncrementalSelfTest sha256, aes", w.command(
            "IncrementalSelfTest", params=w.u32(2) + w.u16(w.ALG_SHA256) + w.u16(w.ALG_AES)),
            exact),
        Step("GetTestResult", w.command("GetTestResult"), exact),
        Step("ReadClock", w.command("ReadClock"), size_only),
        Step("Clear through the owner handle", w.command(
            "Clear", (w.RH_OWNER,), auth=PW_SESSION), exact),
        Step("ClearControl disable (platform)", w.command(
            "ClearControl", (w.RH_PLATFORM,), w.u8(1), PW_SESSION), exact),
        Step("Clear while disabled", w.command("Clear", (w.RH_LOCKOUT,), auth=PW_SESSION),
             exact),
        Step("ClearControl enable (platform)", w.command(
            "ClearControl", (w.RH_PLATFORM,), w.u8(0), PW_SESSION), exact),
        Step("Clear", w.command("Clear", (w.RH_LOCKOUT,), auth=PW_SESSION), exact),
        Step("NV_ReadPublic of an owner index after Clear",
             w.command("NV_ReadPublic", (NV_ORDINARY,)), exact),
        Step("GetCapability HANDLES NV after Clear", _cap(1, 0x01000000, 16), capability_view),
        Step("GetCapability PT_VAR after Clear", _cap(6, 0x200, 64), capability_view),
        Step("Clear with a wrong lockout password (lockout auth is then locked out)",
             w.command("Clear", (w.RH_LOCKOUT,), auth=w.password(b"wrong")), exact),
        Step("DictionaryAttackLockReset after it", w.command(
            "DictionaryAttackLockReset", (w.RH_LOCKOUT,), auth=PW_SESSION), exact),
        Step("Shutdown(STATE)", w.command("Shutdown", params=w.u16(SU_STATE)), exact),
        Step("Shutdown(CLEAR)", w.command("Shutdown", params=w.u16(SU_CLEAR)), exact),
        Step("Shutdown(0x7)", w.command("Shutdown", params=w.u16(7)), exact),
        Step("PCR_Read after Shutdown", _pcr_read({w.ALG_SHA256: [0, 16]}), exact),
    ]


def script() -> list[Step]:
    """The whole sequence, from a powered TPM that has not seen Startup."""
    return (before_startup() + malformed() + capabilities() + pcrs() + hashing()
            + randomness() + parameters_and_curves() + objects() + sessions()
            + authorization() + nv() + clear_and_shutdown())
