"""The 0x824-byte SEV certificate: parse, build, sign and verify.

Owns: the byte layout (AMD SEV API, "Certificates"), usages and algorithms, ECDSA signing and
verification over the signed body (bytes 0x000-0x413), the little-endian encoding of P-384
coordinates and signature values.  Must not know: which key signs which (that is
:mod:`vdev.sev.keys`), the firmware's state, files.

Layout::

    0x000 version u32 = 1          0x004 api_major u8, api_minor u8, reserved u16
    0x008 pub_key_usage u32        0x00C pub_key_algo u32
    0x010 public key [0x404]: curve u32 (2 = P-384) | qx[72] | qy[72] | zero pad
    0x414 sig1: usage u32 | algo u32 | sig[512] (ECDSA: r[72] | s[72] | zero pad)
    0x61C sig2: same layout

The digest of an ECDSA signature follows its algorithm (ECDSA_SHA256 0x2: SHA-256, as on the
chains real parts carry; ECDSA_SHA384 0x102: SHA-384).  An empty slot is usage 0x1000, algo 0,
512 zero bytes.  Malformed bytes raise :class:`~vdev.sev.status.SevError`
INVALID_CERTIFICATE naming the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from vdev.sev.crypto import COORD_LEN, CURVE, le_bytes, le_int
from vdev.sev.status import SevError, Status

CERT_LEN = 0x824
BODY_LEN = 0x414
PUBKEY_LEN = 0x404
SIG_LEN = 512
CURVE_P384 = 2


class Usage(IntEnum):
    ARK = 0x0000
    ASK = 0x0013
    NONE = 0x1000
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


class Algo(IntEnum):
    NONE = 0
    RSA_SHA256 = 0x1
    ECDSA_SHA256 = 0x2
    ECDH_SHA256 = 0x3
    RSA_SHA384 = 0x101
    ECDSA_SHA384 = 0x102
    ECDH_SHA384 = 0x103


ECDSA_HASH = {Algo.ECDSA_SHA256: hashes.SHA256, Algo.ECDSA_SHA384: hashes.SHA384}
EC_KEY_ALGOS = (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384, Algo.ECDH_SHA256, Algo.ECDH_SHA384)


@dataclass(frozen=True)
class Signature:
    """One signature slot; ``value`` is the raw 512 bytes (r | s little-endian for ECDSA)."""

    usage: int = Usage.NONE
    algo: int = Algo.NONE
    value: bytes = bytes(SIG_LEN)

    @property
    def empty(self) -> bool:
        return self.algo == Algo.NONE

    def to_bytes(self) -> bytes:
        return struct.pack("<II", self.usage, self.algo) + self.value


EMPTY_SIGNATURE = Signature()


@dataclass(frozen=True)
class Certificate:
    """A SEV certificate with an EC P-384 public key (the only kind the firmware makes)."""

    usage: int
    algo: int
    qx: int
    qy: int
    api_major: int = 0
    api_minor: int = 0
    sig1: Signature = EMPTY_SIGNATURE
    sig2: Signature = EMPTY_SIGNATURE
    version: int = 1
    curve: int = CURVE_P384

    @classmethod
    def for_key(
        cls, usage: Usage, algo: Algo, key: ec.EllipticCurvePublicKey, api: tuple[int, int]
    ) -> Certificate:
        numbers = key.public_numbers()
        return cls(usage, algo, numbers.x, numbers.y, api[0], api[1])

    # -- encoding ---------------------------------------------------------------------------

    def body(self) -> bytes:
        """Bytes 0x000-0x413: everything a signature covers."""
        key = struct.pack("<I", self.curve) + le_bytes(self.qx) + le_bytes(self.qy)
        head = struct.pack(
            "<IBBHII", self.version, self.api_major, self.api_minor, 0, self.usage, self.algo
        )
        return head + key.ljust(PUBKEY_LEN, b"\x00")

    def to_bytes(self) -> bytes:
        return self.body() + self.sig1.to_bytes() + self.sig2.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "certificate") -> Certificate:
        if len(data) != CERT_LEN:
            raise SevError(
                Status.INVALID_CERTIFICATE,
                f"{what}: {len(data)} bytes, a SEV certificate is {CERT_LEN:#x}",
            )
        version, major, minor, _, usage, algo = struct.unpack_from("<IBBHII", data)
        if version != 1:
            raise SevError(Status.INVALID_CERTIFICATE, f"{what}: version {version}, need 1")
        if usage not in Usage.__members__.values():
            raise SevError(Status.INVALID_CERTIFICATE, f"{what}: unknown pub_key_usage {usage:#x}")
        if algo not in EC_KEY_ALGOS:
            raise SevError(
                Status.INVALID_CERTIFICATE,
                f"{what}: pub_key_algo {algo:#x} is not an EC algorithm (ECDSA/ECDH)",
            )
        (curve,) = struct.unpack_from("<I", data, 0x10)
        if curve != CURVE_P384:
            raise SevError(
                Status.INVALID_CERTIFICATE, f"{what}: curve {curve}, only P-384 (2) is supported"
            )
        qx = le_int(data[0x14 : 0x14 + COORD_LEN])
        qy = le_int(data[0x14 + COORD_LEN : 0x14 + 2 * COORD_LEN])
        sigs = []
        for offset in (BODY_LEN, BODY_LEN + 8 + SIG_LEN):
            s_usage, s_algo = struct.unpack_from("<II", data, offset)
            sigs.append(Signature(s_usage, s_algo, bytes(data[offset + 8 : offset + 8 + SIG_LEN])))
        return cls(usage, algo, qx, qy, major, minor, sigs[0], sigs[1], version, curve)

    # -- keys and signatures ----------------------------------------------------------------

    def public_key(self, what: str = "certificate") -> ec.EllipticCurvePublicKey:
        """The key as a `cryptography` object; a point off the curve is INVALID_CERTIFICATE."""
        try:
            return ec.EllipticCurvePublicNumbers(self.qx, self.qy, CURVE).public_key()
        except ValueError:
            raise SevError(
                Status.INVALID_CERTIFICATE,
                f"{what}: ({self.qx:#x}, {self.qy:#x}) is not a point on P-384",
            ) from None

    def signed(
        self,
        slot: int,
        signer_usage: Usage,
        signer: ec.EllipticCurvePrivateKey,
        algo: Algo = Algo.ECDSA_SHA256,
    ) -> Certificate:
        """A copy with signature ``slot`` (1 or 2) made by ``signer`` over the body."""
        # Deterministic (RFC 6979): a certificate re-made from the same keys is the same
        # bytes, so a chain exported before and after a restart is identical.
        der = signer.sign(self.body(), ec.ECDSA(ECDSA_HASH[algo](), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        value = (le_bytes(r) + le_bytes(s)).ljust(SIG_LEN, b"\x00")
        sig = Signature(signer_usage, algo, value)
        return replace(self, sig1=sig) if slot == 1 else replace(self, sig2=sig)

    def unsigned(self) -> Certificate:
        return replace(self, sig1=EMPTY_SIGNATURE, sig2=EMPTY_SIGNATURE)

    def signature_by(self, usage: Usage) -> Signature | None:
        for sig in (self.sig1, self.sig2):
            if sig.usage == usage and not sig.empty:
                return sig
        return None

    def is_signed_by(self, issuer: Certificate) -> bool:
        """True if a slot carrying the issuer's usage holds a valid signature by its key."""
        sig = self.signature_by(Usage(issuer.usage))
        if sig is None or sig.algo not in ECDSA_HASH:
            return False
        r = le_int(sig.value[:COORD_LEN])
        s = le_int(sig.value[COORD_LEN : 2 * COORD_LEN])
        try:
            issuer.public_key().verify(
                encode_dss_signature(r, s), self.body(), ec.ECDSA(ECDSA_HASH[Algo(sig.algo)]())
            )
        except (InvalidSignature, SevError):
            return False
        return True
