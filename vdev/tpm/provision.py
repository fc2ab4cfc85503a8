"""Manufacturing choices applied to a fresh TPM, as swtpm_setup does for swtpm.

Owns: :func:`allocate_pcr_banks` (a ``[[tpm]]`` table's ``pcr_banks``) and
:func:`provision_ek_certificate` (``ek_certificate``).
"""

from __future__ import annotations

import errno
import struct

from vdev.tpm import commands
from vdev.tpm.engine import TpmEngine
from vdev.tpm.errors import TpmError


def allocate_pcr_banks(tpm: TpmEngine, banks: list[str]) -> None:
    """Allocate exactly ``banks`` (24 PCRs each) on a powered-off TPM; leaves it powered off.

    PCR_Allocate takes effect at the next _TPM_Init, so: power on, Startup(CLEAR),
    PCR_Allocate, Shutdown(CLEAR), power off; the next power-on has the new banks.
    """
    allocate = commands.pcr_allocate(banks)  # ValueError for an unknown bank, before power-on
    tpm.power_on()
    try:
        _expect(tpm, "Startup(CLEAR)", commands.startup())
        response = _expect(tpm, f"PCR_Allocate({', '.join(banks)})", allocate)
        # Response parameters (after u32 parameterSize): allocationSuccess, maxPCR,
        # sizeNeeded, sizeAvailable.
        success, _max_pcr, needed, available = struct.unpack_from(
            ">BIII", response, commands.HEADER_SIZE + 4)
        if not success:
            raise TpmError(errno.ENOSPC,
                           f"PCR_Allocate({', '.join(banks)}): the TPM needs {needed} bytes "
                           f"of PCR memory and has {available}")
        _expect(tpm, "Shutdown(CLEAR)", commands.shutdown())
    finally:
        tpm.power_off()


NV_CHUNK = 1024
"""Bytes per NV_Write: libtpms's MAX_NV_BUFFER_SIZE (TPM_PT_NV_BUFFER_MAX)."""
EK_CERT_NV_ATTRIBUTES = (
    commands.TPMA_NV_PLATFORMCREATE | commands.TPMA_NV_AUTHREAD | commands.TPMA_NV_OWNERREAD
    | commands.TPMA_NV_PPREAD | commands.TPMA_NV_PPWRITE | commands.TPMA_NV_NO_DA
    | commands.TPMA_NV_WRITEDEFINE)
"""swtpm_setup's EK certificate index: platform-created, readable by owner and with the
index's empty auth, written once by the platform and then locked."""


def provision_ek_certificate(tpm: TpmEngine) -> None:
    """On a powered-off new TPM: create the default RSA 2048 EK, issue its certificate
    (:mod:`vdev.tpm.ekcert`) and store it in NV index 0x01C00002, write-locked, as
    ``swtpm_setup --create-ek-cert`` does; leaves the TPM powered off.  The EK itself is
    not kept: the same template recreates it from the endorsement seed (tpm2_createek)."""
    # Imported here: cryptography's X.509 costs ~30 ms of start-up that every apfs command
    # (the CLI imports the host) would pay for a feature few TPMs are configured with.
    from vdev.tpm.ekcert import ek_certificate

    tpm.power_on()
    try:
        _expect(tpm, "Startup(CLEAR)", commands.startup())
        response = _expect(tpm, "CreatePrimary(EK RSA 2048)", commands.create_ek_rsa2048())
        handle = commands.created_handle(response)
        public = commands.public_area(response, commands.HEADER_SIZE + 8)
        _expect(tpm, "FlushContext(EK)", commands.flush_context(handle))
        der = ek_certificate(commands.rsa_modulus(public))
        index = commands.EK_RSA2048_CERT_INDEX
        platform = commands.TPM_RH_PLATFORM
        _expect(tpm, f"NV_DefineSpace({index:#x})",
                commands.nv_define_space(platform, index, len(der), EK_CERT_NV_ATTRIBUTES))
        for offset in range(0, len(der), NV_CHUNK):
            _expect(tpm, f"NV_Write({index:#x})",
                    commands.nv_write(platform, index, der[offset:offset + NV_CHUNK], offset))
        _expect(tpm, f"NV_WriteLock({index:#x})", commands.nv_write_lock(platform, index))
        _expect(tpm, "Shutdown(CLEAR)", commands.shutdown())
    finally:
        tpm.power_off()


def _expect(tpm: TpmEngine, what: str, command: bytes) -> bytes:
    response = tpm.execute(command)
    rc = commands.response_code(response)
    if rc != commands.TPM_RC_SUCCESS:
        raise TpmError(errno.EIO, f"{what}: TPM response code {rc:#x}")
    return response
