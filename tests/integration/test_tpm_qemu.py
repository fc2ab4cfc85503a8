"""QEMU + SeaBIOS with a TPM (``-tpmdev emulator`` over a UNIX control socket): SeaBIOS's
Startup and measurements arrive, and PCRs 0..7 come out non-zero and the same for real
swtpm and for apfs (``apfs mount --tpm-socket``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from apfs_tpm import tpm_mount
from qemu import boot_seabios, qemu_available, read_boot_pcrs
from reference_swtpm import swtpm_available, swtpm_unix

if (reason := swtpm_available() or qemu_available()) is not None:
    pytest.skip(reason, allow_module_level=True)


def swtpm_boot_pcrs(tmp_path: Path, name: str, interface: str = "tpm-tis") -> list[bytes]:
    """PCRs 0..7 after SeaBIOS booted against a fresh swtpm."""
    workdir = tmp_path / name
    workdir.mkdir()
    with swtpm_unix(workdir / "state", workdir / "ctrl") as tpm:
        seconds = boot_seabios(tpm.ctrl, workdir, interface)
        print(f"QEMU boot ({interface}) against swtpm ({name}): {seconds:.2f} s")
        return read_boot_pcrs(tpm.ctrl)


def test_seabios_measures_into_swtpm_the_same_on_every_boot(tmp_path: Path) -> None:
    """The reference: every PCR 0..7 extended, and two fresh TPMs booted the same way end
    with the same values (what lets the apfs boot be compared with a swtpm boot)."""
    first = swtpm_boot_pcrs(tmp_path, "first")
    assert len(first) == 8 and all(pcr != bytes(32) for pcr in first)
    assert swtpm_boot_pcrs(tmp_path, "second") == first


@pytest.mark.parametrize("interface", ["tpm-tis", "tpm-crb"])
def test_seabios_boots_with_apfs_as_its_tpm_and_measures_as_into_swtpm(
        interface: str, tmp_path: Path) -> None:
    """The issue's QEMU acceptance with ``tpm-tis``; ``tpm-crb`` sets a smaller buffer
    (CMD_SET_BUFFERSIZE 0x0f80)."""
    sock = tmp_path / "tpm.sock"
    with tpm_mount(tmp_path / "apfs", "--tpm-socket", str(sock)) as mounted:
        root = mounted.mount.root
        seconds = boot_seabios(sock, tmp_path / "apfs", interface)
        print(f"QEMU boot ({interface}) against apfs: {seconds:.2f} s")
        pcrs = root / "sys/class/tpm/tpm0/pcr-sha256"
        measured = [bytes.fromhex((pcrs / str(index)).read_text()) for index in range(8)]
        # The control socket serves a new client after QEMU died, as swtpm's does.
        assert read_boot_pcrs(sock) == measured
    assert all(pcr != bytes(32) for pcr in measured), [p.hex() for p in measured]
    assert measured == swtpm_boot_pcrs(tmp_path, "swtpm", interface)
