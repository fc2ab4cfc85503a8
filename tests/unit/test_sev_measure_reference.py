"""The launch digest of the emulated firmware against an independent implementation:
``sev-snp-measure --mode sev`` (virtee, PyPI) on the same files.

sev-snp-measure prints sha256(firmware) without ``--kernel``; with ``--kernel`` it needs a
firmware whose reset-vector footer table carries the SEV hashes-table entry (Debian's OVMF
builds lack it), so the tests build an OVMF-like image with that table
(:func:`tests.unit.sev_helpers.ovmf_like`) and let sev-snp-measure parse it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sevsnpmeasure import guest as sevsnpmeasure  # a test dependency (pyproject's test extras)
from sevsnpmeasure.sev_mode import SevMode

from tests.unit.sev_helpers import launch_to_measure, ovmf_like, started_platform
from vdev.sev import owner as sevowner


def cli() -> list[str]:
    exe = shutil.which("sev-snp-measure", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "sevsnpmeasure.cli"]


def reference_cli(tmp: Path, firmware: bytes, kernel, initrd, cmdline) -> bytes:
    (tmp / "ovmf.fd").write_bytes(firmware)
    args = [*cli(), "--mode", "sev", "--ovmf", str(tmp / "ovmf.fd")]
    if kernel is not None:
        (tmp / "vmlinuz").write_bytes(kernel)
        args += ["--kernel", str(tmp / "vmlinuz")]
        if initrd is not None:
            (tmp / "initrd").write_bytes(initrd)
            args += ["--initrd", str(tmp / "initrd")]
        if cmdline is not None:
            args += ["--append", cmdline]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
    return bytes.fromhex(out.stdout.strip())


def reference_module(tmp: Path, firmware: bytes, kernel: bytes, initrd, cmdline) -> bytes:
    (tmp / "ovmf.fd").write_bytes(firmware)
    (tmp / "vmlinuz").write_bytes(kernel)
    initrd_path = None
    if initrd is not None:
        (tmp / "initrd").write_bytes(initrd)
        initrd_path = str(tmp / "initrd")
    return sevsnpmeasure.calc_launch_digest(
        SevMode.SEV, 1, 0, str(tmp / "ovmf.fd"), str(tmp / "vmlinuz"), initrd_path, cmdline, 0
    )


def firmware_digest(firmware: bytes, kernel, initrd, cmdline) -> bytes:
    """The launch digest the emulated firmware accumulated over QEMU's LAUNCH_UPDATE_DATAs."""
    platform, guests = started_platform()
    launch = launch_to_measure(platform, guests, 0, firmware, kernel, initrd, cmdline)
    digest = platform.guests[launch.handle].launch_digest
    assert digest is not None
    return digest


@pytest.mark.parametrize(
    ("size", "kernel", "initrd", "cmdline"),
    [
        (64 * 1024, None, None, None),
        (64 * 1024, b"MZ kernel" * 3000, b"initrd" * 700, "console=ttyS0 quiet"),
        (128 * 1024, b"\x00" * 4097, None, None),
        (16 * 1024, b"k", b"", ""),
        (256 * 1024, b"bzImage" * 50000, b"\xff" * 65537, "root=/dev/sda1 ro init=/bin/sh"),
    ],
)
def test_launch_digest_equals_sev_snp_measure_cli(tmp_path, size, kernel, initrd, cmdline):
    firmware = ovmf_like(size)
    expected = reference_cli(tmp_path, firmware, kernel, initrd, cmdline)
    assert firmware_digest(firmware, kernel, initrd, cmdline) == expected
    assert sevowner.launch_digest(firmware, kernel, initrd, cmdline) == expected


cmdlines = st.none() | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300
)


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.integers(min_value=4, max_value=4096),
    kernel=st.binary(min_size=1, max_size=20000),
    initrd=st.none() | st.binary(max_size=20000),
    cmdline=cmdlines,
)
def test_launch_digest_equals_sev_snp_measure_for_any_inputs(blocks, kernel, initrd, cmdline):
    firmware = ovmf_like(blocks * 16 + 96)
    with tempfile.TemporaryDirectory() as tmp:
        expected = reference_module(Path(tmp), firmware, kernel, initrd, cmdline)
    assert firmware_digest(firmware, kernel, initrd, cmdline) == expected
    assert sevowner.launch_digest(firmware, kernel, initrd, cmdline) == expected


def test_kernel_needs_a_firmware_with_a_hash_table(tmp_path):
    """Both refuse to measure a kernel with a firmware that has no SEV hash-table entry."""
    firmware = b"\x90" * 4096
    with pytest.raises(ValueError, match="hash-table"):
        sevowner.launch_digest(firmware, b"kernel")
    with pytest.raises(subprocess.CalledProcessError):
        reference_cli(tmp_path, firmware, b"kernel", None, None)


def test_real_ovmf_footer_with_sev_snp_measure(tmp_path):
    """sevctl's trimmed real OVMF (tests/unit/sev_vectors): the footer QEMU really parses."""
    firmware = (Path(__file__).parent / "sev_vectors" / "OVMF.amdsev.fd_trimmed").read_bytes()
    kernel, initrd, cmdline = b"fake vmlinuz\n", b"fake initrd\n", "foo bar baz fake kernel=cmdline"
    expected = reference_cli(tmp_path, firmware, kernel, initrd, cmdline)
    assert firmware_digest(firmware, kernel, initrd, cmdline) == expected
