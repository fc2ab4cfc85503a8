"""Differential test: the same raw command script (:mod:`tpm_corpus`, over 200 commands,
malformed ones included) to real swtpm over its TCP data port and to apfs's TPM, in
lockstep; both must give the same tag and return code on every row, byte-identical error
responses, and equal deterministic fields (the corpus's per-command views).

Both start from the same condition: powered, before TPM2_Startup (swtpm with
``--flags not-need-init`` only; apfs's engine powered on with no Startup sent).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import tpm_corpus
import tpm_wire as w
from swtpm import swtpm_available, swtpm_tcp

from vdev.tpm.config import TpmConfig
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


CANDIDATES: dict[str, Callable[[Path], AbstractContextManager[Transmit]]] = {
    "vtpm-in-process": in_process_vtpm,
}
"""The apfs transports under test: name → context giving a ``transmit`` to a powered TPM
that has not seen TPM2_Startup.  The hook for apfs's swtpm TCP front end (branch
``frontends``): a context that mounts with ``--tpm-port P --tpm-protocol swtpm``, sends
``swtpm.ctrl_init_tcp(P + 1)`` (CMD_INIT: the TPM then waits for Startup, like the
reference) and yields ``lambda command: swtpm.tcp_transmit(P, command)``."""


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
    """Send every row to both; the rows that disagree (described) and the reference's
    return codes, in order."""
    contexts: tuple[tpm_corpus.Context, tpm_corpus.Context] = ({}, {})
    mismatches, codes = [], []
    for number, step in enumerate(steps):
        commands = [step.command(context) for context in contexts]
        responses = [send(command) for send, command in zip((reference, candidate), commands,
                                                             strict=True)]
        if step.capture is not None:
            for context, response in zip(contexts, responses, strict=True):
                step.capture(context, response)
        codes.append(w.header(responses[0]).rc)
        if (why := differences(step, *responses)) is not None:
            mismatches.append(f"row {number} {step.label!r} (command {commands[1].hex()}): "
                              f"{why}\n  swtpm: {responses[0].hex()}\n  apfs:  "
                              f"{responses[1].hex()}")
    return mismatches, codes


@pytest.mark.parametrize("candidate", sorted(CANDIDATES))
def test_raw_command_script_matches_swtpm(candidate: str, tmp_path: Path) -> None:
    steps = tpm_corpus.script()
    assert len(steps) >= MIN_ROWS
    with swtpm_tcp(tmp_path / "swtpm", started=False) as swtpm, \
            CANDIDATES[candidate](tmp_path) as transmit:
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
