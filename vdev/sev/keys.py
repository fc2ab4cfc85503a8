"""The emulated SEV key hierarchy: ARK, ASK, CEK, OCA, PEK, PDH.

Owns: how each key is made and certified.  Must not know: when (that is the platform state
machine in :mod:`vdev.sev.platform`), files, FUSE.

- **ARK, ASK**: AMD's root and signing keys.  Real ones are RSA keys in AMD's own format; the
  emulated ones are **apfs's own**, P-384 keys in the 0x824 format (usages ARK 0x0000, ASK
  0x0013), derived from a published constant, so every apfs instance has the same emulated
  ARK/ASK and nothing made here verifies against AMD's.  :func:`emulated_ark` says so in its
  name; an owner verifying an apfs chain anchors it at :func:`emulated_ask`.
- **CEK**: the chip endorsement key, derived from the chip's unique seed (fused on hardware:
  it survives PLATFORM_RESET), signed by the ASK.
- **OCA**: the owner's certificate authority; self-signed while the platform is self-owned.
- **PEK**: signed by the OCA (slot 1) and the CEK (slot 2).
- **PDH**: the Diffie-Hellman key guest owners agree a session with; signed by the PEK.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vdev.sev.cert import Algo, Certificate, Usage
from vdev.sev.crypto import CURVE

# Published on purpose: the emulated AMD keys are not secret, they only make chains verify.
EMULATED_AMD_SEED = b"apfs emulated AMD root of trust - NOT an AMD key"
# secp384r1 group order: a derived scalar is reduced into [1, n-1].
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)
EMULATED_AMD_API = (0, 0)


@dataclass(frozen=True)
class KeyPair:
    """A key and its certificate.  ``private`` is None for a key held elsewhere (an owner's
    OCA after PEK_CERT_IMPORT: the platform keeps only its certificate)."""

    private: ec.EllipticCurvePrivateKey | None
    cert: Certificate

    def private_scalar(self) -> int | None:
        return None if self.private is None else self.private.private_numbers().private_value


def derive_private_key(seed: bytes, label: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-384 key determined by ``seed`` and ``label`` (HKDF-SHA384, reduced mod n)."""
    material = HKDF(hashes.SHA384(), 64, salt=None, info=label).derive(seed)
    scalar = int.from_bytes(material, "big") % (P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, CURVE)


def key_from_scalar(scalar: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(scalar, CURVE)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE)


def emulated_ark() -> KeyPair:
    """apfs's emulated ARK (not AMD's): self-signed."""
    key = derive_private_key(EMULATED_AMD_SEED, b"ARK")
    cert = Certificate.for_key(Usage.ARK, Algo.ECDSA_SHA256, key.public_key(), EMULATED_AMD_API)
    return KeyPair(key, cert.signed(1, Usage.ARK, key))


def emulated_ask() -> KeyPair:
    """apfs's emulated ASK (not AMD's): signed by :func:`emulated_ark`."""
    ark = emulated_ark()
    key = derive_private_key(EMULATED_AMD_SEED, b"ASK")
    cert = Certificate.for_key(Usage.ASK, Algo.ECDSA_SHA256, key.public_key(), EMULATED_AMD_API)
    assert ark.private is not None
    return KeyPair(key, cert.signed(1, Usage.ARK, ark.private))


def make_cek(chip_seed: bytes, api: tuple[int, int]) -> KeyPair:
    """The chip's CEK, derived from its unique seed, signed by the emulated ASK."""
    ask = emulated_ask()
    key = derive_private_key(chip_seed, b"CEK")
    cert = Certificate.for_key(Usage.CEK, Algo.ECDSA_SHA256, key.public_key(), api)
    assert ask.private is not None
    return KeyPair(key, cert.signed(1, Usage.ASK, ask.private))


def make_oca(api: tuple[int, int]) -> KeyPair:
    """A fresh self-signed OCA (the platform owns itself)."""
    key = new_private_key()
    cert = Certificate.for_key(Usage.OCA, Algo.ECDSA_SHA256, key.public_key(), api)
    return KeyPair(key, cert.signed(1, Usage.OCA, key))


def make_pek(oca: KeyPair, cek: KeyPair, api: tuple[int, int]) -> KeyPair:
    """A fresh PEK signed by the OCA (slot 1) and the CEK (slot 2)."""
    if oca.private is None or cek.private is None:
        raise ValueError("make_pek: the OCA and CEK private keys are needed to sign a PEK")
    key = new_private_key()
    cert = Certificate.for_key(Usage.PEK, Algo.ECDSA_SHA256, key.public_key(), api)
    cert = cert.signed(1, Usage.OCA, oca.private).signed(2, Usage.CEK, cek.private)
    return KeyPair(key, cert)


def make_pdh(pek: KeyPair, api: tuple[int, int]) -> KeyPair:
    """A fresh PDH (an ECDH key) signed by the PEK."""
    assert pek.private is not None
    key = new_private_key()
    cert = Certificate.for_key(Usage.PDH, Algo.ECDH_SHA256, key.public_key(), api)
    return KeyPair(key, cert.signed(1, Usage.PEK, pek.private))
