"""The vTPM controls of ``apfs/tpm/<name>/`` on the model (vdev.tpm.vtpm): cancel, the
locality-4 hash sequence, stateblob export/import, info's TPM properties, the EK certificate.

Real libtpms in this process and in worker processes; commands as raw bytes through
``VTpm.transmit`` (what every front end uses).
"""

from __future__ import annotations

import errno
import hashlib
import threading
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.tpm_helpers import booted, ok, refused, require_libtpms
from vdev.tpm import commands as cmd
from vdev.tpm.config import TpmConfig
from vdev.tpm.vtpm import VTpm

require_libtpms()

INDEX = 0x01000020


@pytest.fixture
def other() -> Iterator[VTpm]:
    """A second, fresh TPM (a worker process while ``vtpm`` holds this process's)."""
    tpm = booted(TpmConfig("other"))
    yield tpm
    tpm.close()


def pcr(tpm: VTpm, index: int) -> bytes:
    return cmd.parse_pcr_read(ok(tpm.transmit(cmd.pcr_read("sha256", [index]))))[0]


def test_hash_sequence_from_locality_4_lands_in_pcr_17_after_a_reset(vtpm: VTpm) -> None:
    vtpm.store_reset("1")
    assert pcr(vtpm, 17) == b"\xff" * 32
    vtpm.store_hash_start("1")
    vtpm.write_hash_data(0, b"kernel ")
    vtpm.write_hash_data(7, b"\x00initrd")  # binary, as written
    vtpm.store_hash_end("1")
    digest = hashlib.sha256(b"kernel \x00initrd").digest()
    assert pcr(vtpm, 17) == hashlib.sha256(bytes(32) + digest).digest()
    assert vtpm.show_established() == "1\n"


def test_hash_controls_refuse_while_powered_off(vtpm: VTpm) -> None:
    vtpm.store_power("0")
    for call, arg in ((vtpm.store_hash_start, "1"), (vtpm.store_hash_end, "1"),
                      (vtpm.store_cancel, "1")):
        error = refused(call, arg)
        assert error.errno == errno.ENODEV and "powered off" in error.message
    assert refused(vtpm.write_hash_data, 0, b"x").errno == errno.ENODEV


def test_cancel_stops_a_running_create_primary(vtpm: VTpm) -> None:
    """store_cancel must not wait behind the command it cancels (it holds the queue)."""
    responses: list[bytes] = []
    thread = threading.Thread(
        target=lambda: responses.append(vtpm.transmit(cmd.create_primary("rsa3072"))))
    thread.start()
    while thread.is_alive():  # a cancel before the command starts is forgotten: repeat
        vtpm.store_cancel("1")
        thread.join(0.005)
    assert cmd.response_code(responses[0]) == cmd.TPM_RC_CANCELED


def test_stateblob_export_import_into_a_fresh_tpm_keeps_nv(vtpm: VTpm, other: VTpm) -> None:
    ok(vtpm.transmit(cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, 8, cmd.NV_ORDINARY_OWNER)))
    ok(vtpm.transmit(cmd.nv_write(INDEX, INDEX, b"migrated")))
    blob = vtpm.read_stateblob()
    assert blob.startswith(b"apfs-tpm-state 1 ")

    assert refused(other.write_stateblob, 0, blob).errno == errno.EBUSY  # powered on
    other.store_power("0")
    for offset in range(0, len(blob), 1000):  # in pieces, as `cat blob > stateblob` writes
        other.write_stateblob(offset, blob[offset:offset + 1000])
    other.store_power("1")
    data = cmd.parse_nv_read(ok(other.transmit(cmd.nv_read(INDEX, INDEX, 8))))
    assert data == b"migrated"
    # The live export carried the volatile state: the TPM resumed, started already.
    assert cmd.response_code(other.transmit(cmd.startup())) == cmd.TPM_RC_INITIALIZE


def test_stateblob_import_refusals_change_nothing(other: VTpm) -> None:
    other.store_power("0")
    blob = other.read_stateblob()
    assert refused(other.write_stateblob, 0, b"garbage\n").errno == errno.EINVAL
    damaged = blob[:-1] + bytes([blob[-1] ^ 1])
    error = refused(other.write_stateblob, 0, damaged)
    assert error.errno == errno.EINVAL and error.message.startswith("stateblob: corrupted")
    other.write_stateblob(0, blob[:100])
    error = refused(other.write_stateblob, 500, blob[500:])
    assert error.errno == errno.EINVAL and "sequential" in error.message
    other.store_power("1")  # still the TPM it was
    assert other.read_stateblob()[:40] != b""


def test_info_shows_the_tpm_properties(vtpm: VTpm) -> None:
    import json
    props = json.loads(vtpm.show_info())["tpm_properties"]
    assert props["family"] == "2.0" and props["manufacturer"] == "IBM"
    assert props["vendor_string"].startswith("SW")
    assert props["firmware_version"].startswith("0x")
    vtpm.store_power("0")
    assert "powered off" in json.loads(vtpm.show_info())["tpm_properties"]


def test_ek_certificate_in_nv_holds_the_eks_public_key() -> None:
    tpm = booted(TpmConfig("ek", ek_certificate=True))
    try:
        index = cmd.EK_RSA2048_CERT_INDEX
        head = cmd.parse_nv_read(ok(tpm.transmit(cmd.nv_read(index, index, 4))))
        assert head[:2] == b"\x30\x82"  # a DER SEQUENCE with a two-byte length
        size = 4 + int.from_bytes(head[2:4], "big")
        der = b"".join(cmd.parse_nv_read(ok(tpm.transmit(
            cmd.nv_read(index, index, min(1024, size - offset), offset))))
            for offset in range(0, size, 1024))
        certificate = x509.load_der_x509_certificate(der)
        assert "not a TPM vendor" in certificate.issuer.rfc4514_string()
        # tpm2_createek's CreatePrimary with the default template: the same key.
        response = ok(tpm.transmit(cmd.create_ek_rsa2048()))
        modulus = cmd.rsa_modulus(cmd.public_area(response, cmd.HEADER_SIZE + 8))
        key = certificate.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.public_numbers().n == int.from_bytes(modulus, "big")
        assert key.public_numbers().e == 65537
        # Platform-written and locked, as swtpm_setup leaves it.
        locked = tpm.transmit(cmd.nv_write(cmd.TPM_RH_PLATFORM, index, b"x"))
        assert cmd.response_code(locked) == 0x148  # TPM_RC_NV_LOCKED
    finally:
        tpm.close()
