"""The vTPM's state and controls on real mounts: ``--state``, ``stateblob``, ``power``, the
EK certificate, the locality-4 hash sequence, ``cancel``, ``apfs/reset``, ``sys/bus/virtio``.

Shell lines in, file contents and errnos out; what the TPM holds (NV indices, persistent
keys, PCRs, the EK) is read with unmodified tpm2-tools through ``device:MOUNT/dev/tpm0``.
Acknowledged NV writes under SIGKILL are test_tpm_state_crash.py's.
"""

from __future__ import annotations

import errno
import hashlib
import subprocess
from pathlib import Path

import pytest
from conftest import Mount, MountFactory, apfs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import write_error
from tpm2_tools import NV_ATTRIBUTES, NV_INDEX, Tpm2Tools

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

NV_DATA = hashlib.sha256(b"apfs NV across mounts").digest()
PERSISTENT = "0x81000001"

libtpms()  # skip nothing: the project's set-up installs libtpms0


def sh(root: Path, script: str) -> list[str]:
    shell = Mount(root).bash(script)
    assert shell.returncode == 0, shell.stderr
    return shell.stdout.splitlines()


def tools(root: Path, workdir: Path, node: str = "tpm0") -> Tpm2Tools:
    """tpm2-tools through the mount's device file, their files in ``workdir``."""
    workdir.mkdir(exist_ok=True)
    return Tpm2Tools(f"device:{root}/dev/{node}", workdir)


def define_and_write_nv(tpm: Tpm2Tools) -> None:
    tpm.path("nv.in").write_bytes(NV_DATA)
    tpm.run("tpm2_nvdefine", NV_INDEX, "-C", "o", "-s", str(len(NV_DATA)), "-a", NV_ATTRIBUTES)
    tpm.run("tpm2_nvwrite", NV_INDEX, "-C", "o", "-i", "nv.in")


def read_nv(tpm: Tpm2Tools) -> bytes:
    tpm.run("tpm2_nvread", NV_INDEX, "-C", "o", "-s", str(len(NV_DATA)), "-o", "nv.out")
    return tpm.path("nv.out").read_bytes()


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


def test_nv_and_a_persistent_key_survive_a_restart_and_pcrs_reset(
        places: tuple[Path, Path]) -> None:
    """``--state``: NV contents and a persistent key outlive the daemon; PCRs are volatile."""
    root, state = places
    assert apfs("mount", "--state", str(state), str(root)).returncode == 0
    tpm = tools(root, state.parent / "work")
    define_and_write_nv(tpm)
    tpm.run("tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", "primary.ctx")
    tpm.run("tpm2_evictcontrol", "-C", "o", "-c", "primary.ctx", PERSISTENT)
    tpm.run("tpm2_flushcontext", "-t")  # tpm0 has no resource manager to do it
    name = tpm.run("tpm2_readpublic", "-c", PERSISTENT, "-n", "before.name")
    tpm.run("tpm2_pcrextend", "16:sha256=" + "5a" * 32)
    extended = hashlib.sha256(bytes(32) + b"\x5a" * 32).hexdigest().upper()
    assert sh(root, "cat sys/class/tpm/tpm0/pcr-sha256/16") == [extended]
    assert apfs("umount", str(root)).returncode == 0

    assert apfs("mount", "--state", str(state), str(root)).returncode == 0
    assert read_nv(tpm) == NV_DATA
    assert f"- {PERSISTENT}" in tpm.run("tpm2_getcap", "handles-persistent").splitlines()
    assert tpm.run("tpm2_readpublic", "-c", PERSISTENT, "-n", "after.name") == name
    assert tpm.path("after.name").read_bytes() == tpm.path("before.name").read_bytes()
    assert sh(root, "cat sys/class/tpm/tpm0/pcr-sha256/16") == ["0" * 64]
    assert tpm.pcrread("sha256:16")["sha256"][16] == bytes(32)


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


def test_stateblob_export_and_import_into_another_mount(mount_factory: MountFactory,
                                                        tmp_path: Path) -> None:
    first, second = mount_factory(), mount_factory()
    define_and_write_nv(tools(first.root, tmp_path / "first"))
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
    assert read_nv(tools(second.root, tmp_path / "second")) == NV_DATA
    assert second.refusals() == []


def test_power_off_times_the_device_out_and_power_on_starts_it_again(mount: Mount,
                                                                      tmp_path: Path) -> None:
    """A powered-off TPM never answers: the device TCTI's first command (its
    initialisation probe) reads ETIMEDOUT, as from a driver whose TPM stopped answering."""
    tpm = tools(mount.root, tmp_path)
    mount.write(f"{CTL}/power", "0\n")
    failed = subprocess.run(["tpm2_getrandom", "-T", tpm.tcti, "--hex", "8"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 1
    assert "Failed to read response header fd 3, got errno 110: Connection timed out" \
        in failed.stderr, failed.stderr
    # The device reads the response (tpm2-tss opens it O_NONBLOCK): one read refusal logged.
    logged = [line for line in mount.log().splitlines() if "dev/tpm0: read refused" in line]
    assert len(logged) == 1 and "with ETIMEDOUT" in logged[0], mount.log()
    assert "the TPM is powered off (write 1 to its power control file)" in logged[0]
    mount.write(f"{CTL}/power", "1\n")
    tpm.run("tpm2_startup", "-c")  # the platform's firmware started it: TPM_RC_INITIALIZE
    assert len(bytes.fromhex(tpm.run("tpm2_getrandom", "--hex", "8"))) == 8


def test_the_ek_certificate_in_nv_certifies_the_ek_tpm2_createek_makes(
        mount_factory: MountFactory, tmp_path: Path) -> None:
    mount = mount_factory(DEFAULT_HOST_TOML + '[[tpm]]\nname = "tpm0"\nek_certificate = true\n')
    tpm = tools(mount.root, tmp_path, "tpmrm0")
    tpm.run("tpm2_nvread", "0x01c00002", "-o", "ek.der")
    certificate = x509.load_der_x509_certificate(tpm.path("ek.der").read_bytes())
    tpm.run("tpm2_createek", "-G", "rsa", "-c", "ek.ctx", "-u", "ek.pem", "-f", "pem")
    created = serialization.load_pem_public_key(tpm.path("ek.pem").read_bytes())
    certified = certificate.public_key()
    assert isinstance(certified, rsa.RSAPublicKey) and isinstance(created, rsa.RSAPublicKey)
    assert certified.public_numbers() == created.public_numbers()


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
