"""PCR bank allocation at manufacture (vdev.tpm.provision), as a [[tpm]] table's pcr_banks."""

from __future__ import annotations

import hashlib
import struct

import pytest

from tests.unit.tpm_helpers import extended, ok, pcr, require_libtpms
from vdev.tpm import commands as cmd
from vdev.tpm.engine import Tpm, TpmState
from vdev.tpm.provision import allocate_pcr_banks
from vdev.tpm.worker import TpmWorker

require_libtpms()


def allocated(tpm: Tpm | TpmWorker) -> dict[str, bytes]:
    """Bank name -> PCR select bits, from GetCapability(PCRS)."""
    response = ok(tpm.execute(cmd.get_capability(cmd.TPM_CAP_PCRS, 0, 1)))
    (count,) = struct.unpack_from(">I", response, 15)
    names = {alg: name for name, (alg, _size) in cmd.HASH_ALGS.items()}
    banks, offset = {}, 19
    for _ in range(count):
        alg, size = struct.unpack_from(">HB", response, offset)
        banks[names[alg]] = response[offset + 3:offset + 3 + size]
        offset += 3 + size
    return banks


def test_allocate_only_sha256_and_keep_it_in_the_state() -> None:
    digest = hashlib.sha256(b"only bank").digest()
    with Tpm() as tpm:
        allocate_pcr_banks(tpm, ["sha256"])
        assert not tpm.powered
        tpm.power_on()
        ok(tpm.execute(cmd.startup()))
        assert allocated(tpm) == {"sha1": bytes(3), "sha256": b"\xff" * 3,
                                  "sha384": bytes(3), "sha512": bytes(3)}
        ok(tpm.execute(cmd.pcr_extend(16, {"sha256": digest})))
        assert pcr(tpm, "sha256", 16) == extended("sha256", bytes(32), digest)
        assert cmd.parse_pcr_read(ok(tpm.execute(cmd.pcr_read("sha1", [16])))) == []
        permanent = tpm.get_state().permanent
    with TpmWorker(TpmState(permanent)) as worker:  # the allocation is permanent state
        worker.power_on()
        ok(worker.execute(cmd.startup()))
        assert allocated(worker)["sha1"] == bytes(3)


def test_unknown_bank_is_refused_before_power_on() -> None:
    with Tpm() as tpm:
        with pytest.raises(ValueError, match="unknown PCR bank 'md5'"):
            allocate_pcr_banks(tpm, ["md5"])
        assert not tpm.powered
