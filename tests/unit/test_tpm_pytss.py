"""The EK certificate and ``--state`` seen by a real TSS: tpm2-pytss's ESAPI.

tpm2-pytss drives the vTPM through a ``PyTCTI`` whose transmit is ``VTpm.transmit`` (the
path every front end takes), with its own command marshalling, sessions and templates: the
EK certificate is read and the EK created the way tpm2-tools' ``tpm2_getekcertificate`` /
``tpm2_createek`` do (``tpm2_pytss.utils.create_ek_template``, ``NVReadEK``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC, TPMT_SYM_DEF
from tpm2_pytss.constants import TPM2_ALG, TPM2_SE, TPMA_NV
from tpm2_pytss.TCTI import PyTCTI
from tpm2_pytss.utils import NVReadEK, create_ek_template

from apfs.host import build_host
from tests.unit.tpm_helpers import require_libtpms
from vdev.ap.host import DEFAULT_HOST_TOML
from vdev.tpm.vtpm import VTpm

require_libtpms()

EK_HOST = DEFAULT_HOST_TOML + '[[tpm]]\nname = "tpm0"\nek_certificate = true\n'
INDEX = 0x01000050


class VTpmTcti(PyTCTI):
    """A TCTI whose TPM is a :class:`VTpm` in this process."""

    def __init__(self, tpm: VTpm) -> None:
        super().__init__()
        self._tpm = tpm
        self._response = b""

    def do_transmit(self, command: bytes) -> None:
        self._response = self._tpm.transmit(bytes(command))

    def do_receive(self, timeout: int) -> bytes:
        return self._response


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(EK_HOST)
    return path


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


def esapi(tpm: VTpm) -> ESAPI:
    return ESAPI(VTpmTcti(tpm))


def test_ek_certificate_matches_the_ek_tpm2_pytss_creates(config: Path, state: Path) -> None:
    host = build_host(str(config), None, state)
    try:
        ectx = esapi(host.tpms["tpm0"])
        der, template = create_ek_template("EK-RSA2048", NVReadEK(ectx))
        certificate = x509.load_der_x509_certificate(der)
        handle, public, _, _, _ = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        assert public.publicArea.type == TPM2_ALG.RSA
        key = certificate.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.public_numbers().n == int.from_bytes(bytes(public.publicArea.unique.rsa),
                                                        "big")
        ectx.flush_context(handle)
        ectx.close()
    finally:
        host.close()
    # The certificate is manufactured once: after a restart it is the same one.
    again = build_host(str(config), None, state)
    try:
        ectx = esapi(again.tpms["tpm0"])
        assert create_ek_template("EK-RSA2048", NVReadEK(ectx))[0] == der
        ectx.close()
    finally:
        again.close()


def test_nv_written_with_hmac_sessions_survives_a_restart(state: Path) -> None:
    host = build_host(None, None, state)
    try:
        ectx = esapi(host.tpms["tpm0"])
        session = ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
                                          TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                          TPM2_ALG.SHA256)
        public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=INDEX, nameAlg=TPM2_ALG.SHA256, dataSize=16,
            attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD
            | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA))
        nv = ectx.nv_define_space(None, public, session1=session)
        ectx.nv_write(nv, b"durable by pytss", 0, session1=session)
        ectx.close()
    finally:
        host.close()
    again = build_host(None, None, state)
    try:
        ectx = esapi(again.tpms["tpm0"])
        nv = ectx.tr_from_tpmpublic(INDEX)
        assert bytes(ectx.nv_read(nv, 16, 0)) == b"durable by pytss"
        ectx.close()
    finally:
        again.close()
