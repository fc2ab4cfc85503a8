"""Differential test: the same raw command script (:mod:`tpm_corpus`, over 200 commands,
malformed ones included) to real swtpm over its TCP data port and to apfs's TPM, in
lockstep; both must give the same tag and return code on every row, byte-identical error
responses, and equal deterministic fields (the corpus's per-command views).

apfs is reached three ways (:data:`CANDIDATES`): ``VTpm.transmit`` in process, and its
swtpm and mssim TCP front ends on a real mount.  Both TPMs start from the same condition:
powered, before TPM2_Startup (swtpm with ``--flags not-need-init`` only; apfs's engine
powered on with no Startup sent, or shut down and re-initialised through the front end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import mssim_client
import pytest
import tpm_corpus
import tpm_wire as w
from apfs_tpm import tpm_mount
from reference_swtpm import ctrl_init_tcp, swtpm_available, swtpm_tcp, tcp_transmit

from vdev.tpm.config import TpmConfig
from vdev.tpm.mssim import TPM_SIGNAL_RESET
from vdev.tpm.vtpm import VTpm, open_engine

if (reason := swtpm_available()) is not None:
    pytest.skip(reason, allow_module_level=True)

Transmit = Callable[[bytes], bytes]
MIN_ROWS = 200
EXPECTED_REFUSALS = {0x100, 0x01E, 0x084, 0x095, 0x142, 0x143, 0x125, 0x907, 0x14A, 0x14C,
                     0x146, 0x18B, 0x98B, 0x98E, 0x9A2, 0x902, 0x921}
"""INITIALIZE, BAD_TAG, VALUE, SIZE, COMMAND_SIZE, COMMAND_CODE, AUTH_MISSING, LOCALITY,
NV_UNINITIALIZED, NV_DEFINED, NV_RANGE, a bad handle, an unknown session, AUTH_FAIL,
BAD_AUTH, OBJECT_MEMORY, LOCKOUT: each answered by at least one row."""


@contextlib.contextmanager
def in_process_vtpm(_tmp: Path) -> Iterator[Transmit]:
    """apfs's vTPM as every front end reaches it (``VTpm.transmit`` → virtio → libtpms),
    powered on and probed by its driver, but not started."""
    vtpm = VTpm(TpmConfig("tpm0"), 0, open_engine())
    try:
        vtpm.engine.power_on()
        vtpm.virtio.probe()
        yield vtpm.transmit
    finally:
        vtpm.close()


@contextlib.contextmanager
def apfs_swtpm_front_end(tmp: Path) -> Iterator[Transmit]:
    """apfs's swtpm TCP front end (``apfs mount --tpm-port 0``), raw commands on its data
    port.  The mount started its TPM; Shutdown(CLEAR) then CMD_INIT on the control port make
    it what the reference is: powered, shut down in order (TPMA_STARTUP_CLEAR.orderly
    shows the difference), waiting for Startup."""
    with tpm_mount(tmp / "apfs", "--tpm-port", "0", "--tpm-protocol", "swtpm") as mounted:
        assert mounted.tcti.startswith("swtpm:"), mounted.tcti
        shutdown = tcp_transmit(mounted.port, w.command("Shutdown", params=w.u16(0)))
        assert w.header(shutdown).rc == 0, shutdown.hex()
        ctrl_init_tcp(mounted.port + 1)
        yield lambda command: tcp_transmit(mounted.port, command)


@contextlib.contextmanager
def apfs_mssim_front_end(tmp: Path) -> Iterator[Transmit]:
    """apfs's mssim front end (``--tpm-protocol mssim``): Shutdown(CLEAR), then RESET on the
    platform port (_TPM_Init), as for the swtpm protocol.  Its own length prefix frames
    each command, so even the rows with a wrong size field reach the TPM unchanged."""
    with tpm_mount(tmp / "apfs", "--tpm-port", "0", "--tpm-protocol", "mssim") as mounted:
        assert mounted.tcti.startswith("mssim:"), mounted.tcti
        shutdown = mssim_client.send_command(mounted.port, w.command("Shutdown",
                                                                     params=w.u16(0)))
        assert w.header(shutdown).rc == 0, shutdown.hex()
        mssim_client.signal(mounted.port + 1, TPM_SIGNAL_RESET)
        yield lambda command: mssim_client.send_command(mounted.port, command)


CANDIDATES: dict[str, Callable[[Path], AbstractContextManager[Transmit]]] = {
    "vtpm-in-process": in_process_vtpm,
    "swtpm-tcp-front-end": apfs_swtpm_front_end,
    "mssim-tcp-front-end": apfs_mssim_front_end,
}
"""The apfs transports under test: each gives a ``transmit`` to a powered TPM that has not
seen TPM2_Startup."""


def differences(step: tpm_corpus.Step, reference: bytes, candidate: bytes) -> str | None:
    """Why two responses to one row disagree, or None (the spec's comparison rules)."""
    try:
        ref, got = w.header(reference), w.header(candidate)
    except ValueError as exc:
        return str(exc)
    if (ref.tag, ref.rc) != (got.tag, got.rc):
        return f"tag/rc {ref.tag:#06x}/{ref.rc:#x} vs {got.tag:#06x}/{got.rc:#x}"
    if ref.rc != 0:
        return None if reference == candidate else "error responses differ in their bytes"
    try:
        expected, actual = step.view(reference), step.view(candidate)
    except ValueError as exc:
        return f"unparsable response: {exc}"
    return None if expected == actual else f"deterministic fields differ: {expected!r} vs " \
                                           f"{actual!r}"


def run_lockstep(steps: list[tpm_corpus.Step], reference: Transmit,
                 candidate: Transmit) -> tuple[list[str], list[int]]:
    """Send every row to both; the rows that disagree (described) and the reference's return
    codes in order."""
    contexts: tuple[tpm_corpus.Context, tpm_corpus.Context] = ({}, {})
    mismatches, codes = [], []
    for number, step in enumerate(steps):
        commands = [step.command(context) for context in contexts]
        responses = [reference(commands[0]), candidate(commands[1])]
        for context, response in zip(contexts, responses, strict=True):
            if step.capture is not None:
                step.capture(context, response)
        codes.append(w.header(responses[0]).rc)
        if (why := differences(step, *responses)) is not None:
            mismatches.append(f"row {number} {step.label!r} (command {commands[1].hex()}): "
                              f"{why}\n  swtpm: {responses[0].hex()}\n  apfs:  "
                              f"{responses[1].hex()}")
    return mismatches, codes


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_raw_command_script_matches_swtpm(name: str, tmp_path: Path) -> None:
    steps = tpm_corpus.script()
    assert len(steps) >= MIN_ROWS
    with swtpm_tcp(tmp_path / "swtpm", started=False) as swtpm, \
            CANDIDATES[name](tmp_path) as transmit:
        mismatches, codes = run_lockstep(steps, swtpm.transmit, transmit)
    assert not mismatches, f"{len(mismatches)} of {len(steps)} rows differ:\n" + "\n".join(
        mismatches)
    # The script exercises both paths: many successes and the refusals it was written for.
    assert codes.count(0) >= 100
    assert set(codes) >= EXPECTED_REFUSALS, sorted(map(hex, EXPECTED_REFUSALS - set(codes)))


def test_the_comparer_catches_what_differs_and_ignores_what_may() -> None:
    pcr_read = next(s for s in tpm_corpus.script() if s.label.startswith("PCR_Read sha256 0"))
    random = next(s for s in tpm_corpus.script() if s.label == "GetRandom 16")
    zeros = bytes.fromhex("8001000000160000000000000000" "00000000") + bytes(4)
    ones = zeros[:-1] + b"\x01"
    assert differences(pcr_read, zeros, ones) is not None
    assert differences(random, bytes.fromhex("80010000000e00000000" "0002aaaa"),
                       bytes.fromhex("80010000000e00000000" "0002bbbb")) is None
    assert differences(random, bytes.fromhex("80010000000a00000100"),
                       bytes.fromhex("80010000000a00000101")) is not None
