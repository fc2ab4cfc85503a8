"""The guest owner's side of an attested SEV launch (what sevctl and libvirt's
virt-qemu-sev-validate do on the owner's machine).

Owns: verifying a platform's PDH certificate chain, building a launch session (GODH key pair,
session blob, TEK/TIK), the expected launch digest and measurement, verifying a measurement,
and packaging a secret (sevctl's secret table) as a LAUNCH_SECRET header and payload.  Must
not know: the firmware's internals (it sees only what the platform exports), files, FUSE.

Chains made by apfs end at apfs's **emulated** ASK/ARK (:mod:`vdev.sev.keys`): verifying one
against AMD's real ARK fails, as it should.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from vdev.sev import keys as sevkeys
from vdev.sev import session as proto
from vdev.sev.cert import CERT_LEN, Algo, Certificate, Usage
from vdev.sev.crypto import BLOCK, KEY_LEN, aes128_ctr, ecdh_shared_x, macs_equal, sha256
from vdev.sev.kernel_hashes import kernel_hashes_table
from vdev.sev.ovmf import hash_table_area
from vdev.sev.status import SevError, Status

SECRET_TABLE_GUID = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")
# sevctl's well-known entry for a disk passphrase (an example of an entry GUID).
DISK_PASSPHRASE_GUID = uuid.UUID("736869e5-84f0-4973-92ec-06879ce3da0b")


def _link(child: Certificate, issuer: Certificate, what: str) -> None:
    if not child.is_signed_by(issuer):
        raise SevError(Status.BAD_SIGNATURE, f"chain: {what}")


def _expect(cert: Certificate, usage: Usage, what: str) -> None:
    if cert.usage != usage:
        raise SevError(
            Status.INVALID_CERTIFICATE,
            f"chain: {what} has usage {cert.usage:#x}, need {usage.name} {int(usage):#x}",
        )


def verify_chain(
    pdh_cert: bytes,
    chain: bytes,
    ask: Certificate | None = None,
    ark: Certificate | None = None,
) -> Certificate:
    """Verify PDH ← PEK ← (OCA, CEK ← ASK ← ARK); returns the PDH certificate.

    ``chain`` is PDH_CERT_EXPORT's ``PEK || OCA || CEK``; ``ask``/``ark`` default to apfs's
    emulated ones.  A broken link raises SevError BAD_SIGNATURE naming it; a certificate in
    the wrong place INVALID_CERTIFICATE.
    """
    if len(chain) != 3 * CERT_LEN:
        raise SevError(
            Status.INVALID_LENGTH,
            f"chain: {len(chain)} bytes, PEK || OCA || CEK is {3 * CERT_LEN}",
        )
    pdh = Certificate.from_bytes(pdh_cert, "PDH certificate")
    pek, oca, cek = (
        Certificate.from_bytes(chain[i * CERT_LEN : (i + 1) * CERT_LEN], name)
        for i, name in enumerate(("chain PEK", "chain OCA", "chain CEK"))
    )
    ask = ask or sevkeys.emulated_ask().cert
    ark = ark or sevkeys.emulated_ark().cert
    for cert, usage, name in (
        (pdh, Usage.PDH, "PDH"),
        (pek, Usage.PEK, "PEK"),
        (oca, Usage.OCA, "OCA"),
        (cek, Usage.CEK, "CEK"),
        (ask, Usage.ASK, "ASK"),
        (ark, Usage.ARK, "ARK"),
    ):
        _expect(cert, usage, name)
    _link(ark, ark, "the ARK is not self-signed")
    _link(ask, ark, "the ASK is not signed by the ARK")
    _link(cek, ask, "the CEK is not signed by the ASK (not this platform vendor's chip)")
    _link(oca, oca, "the OCA is not self-signed")
    _link(pek, oca, "the PEK is not signed by the OCA")
    _link(pek, cek, "the PEK is not signed by the CEK")
    _link(pdh, pek, "the PDH is not signed by the PEK")
    pdh.public_key("PDH certificate")
    return pdh


@dataclass(frozen=True)
class OwnerSession:
    """What sevctl's ``session`` writes: vm_godh.b64, vm_session.b64, vm_tek.bin, vm_tik.bin."""

    policy: int
    godh_cert: bytes
    session: bytes
    tek: bytes
    tik: bytes


def godh_certificate(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The owner's DH certificate: usage PDH, ECDH, both slots empty, API 0.0 (as sevctl)."""
    return Certificate.for_key(Usage.PDH, Algo.ECDH_SHA256, public_key, (0, 0)).to_bytes()


def build_session(
    pdh_cert: bytes,
    policy: int,
    *,
    tek: bytes | None = None,
    tik: bytes | None = None,
    nonce: bytes | None = None,
    iv: bytes | None = None,
) -> OwnerSession:
    """A fresh GODH key pair and session blob for ``policy`` against this PDH (verify the
    chain first with :func:`verify_chain`).  TEK, TIK, nonce and IV are random unless given."""
    pdh = Certificate.from_bytes(pdh_cert, "PDH certificate")
    godh = sevkeys.new_private_key()
    keys = proto.TransportKeys(tek or os.urandom(KEY_LEN), tik or os.urandom(KEY_LEN))
    nonce = nonce or os.urandom(proto.NONCE_LEN)
    wrap = proto.derive_wrap_keys(ecdh_shared_x(godh, pdh.public_key("PDH certificate")), nonce)
    blob = proto.wrap_session(wrap, keys, nonce, iv or os.urandom(proto.IV_LEN), policy)
    return OwnerSession(
        policy, godh_certificate(godh.public_key()), blob.to_bytes(), keys.tek, keys.tik
    )


@dataclass(frozen=True)
class DraftLaunch:
    """The seed's 2016 draft inputs (``dh_pub_qx``/``dh_pub_qy``/``nonce``) and the transport
    keys both sides derive from them (TEK = KEK, TIK = KIK: the draft wraps no keys)."""

    policy: int
    godh_cert: bytes
    nonce: bytes
    tek: bytes
    tik: bytes


def build_draft_launch(pdh_cert: bytes, policy: int, nonce: bytes | None = None) -> DraftLaunch:
    pdh = Certificate.from_bytes(pdh_cert, "PDH certificate")
    godh = sevkeys.new_private_key()
    nonce = nonce or os.urandom(proto.NONCE_LEN)
    wrap = proto.derive_wrap_keys(ecdh_shared_x(godh, pdh.public_key("PDH certificate")), nonce)
    return DraftLaunch(policy, godh_certificate(godh.public_key()), nonce, wrap.kek, wrap.kik)


def launch_digest(
    firmware: bytes,
    kernel: bytes | None = None,
    initrd: bytes | None = None,
    cmdline: str | bytes | None = None,
    vmsas: Sequence[bytes] = (),
) -> bytes:
    """LD of a SEV launch: sha256(firmware [|| kernel-hashes table] [|| VMSAs]), as QEMU
    measures it; ``vmsas`` are SEV-ES's LAUNCH_UPDATE_VMSA pages, one per vCPU, in order.

    A kernel needs a firmware whose footer table has the SEV hash-table area (QEMU refuses
    ``kernel-hashes=on`` otherwise); initrd and cmdline only count with a kernel.
    """
    if kernel is None:
        return sha256(firmware, *vmsas)
    if hash_table_area(firmware) is None:
        raise ValueError(
            "launch digest: the firmware has no SEV hash-table entry in its footer table, "
            "it cannot measure a kernel"
        )
    return sha256(firmware, kernel_hashes_table(kernel, initrd, cmdline), *vmsas)


def expected_measurement(
    tik: bytes,
    digest: bytes,
    mnonce: bytes,
    policy: int,
    api: tuple[int, int],
    build: int,
) -> bytes:
    """The 32-byte MEASURE the firmware must report for launch digest ``digest``."""
    return proto.measure(tik, api, build, policy, digest, mnonce)


def verify_measurement(
    measurement: bytes,
    tik: bytes,
    digest: bytes,
    policy: int,
    api: tuple[int, int],
    build: int,
) -> bool:
    """True if ``measurement`` (LAUNCH_MEASURE's 48 bytes) is this launch's, for this
    launch digest, policy and firmware version."""
    if len(measurement) != proto.MEASURE_LEN + proto.MNONCE_LEN:
        return False
    measure, mnonce = measurement[: proto.MEASURE_LEN], measurement[proto.MEASURE_LEN :]
    expected = expected_measurement(tik, digest, mnonce, policy, api, build)
    return macs_equal(expected, measure)


def secret_table(entries: Mapping[uuid.UUID, bytes]) -> bytes:
    """sevctl's secret table: header GUID, u32 total length (without padding), entries
    ``GUID | u32 (20 + len) | data``; then 1 to 16 zero bytes up to a multiple of 16 (sevctl
    pads ``16 - len % 16``: a table already a multiple of 16 gets 16 more)."""
    body = b"".join(
        guid.bytes_le + struct.pack("<I", 16 + 4 + len(data)) + data
        for guid, data in entries.items()
    )
    table = SECRET_TABLE_GUID.bytes_le + struct.pack("<I", 16 + 4 + len(body)) + body
    return table + bytes(BLOCK - len(table) % BLOCK)


@dataclass(frozen=True)
class PackagedSecret:
    """LAUNCH_SECRET's inputs: QEMU's ``packet-header`` and ``secret`` (before base64)."""

    header: bytes
    trans: bytes


def package_secret(
    plaintext: bytes,
    tek: bytes,
    tik: bytes,
    measurement: bytes,
    api: tuple[int, int],
    iv: bytes | None = None,
) -> PackagedSecret:
    """Encrypt ``plaintext`` with TEK and MAC it with TIK, bound to ``measurement`` (the
    48-byte LAUNCH_MEASURE reply or its 32-byte MEASURE)."""
    iv = iv or os.urandom(proto.IV_LEN)
    trans = aes128_ctr(tek, iv, plaintext)
    measure = measurement[: proto.MEASURE_LEN]
    mac = proto.secret_mac(tik, 0, iv, len(trans), trans, measure, api)
    return PackagedSecret(proto.SecretHeader(0, iv, mac).to_bytes(), trans)
