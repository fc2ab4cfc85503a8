"""A configured vTPM (vdev.tpm.vtpm): boot, its sysfs files' contents, its control files."""

from __future__ import annotations

import errno
import hashlib
import json

import pytest

from tests.unit.tpm_helpers import extended, ok, refused, require_libtpms
from vdev.tpm import commands as cmd
from vdev.tpm.config import TpmConfig
from vdev.tpm.engine import Tpm
from vdev.tpm.vtpm import VTpm, open_engine

require_libtpms()


def test_boot_starts_the_tpm_and_finds_the_default_banks(vtpm: VTpm) -> None:
    assert isinstance(vtpm.engine, Tpm) and vtpm.engine.powered
    assert list(vtpm.pcr_banks) == ["pcr-sha1", "pcr-sha256", "pcr-sha384", "pcr-sha512"]
    # Started already: a second Startup is TPM_RC_INITIALIZE.
    assert cmd.response_code(vtpm.engine.execute(cmd.startup())) == cmd.TPM_RC_INITIALIZE


def test_configured_banks_are_the_only_ones_probed() -> None:
    tpm = VTpm(TpmConfig("t", pcr_banks=("sha256", "sha384")), 1, open_engine())
    try:
        tpm.boot()
        assert list(tpm.pcr_banks) == ["pcr-sha256", "pcr-sha384"]
        assert tpm.show_dev() == "253:1\n" and tpm.show_rm_dev() == "253:65537\n"
    finally:
        tpm.close()


def test_pcr_value_is_the_digest_in_upper_case_hex(vtpm: VTpm) -> None:
    digest = hashlib.sha256(b"measured").digest()
    ok(vtpm.engine.execute(cmd.pcr_extend(16, {"sha256": digest})))
    expected = extended("sha256", bytes(32), digest).hex().upper() + "\n"
    assert vtpm.pcr_banks["pcr-sha256"].show_pcr(16) == expected
    assert vtpm.pcr_value("sha1", 17) == "F" * 40 + "\n"
    assert vtpm.show_tpm_version_major() == "2\n" and vtpm.show_dev() == "10:224\n"
    assert vtpm.show_rm_dev() == "253:65536\n"


def test_powered_off_pcr_reads_time_out_and_power_is_idempotent(vtpm: VTpm) -> None:
    vtpm.store_power("0\n")
    vtpm.store_power("off")
    assert vtpm.show_power() == "0\n"
    error = refused(vtpm.pcr_value, "sha256", 0)
    assert error.errno == errno.ETIMEDOUT and "powered off" in error.message
    for control in (vtpm.store_reset, vtpm.store_established):
        error = refused(control, "1" if control == vtpm.store_reset else "0")
        assert error.errno == errno.ENODEV and "tpm0 is powered off" in error.message
    assert refused(vtpm.show_established).errno == errno.ENODEV
    vtpm.store_power("1\n")
    vtpm.store_power("y")
    assert vtpm.show_power() == "1\n" and vtpm.pcr_value("sha256", 0) == "0" * 64 + "\n"
    assert refused(vtpm.store_power, "2").errno == errno.EINVAL


def test_locality_is_checked_and_the_firmware_startup_stays_at_locality_0(vtpm: VTpm) -> None:
    for text, code in (("5", errno.EINVAL), ("", errno.EINVAL), ("1x", errno.EINVAL),
                       ("99999999999999999999", errno.ERANGE)):
        assert refused(vtpm.store_locality, text).errno == code, text
    assert vtpm.show_locality() == "0\n"
    vtpm.store_locality("0x2\n")
    # Startup from locality 2 would be TPM_RC_LOCALITY: a reset still boots.
    vtpm.store_reset("1")
    assert vtpm.show_locality() == "2\n"
    assert vtpm.pcr_value("sha256", 0) == "0" * 64 + "\n"


def test_established_is_set_by_a_hash_start_and_reset_from_locality_3(vtpm: VTpm) -> None:
    assert vtpm.show_established() == "0\n"
    vtpm.engine.hash_start()
    vtpm.engine.hash_end()
    assert vtpm.show_established() == "1\n"
    error = refused(vtpm.store_established, "0")
    assert error.errno == errno.EPERM and "locality 3 or 4" in error.message
    assert refused(vtpm.store_established, "1").errno == errno.EINVAL
    vtpm.store_locality("3")
    vtpm.store_established("0\n")
    assert vtpm.show_established() == "0\n"


def test_info_is_json_with_libtpms_and_the_configuration(vtpm: VTpm) -> None:
    info = json.loads(vtpm.show_info())
    assert info["name"] == "tpm0" and info["process"] == "in process"
    assert info["libtpms"]["version"].count(".") == 2
    assert info["pcr_banks"] == ["sha1", "sha256", "sha384", "sha512"]


def test_a_second_vtpm_in_this_process_runs_in_a_worker(vtpm: VTpm) -> None:
    second = VTpm(TpmConfig("other"), 1, open_engine())
    try:
        second.boot()
        assert json.loads(second.show_info())["process"] == "worker"
        assert second.pcr_value("sha256", 23) == "0" * 64 + "\n"
    finally:
        second.close()


def test_parse_pcr_allocation_skips_empty_and_unknown_banks() -> None:
    # GetCapability(PCRS) as libtpms answers after PCR_Allocate(sha256): sha1 empty,
    # plus a bank of an algorithm sysfs has no name for (SM3_256, 0x0012).
    body = bytes.fromhex("00" "00000005" "00000003" "000403000000" "000b03ffffff"
                         "001203ffffff")
    response = bytes.fromhex("8001") + (10 + len(body)).to_bytes(4, "big") + bytes(4) + body
    assert cmd.parse_pcr_allocation(response) == ["sha256"]
    with pytest.raises(ValueError, match="0x100"):
        cmd.parse_pcr_allocation(bytes.fromhex("80010000000a00000100"))
