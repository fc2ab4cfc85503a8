"""The launch-session protocol both ends compute: key schedule, session blob, measurement,
secret header MAC.

Owns: the formulas of the AMD SEV API's launch flow (see ``shared/spec/sev.md``, "Guest states
and launch"), in one place so that the firmware (:mod:`vdev.sev.guest`) and the guest owner
(:mod:`vdev.sev.owner`) cannot drift apart.  Must not know: firmware state, certificates'
byte layout, files.

Session blob (0x80 bytes)::

    NONCE[16] | WRAP_TK[32] | WRAP_IV[16] | WRAP_MAC[32] | POLICY_MAC[32]

Secret header (52 bytes)::

    FLAGS u32 | IV[16] | MAC[32]          (FLAGS bit 0 = COMPRESSED)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vdev.sev.crypto import KEY_LEN, aes128_ctr, hmac_sha256, kdf

SESSION_LEN = 0x80
SECRET_HEADER_LEN = 52
MEASURE_LEN = 32
MNONCE_LEN = 16
NONCE_LEN = 16
IV_LEN = 16
SECRET_FLAG_COMPRESSED = 0x1
# API >= 0.17 prefixes the measurement input with this byte and binds secrets to MEASURE.
MEASURE_PREFIX = b"\x04"
SECRET_MAC_PREFIX = b"\x01"


@dataclass(frozen=True)
class TransportKeys:
    """TEK (encrypts secrets) and TIK (integrity: MACs and the measurement)."""

    tek: bytes
    tik: bytes


@dataclass(frozen=True)
class WrapKeys:
    """KEK/KIK: derived from the DH shared secret and the nonce, they protect TEK/TIK."""

    kek: bytes
    kik: bytes


def derive_wrap_keys(shared_x: bytes, nonce: bytes) -> WrapKeys:
    """MS = KDF(Z, "sev-master-secret", NONCE); KEK/KIK = KDF(MS, "sev-kek"/"sev-kik", "")."""
    master = kdf(shared_x, b"sev-master-secret", nonce)
    return WrapKeys(kdf(master, b"sev-kek", b""), kdf(master, b"sev-kik", b""))


def policy_mac(tik: bytes, policy: int) -> bytes:
    return hmac_sha256(tik, struct.pack("<I", policy))


@dataclass(frozen=True)
class SessionBlob:
    nonce: bytes
    wrap_tk: bytes
    wrap_iv: bytes
    wrap_mac: bytes
    policy_mac: bytes

    def to_bytes(self) -> bytes:
        return self.nonce + self.wrap_tk + self.wrap_iv + self.wrap_mac + self.policy_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionBlob:
        """Split a blob whose length the caller has checked (SESSION_LEN)."""
        return cls(data[0:16], data[16:48], data[48:64], data[64:96], data[96:128])


def wrap_session(
    wrap: WrapKeys, keys: TransportKeys, nonce: bytes, iv: bytes, policy: int
) -> SessionBlob:
    """The owner's side: WRAP_TK = AES-CTR(KEK, IV, TEK||TIK), its MAC, and POLICY_MAC."""
    wrap_tk = aes128_ctr(wrap.kek, iv, keys.tek + keys.tik)
    return SessionBlob(
        nonce, wrap_tk, iv, hmac_sha256(wrap.kik, wrap_tk), policy_mac(keys.tik, policy)
    )


def unwrap_session(wrap: WrapKeys, blob: SessionBlob) -> TransportKeys:
    """The firmware's side, after it checked WRAP_MAC: recover TEK and TIK."""
    plain = aes128_ctr(wrap.kek, blob.wrap_iv, blob.wrap_tk)
    return TransportKeys(plain[:KEY_LEN], plain[KEY_LEN : 2 * KEY_LEN])


def wrap_mac(wrap: WrapKeys, blob: SessionBlob) -> bytes:
    return hmac_sha256(wrap.kik, blob.wrap_tk)


def measure(
    tik: bytes, api: tuple[int, int], build: int, policy: int, digest: bytes, mnonce: bytes
) -> bytes:
    """MEASURE = HMAC(TIK, 04 || API_MAJOR || API_MINOR || BUILD || u32le(POLICY) || LD || MNONCE).

    Before API 0.17 there is no leading 0x04 byte.
    """
    prefix = MEASURE_PREFIX if api >= (0, 17) else b""
    head = prefix + bytes((api[0], api[1], build)) + struct.pack("<I", policy)
    return hmac_sha256(tik, head, digest, mnonce)


@dataclass(frozen=True)
class SecretHeader:
    flags: int
    iv: bytes
    mac: bytes

    def to_bytes(self) -> bytes:
        return struct.pack("<I", self.flags) + self.iv + self.mac

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretHeader:
        """Split a header whose length the caller has checked (SECRET_HEADER_LEN)."""
        return cls(struct.unpack_from("<I", data)[0], data[4:20], data[20:52])


def secret_mac(
    tik: bytes,
    flags: int,
    iv: bytes,
    guest_length: int,
    trans: bytes,
    measurement: bytes,
    api: tuple[int, int],
) -> bytes:
    """MAC = HMAC(TIK, 01 || u32le(FLAGS) || IV || u32le(GUEST_LEN) || u32le(TRANS_LEN)
    || TRANS || MEASURE); before API 0.17 MEASURE is not part of it."""
    head = SECRET_MAC_PREFIX + struct.pack("<I", flags) + iv
    lengths = struct.pack("<II", guest_length, len(trans))
    bound = measurement if api >= (0, 17) else b""
    return hmac_sha256(tik, head, lengths, trans, bound)
