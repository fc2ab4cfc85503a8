"""The vTPM in the mount: sysfs as Linux shows a TPM 2.0, and apfs/tpm/<name>/ controls.

Shell lines in, file contents and errnos out, on real mounts of the default host (which has
one vTPM, ``tpm0``) and of TOML hosts with other ``[[tpm]]`` tables.
"""

from __future__ import annotations

import errno
import json
import os
import re

import pytest
from conftest import Mount, MountFactory
from helpers import write_error

from apfs.testing import MountError
from vdev.ap.host import DEFAULT_HOST_TOML
from vdev.tpm.libtpms import libtpms

TPM0 = "sys/class/tpm/tpm0"
CTL = "apfs/tpm/tpm0"
ZERO256 = "0" * 64


def test_pcrs_of_every_allocated_bank_read_as_upper_case_hex(mount: Mount) -> None:
    shell = mount.bash(f"cd {TPM0} && cat tpm_version_major dev && ls && "
                       "cat pcr-sha256/* && cat pcr-sha1/17 pcr-sha256/0")
    assert shell.returncode == 0, shell.stderr
    out = shell.stdout.splitlines()
    assert out[:2] == ["2", "10:224"]
    assert out[2:9] == ["dev", "device", "pcr-sha1", "pcr-sha256", "pcr-sha384",
                        "pcr-sha512", "tpm_version_major"]
    pcrs = out[-26:-2]
    assert len(pcrs) == 24 and all(re.fullmatch("[0-9A-F]{64}", p) for p in pcrs)
    # `cat pcr-sha256/*` sorts names as text (0 1 10 11 ... 2 20 ...): 17-22 start with F.
    assert out[-2:] == ["F" * 40, ZERO256]  # after Startup(CLEAR): 17 ones, 0 zeros


def test_sysfs_layout_and_links_are_the_kernels(mount: Mount) -> None:
    shell = mount.bash("readlink sys/class/tpm/tpm0 sys/class/tpmrm/tpmrm0 "
                       f"{TPM0}/device; cat sys/class/tpmrm/tpmrm0/dev "
                       f"{TPM0}/device/device; ls {TPM0}/pcr-sha384 | wc -l")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == [
        "../../devices/platform/virtio-mmio.0/virtio0/tpm/tpm0",
        "../../devices/platform/virtio-mmio.0/virtio0/tpmrm/tpmrm0",
        "../../../virtio0",
        "253:65536",
        "0x001f",
        "24",
    ]


def test_power_off_makes_pcr_reads_time_out_and_power_on_brings_them_back(
        mount: Mount) -> None:
    shell = mount.bash(f"cat {CTL}/power; echo 0 > {CTL}/power; cat {CTL}/power; "
                       f"cat {TPM0}/pcr-sha256/0")
    assert shell.returncode != 0
    assert shell.stdout.splitlines() == ["1", "0"]
    assert f"pcr-sha256/0: {os.strerror(errno.ETIMEDOUT)}" in shell.stderr
    logged = [line for line in mount.log().splitlines() if "read refused" in line]
    assert len(logged) == 1
    assert "tpm/tpm0/pcr-sha256/0: read refused with ETIMEDOUT" in logged[0]
    assert "powered off" in logged[0]
    shell = mount.bash(f"echo 1 > {CTL}/power && cat {CTL}/power {TPM0}/pcr-sha256/0")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["1", ZERO256]


def test_locality_refusals_and_a_reset_boots_at_locality_0(mount: Mount) -> None:
    for value, code in (("5", errno.EINVAL), ("-1", errno.EINVAL), ("x", errno.EINVAL)):
        shell = mount.bash(f"echo {value} > {CTL}/locality")
        assert write_error(code) in shell.stderr, (value, shell.stderr)
    assert [r.errno for r in mount.refusals()] == [errno.EINVAL] * 3
    assert "locality 5 is outside 0..4" in mount.refusals()[0].message
    # The firmware's Startup after a reset stays at locality 0 (PCR 0's last byte): from
    # locality 2 the TPM would refuse it.
    shell = mount.bash(f"echo 2 > {CTL}/locality && echo 1 > {CTL}/reset && "
                       f"cat {CTL}/locality {TPM0}/pcr-sha256/0")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["2", ZERO256]


def test_established_resets_from_locality_3_only(mount: Mount) -> None:
    shell = mount.bash(f"cat {CTL}/established; echo 0 > {CTL}/established; "
                       f"echo 1 > {CTL}/established")
    assert shell.stdout.splitlines() == ["0"]
    assert write_error(errno.EPERM) in shell.stderr
    assert write_error(errno.EINVAL) in shell.stderr
    assert "needs locality 3 or 4" in mount.refusals()[0].message
    shell = mount.bash(f"echo 3 > {CTL}/locality && echo 0 > {CTL}/established && "
                       f"cat {CTL}/established")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == "0\n"


def test_control_refusals_while_powered_off(mount: Mount) -> None:
    shell = mount.bash(f"echo 0 > {CTL}/power; echo 0 > {CTL}/power; echo 1 > {CTL}/reset; "
                       f"echo off > {CTL}/power; echo maybe > {CTL}/power; "
                       f"cat {CTL}/established")
    # power 0 twice is fine; reset and established need power, as an offline device.
    assert shell.stderr.count(write_error(errno.ENODEV)) == 1
    assert f"established: {os.strerror(errno.ENODEV)}" in shell.stderr
    assert write_error(errno.EINVAL) in shell.stderr
    assert [(r.path, r.errno) for r in mount.refusals()] == [
        (f"{CTL}/reset", errno.ENODEV), (f"{CTL}/power", errno.EINVAL)]
    assert "reset: tpm0 is powered off" in mount.refusals()[0].message


def test_info_names_libtpms_and_the_tpm(mount: Mount) -> None:
    shell = mount.bash(f"cat {CTL}/info; cat {CTL}/reset")
    assert shell.returncode != 0  # reset is write-only
    info = json.loads(shell.stdout)
    assert info["libtpms"]["version"] == libtpms().version()
    assert info["TPMSpecification"]["family"] == "2.0"
    assert info["name"] == "tpm0" and info["device"] == "tpm0"
    assert info["pcr_banks"] == ["sha1", "sha256", "sha384", "sha512"]


TWO_TPMS = DEFAULT_HOST_TOML + """
[[tpm]]
name = "boot"
pcr_banks = ["sha256"]

[[tpm]]
name = "second"
"""


def test_two_tpms_the_second_in_a_worker_with_its_own_banks(
        mount_factory: MountFactory) -> None:
    mount = mount_factory(TWO_TPMS)
    shell = mount.bash("ls sys/class/tpm apfs/tpm sys/class/tpm/tpm0; "
                       "cat sys/class/tpm/tpm1/dev sys/class/tpmrm/tpmrm1/dev "
                       "sys/class/tpm/tpm1/pcr-sha1/0 apfs/tpm/second/power")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == [
        "apfs/tpm:", "boot", "second", "sys/class/tpm:", "tpm0", "tpm1",
        "sys/class/tpm/tpm0:", "dev", "device", "pcr-sha256", "tpm_version_major",
        "253:1", "253:65537", "0" * 40, "1"]
    assert json.loads(mount.read("apfs/tpm/second/info"))["process"] == "worker"
    # Powering one off leaves the other alone.
    shell = mount.bash("echo 0 > apfs/tpm/boot/power; cat sys/class/tpm/tpm1/pcr-sha256/0")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == ZERO256 + "\n"


@pytest.mark.parametrize(("table", "error"), [
    ('name = "tpm0"\nversion = "1.2"', "tpm[0].version: '1.2' is not supported"),
    ('name = "a/b"', "tpm[0].name: 'a/b' is not"),
    ('name = "tpm0"\npcr_banks = ["md5"]', "unknown bank 'md5'"),
])
def test_bad_tpm_tables_are_refused_at_mount_naming_the_key(
        mount_factory: MountFactory, table: str, error: str) -> None:
    with pytest.raises(MountError, match=re.escape(error)):
        mount_factory(DEFAULT_HOST_TOML + "\n[[tpm]]\n" + table + "\n")


GARBAGE = ["1\n", "0\n", "", "\0", "on", "-1", "0x10", "4294967296", "y\0junk", "z" * 5000,
           "\xff\xfe", "3\n"]


def test_any_value_in_any_power_state_is_accepted_or_refused_never_an_internal_error(
        mount: Mount) -> None:
    for power in ("1\n", "0\n"):
        for name in ("power", "reset", "locality", "established"):
            for value in GARBAGE:
                mount.write(f"{CTL}/power", power)
                try:
                    mount.write(f"{CTL}/{name}", value.encode("latin-1"))
                except OSError as exc:
                    assert exc.errno != errno.EIO, (power, name, value)
    assert os.path.ismount(mount.root)
    assert "internal error" not in mount.log()
    assert mount.bash(f"echo 1 > {CTL}/power && cat {TPM0}/pcr-sha256/16").stdout == (
        ZERO256 + "\n")
