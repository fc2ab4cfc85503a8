"""The cryptographic primitives of the SEV launch protocol, each behind a named function.

Owns: the KDF (NIST SP 800-108 counter mode over HMAC-SHA256 with AMD's little-endian counter
and length), AES-128-CTR, HMAC-SHA256, the P-384 ECDH shared secret, the guest-memory cipher,
and the little-endian big-integer encoding of SEV structures.  Everything is `cryptography`;
nothing else in ``vdev.sev`` touches a cipher object.  Must not know: certificates, sessions,
firmware state.

Lengths are checked here, once: a wrong key length is a programming error (``ValueError``),
not a firmware status.
"""

from __future__ import annotations

import hmac as _hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

KEY_LEN = 16  # TEK, TIK, KEK, KIK, VEK: AES-128 / 128-bit HMAC keys
BLOCK = 16  # the memory cipher's granularity (and the firmware's alignment rule)
CURVE = ec.SECP384R1()
COORD_LEN = 72  # a big integer's field in SEV structures; only 48 bytes count for P-384


def le_bytes(value: int, length: int = COORD_LEN) -> bytes:
    """A non-negative integer as SEV stores it: little-endian, zero-padded to ``length``."""
    return value.to_bytes(length, "little")


def le_int(data: bytes) -> int:
    return int.from_bytes(data, "little")


def hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    mac = chmac.HMAC(key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


def macs_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison, so a MAC check does not leak how many bytes matched."""
    return _hmac.compare_digest(a, b)


def kdf(key: bytes, label: bytes, context: bytes, length: int = KEY_LEN) -> bytes:
    """SEV's KDF: ``HMAC-SHA256(K, u32le(i) || label || 00 || context || u32le(L*8))``, i = 1..

    AMD writes the counter and the bit length little-endian, unlike SP 800-108's usual
    big-endian encoding (which is why a stock KBKDF does not reproduce it).
    """
    out = b""
    counter = 1
    while len(out) < length:
        out += hmac_sha256(
            key,
            counter.to_bytes(4, "little"),
            label,
            b"\x00",
            context,
            (length * 8).to_bytes(4, "little"),
        )
        counter += 1
    return out[:length]


def aes128_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128-CTR with the 16-byte IV as the initial counter block (encrypt == decrypt)."""
    if len(key) != KEY_LEN or len(iv) != BLOCK:
        raise ValueError(f"aes128_ctr: key {len(key)} and iv {len(iv)} bytes, need 16 and 16")
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctx.update(data) + ctx.finalize()


def ecdh_shared_x(
    private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey
) -> bytes:
    """Z: the x coordinate of the shared point, 48 bytes big-endian as OpenSSL returns it."""
    return private_key.exchange(ec.ECDH(), peer)


MEMORY_SLACK = BLOCK  # spare bytes after guest memory, see memory_crypt_in_place


def _memory_cipher(vek: bytes, address: int) -> CipherContext:
    """The emulated memory cipher at guest address ``address``.

    AES-128 in counter mode whose counter block is the 16-byte block index of the guest
    physical address: every 16-byte block is enciphered under the VEK with a tweak that
    depends only on its address (like the hardware's address-tweaked AES), so any 16-byte
    aligned range can be en- or decrypted on its own and a whole range is one AES call.
    Unlike the hardware's XEX mode it is malleable: an emulator, not a security boundary.
    """
    if address % BLOCK:
        raise ValueError(f"memory cipher: address {address:#x} is not 16-byte aligned")
    counter = (address // BLOCK).to_bytes(BLOCK, "big")
    return Cipher(algorithms.AES(vek), modes.CTR(counter)).encryptor()


def memory_crypt(vek: bytes, address: int, data: bytes | memoryview) -> bytes:
    """Encrypt (or decrypt: the same operation) ``data`` as if it sat at ``address``."""
    return _memory_cipher(vek, address).update(data)


def memory_crypt_in_place(vek: bytes, memory: bytearray, address: int, length: int) -> None:
    """Encrypt (or decrypt) ``memory[address:address+length]`` in place, without a copy.

    `cryptography`'s ``update_into`` wants room for one more block after the output, so
    guest memory is allocated with :data:`MEMORY_SLACK` spare bytes after its end.
    """
    with memoryview(memory) as view:
        _memory_cipher(vek, address).update_into(view[address : address + length], view[address:])


def sha256_context() -> hashes.Hash:
    """A running SHA-256 (the launch digest is one context extended by every update)."""
    return hashes.Hash(hashes.SHA256())


def sha256(*parts: bytes) -> bytes:
    ctx = sha256_context()
    for part in parts:
        ctx.update(part)
    return ctx.finalize()
