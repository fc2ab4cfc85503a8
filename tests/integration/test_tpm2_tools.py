"""The issue's tpm2-tools acceptance sequence (:mod:`tpm2_tools`), unmodified tools through
their TCTIs: against real swtpm (the reference: a failure here is the sequence's fault), and
against apfs through each front end listed in :data:`APFS_FRONT_ENDS`.
"""

from __future__ import annotations

import contextlib
import functools
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


def test_acceptance_sequence_against_swtpm(swtpm_tcti: str, tmp_path: Path) -> None:
    start = time.perf_counter()
    tools = run_acceptance(swtpm_tcti, tmp_path / "work")
    print(f"swtpm: acceptance sequence {time.perf_counter() - start:.2f} s, "
          f"slowest tools: {sorted(tools.seconds.items(), key=lambda kv: -kv[1])[:3]}")


def test_the_sequence_detects_a_wrong_pcr_value(swtpm_tcti: str, tmp_path: Path) -> None:
    """The checks can fail: a PCR extended behind the sequence's back is noticed, and a
    failing tool is reported with its command line and stderr."""
    tools = Tpm2Tools(swtpm_tcti, tmp_path)
    before = tools.pcrread("sha256:16")["sha256"][16]
    tools.run("tpm2_pcrextend", "16:sha256=" + "11" * 32)
    assert parse_pcrread(tools.run("tpm2_pcrread", "sha256:16"))["sha256"][16] != before
    with pytest.raises(ToolFailed, match=r"tpm2_pcrextend -T swtpm:.* 17:sha256=.*exit status"):
        tools.run("tpm2_pcrextend", "17:sha256=" + "11" * 32)  # locality 0 may not


# -- apfs through its front ends ---------------------------------------------------------


@dataclass(frozen=True)
class FrontEnd:
    open: Callable[[Path], AbstractContextManager[tuple[Path, str]]]
    """Given a tmp dir, a context that mounts the default host (one vTPM, started) and
    gives (mount root, the TCTI string that reaches its tpm0); it unmounts at exit."""
    resource_manager: bool = False


@contextlib.contextmanager
def _tcp(protocol: str, tmp: Path) -> Iterator[tuple[Path, str]]:
    with tpm_mount(tmp, "--tpm-port", "0", "--tpm-protocol", protocol) as mounted:
        yield mounted.mount.root, mounted.tcti


APFS_FRONT_ENDS: dict[str, FrontEnd] = {
    "swtpm-tcp": FrontEnd(functools.partial(_tcp, "swtpm")),
    "mssim-tcp": FrontEnd(functools.partial(_tcp, "mssim")),
}
"""The parametrisation hook: every way tpm2-tools reach apfs's TPM.  The character devices
(branch ``devnodes``) join at merge as a mount of the default host with
``device:ROOT/dev/tpm0`` and ``device:ROOT/dev/tpmrm0`` (``resource_manager=True``)."""


@pytest.mark.parametrize("front_end", sorted(APFS_FRONT_ENDS))
def test_acceptance_sequence_against_apfs(front_end: str, tmp_path: Path) -> None:
    chosen = APFS_FRONT_ENDS[front_end]
    with chosen.open(tmp_path / "apfs") as (root, tcti):
        start = time.perf_counter()
        tools = run_acceptance(tcti, tmp_path / "work", resource_manager=chosen.resource_manager)
        print(f"apfs {front_end}: acceptance sequence {time.perf_counter() - start:.2f} s, "
              f"slowest tools: {sorted(tools.seconds.items(), key=lambda kv: -kv[1])[:3]}")
        tools.run("tpm2_pcrextend", "16:sha256=" + "5a" * 32)  # a non-trivial value to see
        assert_sysfs_pcrs_match(root / "sys/class/tpm/tpm0", tcti)
