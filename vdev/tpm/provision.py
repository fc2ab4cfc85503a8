"""Manufacturing choices applied to a fresh TPM, as swtpm_setup does for swtpm.

Owns: :func:`allocate_pcr_banks` (a ``[[tpm]]`` table's ``pcr_banks``).  EK creation and its
certificate (``ek_certificate``) are not done yet.
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


def _expect(tpm: TpmEngine, what: str, command: bytes) -> bytes:
    response = tpm.execute(command)
    rc = commands.response_code(response)
    if rc != commands.TPM_RC_SUCCESS:
        raise TpmError(errno.EIO, f"{what}: TPM response code {rc:#x}")
    return response
