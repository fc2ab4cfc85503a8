"""The issue's tpm2-tools acceptance sequence (:mod:`tpm2_tools`), unmodified tools through
their TCTIs: against real swtpm (the reference: a failure there is the sequence's fault), and
against apfs through each of the issue's four TCTIs (:data:`TCTIS`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from apfs_tpm import tpm_mount
from reference_swtpm import swtpm_available, swtpm_tcp
from tpm2_tools import (
    ToolFailed,
    Tpm2Tools,
    assert_sysfs_pcrs_match,
    parse_pcrread,
    run_acceptance,
)

if (reason := swtpm_available()) is not None:
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def swtpm_tcti(tmp_path: Path) -> Iterator[str]:
    """A fresh swtpm (started: Startup(CLEAR) done) on free ports; killed afterwards."""
    with swtpm_tcp(tmp_path / "swtpm-state") as tpm:
        yield tpm.tcti


def test_the_sequence_detects_a_wrong_pcr_value(swtpm_tcti: str, tmp_path: Path) -> None:
    """The checks can fail: a PCR extended behind the sequence's back is noticed, and a
    failing tool is reported with its command line and stderr."""
    tools = Tpm2Tools(swtpm_tcti, tmp_path)
    before = tools.pcrread("sha256:16")["sha256"][16]
    tools.run("tpm2_pcrextend", "16:sha256=" + "11" * 32)
    assert parse_pcrread(tools.run("tpm2_pcrread", "sha256:16"))["sha256"][16] != before
    with pytest.raises(ToolFailed, match=r"tpm2_pcrextend -T swtpm:.* 17:sha256=.*exit status"):
        tools.run("tpm2_pcrextend", "17:sha256=" + "11" * 32)  # locality 0 may not


# -- one matrix: the reference and every way tpm2-tools reach apfs's TPM -----------------


@dataclass(frozen=True)
class Tcti:
    open: Callable[[Path], AbstractContextManager[tuple[Path | None, str]]]
    """Given a tmp dir, a context that starts a fresh TPM and gives (the mount root, or
    None for the reference; the TCTI string that reaches it); it stops the TPM at exit."""
    resource_manager: bool = False


@contextlib.contextmanager
def _reference(tmp: Path) -> Iterator[tuple[Path | None, str]]:
    with swtpm_tcp(tmp / "swtpm-state") as tpm:
        yield None, tpm.tcti


@contextlib.contextmanager
def _tcp(protocol: str, tmp: Path) -> Iterator[tuple[Path | None, str]]:
    with tpm_mount(tmp, "--tpm-port", "0", "--tpm-protocol", protocol) as mounted:
        assert mounted.tcti.startswith(f"{protocol}:"), mounted.stdout
        yield mounted.mount.root, mounted.tcti


@contextlib.contextmanager
def _device(node: str, tmp: Path) -> Iterator[tuple[Path | None, str]]:
    with tpm_mount(tmp) as mounted:
        yield mounted.mount.root, f"device:{mounted.mount.root}/dev/{node}"


TCTIS: dict[str, Tcti] = {
    "swtpm-reference": Tcti(_reference),
    "apfs-swtpm-tcp": Tcti(functools.partial(_tcp, "swtpm")),
    "apfs-mssim-tcp": Tcti(functools.partial(_tcp, "mssim")),
    "apfs-device-tpm0": Tcti(functools.partial(_device, "tpm0")),
    "apfs-device-tpmrm0": Tcti(functools.partial(_device, "tpmrm0"), resource_manager=True),
}
"""The issue's four TCTIs to apfs, and real swtpm through its own: a failure on apfs's
with a pass on the reference points at apfs."""


@pytest.mark.parametrize("name", list(TCTIS))
def test_acceptance_sequence(name: str, tmp_path: Path) -> None:
    """The whole sequence, then a PCR extended to a non-trivial value: every
    ``pcr-<bank>/N`` of the mount equals tpm2_pcrread through the same TCTI (the reference
    has no sysfs: it reads its PCR back)."""
    chosen = TCTIS[name]
    with chosen.open(tmp_path / "tpm") as (root, tcti):
        start = time.perf_counter()
        tools = run_acceptance(tcti, tmp_path / "work", resource_manager=chosen.resource_manager)
        print(f"{name}: acceptance sequence {time.perf_counter() - start:.2f} s, "
              f"slowest tools: {sorted(tools.seconds.items(), key=lambda kv: -kv[1])[:3]}")
        tools.run("tpm2_pcrextend", "16:sha256=" + "5a" * 32)
        expected = hashlib.sha256(bytes(32) + b"\x5a" * 32).digest()
        assert tools.pcrread("sha256:16")["sha256"][16] == expected
        if root is not None:
            assert_sysfs_pcrs_match(root / "sys/class/tpm/tpm0", tcti)
