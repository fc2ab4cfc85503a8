"""The vTPM's state and controls on real mounts: ``--state``, ``stateblob``, the locality-4
hash sequence, ``cancel``, ``apfs/reset``, and ``sys/bus/virtio``.

Shell lines in, file contents and errnos out.  What a mount shows of a TPM's permanent state
without a TPM front end: its PCR bank allocation (``pcr-<bank>`` directories) and what a
state blob carries; of its volatile state: PCR 17 and the TPM-established flag.  NV indices
and persistent keys across restarts are checked with TPM commands in
tests/unit/test_tpm_state.py and test_tpm_state_crash.py.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mount, MountFactory, apfs, unmount
from helpers import write_error

from vdev.ap.host import DEFAULT_HOST_TOML
from vdev.tpm.libtpms import libtpms

CTL = "apfs/tpm/tpm0"
TPM0 = "sys/class/tpm/tpm0"
SHA256_ONLY = ["dev", "device", "pcr-sha256", "tpm_version_major"]
PCR17 = "sys/class/tpm/tpm0/pcr-sha256/17"
ONES = "F" * 64
MEASURE = f"echo 1 > {CTL}/hash_start && printf 'kernel\\0initrd' > {CTL}/hash_data && " \
          f"echo 1 > {CTL}/hash_end"
MEASURED = hashlib.sha256(bytes(32) + hashlib.sha256(b"kernel\0initrd").digest()) \
    .hexdigest().upper()

libtpms()  # skip nothing: the project's set-up installs libtpms0


@pytest.fixture
def places(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mount point, state directory); any mount made on the mount point is undone."""
    root = tmp_path / "mnt"
    root.mkdir()
    try:
        yield root, tmp_path / "state"
    finally:
        unmount(Mount(root))


def sh(root: Path, script: str) -> list[str]:
    shell = Mount(root).bash(script)
    assert shell.returncode == 0, shell.stderr
    return shell.stdout.splitlines()


def test_locality_4_hash_sequence_lands_in_pcr_17_after_a_reset(mount: Mount) -> None:
    shell = mount.bash(f"echo 1 > {CTL}/reset && cat {PCR17} {CTL}/established && {MEASURE} "
                       f"&& cat {PCR17} {CTL}/established")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == [ONES, "0", MEASURED, "1"]


def test_state_survives_a_restart_and_pcrs_reset(places: tuple[Path, Path]) -> None:
    root, state = places
    config = state.parent / "sha256.toml"
    config.write_text(DEFAULT_HOST_TOML + '[[tpm]]\nname = "tpm0"\npcr_banks = ["sha256"]\n')
    assert apfs("mount", "--state", str(state), "--config", str(config),
                str(root)).returncode == 0
    assert sh(root, f"{MEASURE} && cat {PCR17} && ls {TPM0}") == [MEASURED, *SHA256_ONLY]
    assert apfs("umount", str(root)).returncode == 0
    assert sorted(p.name for p in state.iterdir()) == ["lock", "state", "tpm-tpm0"]
    # The default configuration (same AP host, all four banks): the saved TPM keeps the
    # banks it was manufactured with (permanent state); PCR 17 is volatile (no
    # Shutdown(STATE)), back to its reset value.
    assert apfs("mount", "--state", str(state), str(root)).returncode == 0
    assert sh(root, f"cat {PCR17} && ls {TPM0}") == [ONES, *SHA256_ONLY]
    assert apfs("umount", str(root)).returncode == 0
    assert apfs("mount", str(root)).returncode == 0  # without --state: a new TPM
    assert len(sh(root, f"ls -d {TPM0}/pcr-*")) == 4


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_tpm_state_is_refused_at_mount_with_its_path(
        places: tuple[Path, Path], damage: str) -> None:
    root, state = places
    assert apfs("mount", "--state", str(state), str(root)).returncode == 0
    assert apfs("umount", str(root)).returncode == 0
    path = state / "tpm-tpm0"
    data = path.read_bytes()
    at = len(data) - 10
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1:]
                     if damage == "flip" else data[:at])
    refused = apfs("mount", "--state", str(state), str(root))
    assert refused.returncode == 1
    reason = "corrupted" if damage == "flip" else "truncated"
    assert f"{path}: {reason}" in refused.stderr, refused.stderr
    assert not any(root.iterdir())  # nothing mounted


def test_stateblob_export_and_import_into_another_mount(mount_factory: MountFactory) -> None:
    first, second = mount_factory(), mount_factory()
    blob = first.root.parent / "tpm0.blob"
    shell = first.bash(f"{MEASURE} && cat {CTL}/stateblob > {blob}")
    assert shell.returncode == 0, shell.stderr
    assert blob.read_bytes().startswith(b"apfs-tpm-state 1 ")
    shell = second.bash(f"cat {CTL}/established; echo 0 > {CTL}/power && "
                        f"cat {blob} > {CTL}/stateblob && echo 1 > {CTL}/power && "
                        f"cat {CTL}/established {PCR17}")
    assert shell.returncode == 0, shell.stderr
    # The second TPM continues the first: its permanent and its volatile state.
    assert shell.stdout.splitlines() == ["0", "1", MEASURED]
    assert second.refusals() == []


def test_stateblob_refusals_are_logged(mount: Mount) -> None:
    blob = mount.root.parent / "refusals.blob"
    ctl = mount.root / CTL
    shell = mount.bash(f"cat {ctl}/stateblob > {blob}; cat {blob} > {ctl}/stateblob; "
                       f"echo 0 > {ctl}/power; printf 'garbage\\n' > {ctl}/stateblob; "
                       f"head -c 300 {blob} > {ctl}/stateblob; echo 1 > {ctl}/cancel")
    assert shell.stderr.count(write_error(errno.EBUSY)) == 1
    assert shell.stderr.count(write_error(errno.EINVAL)) == 1
    assert shell.stderr.count(write_error(errno.ENODEV)) == 1
    refusals = mount.refusals()
    assert [(r.path, r.errno) for r in refusals] == [
        (f"{CTL}/stateblob", errno.EBUSY), (f"{CTL}/stateblob", errno.EINVAL),
        (f"{CTL}/cancel", errno.ENODEV)]
    assert "powered on" in refusals[0].message
    assert "stateblob: not an apfs TPM state blob" in refusals[1].message
    # A blob cut short imports nothing: the TPM powers on as it was.
    assert mount.bash(f"echo 1 > {CTL}/power && cat {PCR17}").stdout == ONES + "\n"


def test_apfs_reset_brings_the_tpm_back_to_its_boot_state(mount: Mount) -> None:
    shell = mount.bash(f"echo 3 > {CTL}/locality && {MEASURE} && echo 0 > {CTL}/power && "
                       f"echo 1 > apfs/reset && cat {CTL}/power {CTL}/locality "
                       f"{CTL}/established {PCR17}")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["1", "0", "0", ONES]


def test_sys_bus_virtio_shows_the_tpm_device_and_its_driver(mount: Mount) -> None:
    shell = mount.bash(
        "cd sys/bus/virtio && ls devices drivers drivers/tpm_virtio && "
        "readlink devices/virtio0 drivers/tpm_virtio/virtio0 devices/virtio0/driver "
        "devices/virtio0/subsystem && cd devices/virtio0 && "
        "cat device vendor status features modalias && ls driver")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == [
        "devices:", "virtio0", "", "drivers:", "tpm_virtio", "", "drivers/tpm_virtio:",
        "virtio0",
        "../../../devices/platform/virtio-mmio.0/virtio0",
        "../../../../devices/platform/virtio-mmio.0/virtio0",
        "../../../../bus/virtio/drivers/tpm_virtio",
        "../../../../bus/virtio",
        "0x001f",
        "0x554d4551",
        # ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, as virtio.c's status_show prints
        "0x0000000f",
        # bit 32 (VIRTIO_F_VERSION_1) negotiated, bit 0 first
        "0" * 32 + "1" + "0" * 31,
        "virtio:d0000001Fv554D4551",
        "virtio0",
    ]
