"""swtpm's state blobs between Debian's real swtpm 0.7.1 and apfs mounts, over the swtpm
protocol's TCP control port (``apfs mount --tpm-port 0``; swtpm with ``--ctrl type=tcp``).

- A permanent blob taken with CMD_GET_STATEBLOB from one TPM and given to the other with
  CMD_SET_STATEBLOB (STOP, SET, INIT, then Startup on the data port) carries the NV index and
  the seeds: the same NV data, and the same ECC primary from the same template.
- Differential: the request table of tests/unit/swtpm_blob_cases.py run against both TPMs
  gives the same answers, and swtpm's answers are the table's (so the table is swtpm's).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from apfs_tpm import tpm_mount
from reference_swtpm import ctrl_tcp, get_stateblob_tcp, swtpm_available, swtpm_tcp, tcp_transmit

from tests.unit import swtpm_blob_cases as cases
from vdev.tpm import commands as cmd
from vdev.tpm import swtpm as sw

if (reason := swtpm_available()) is not None:
    pytest.skip(reason, allow_module_level=True)

U32 = struct.Struct(">I")
INDEX = 0x01500017
NV_DATA = b"migrated"
PUBLIC_AT = cmd.HEADER_SIZE + 8
"""CreatePrimary's outPublic: after the response header, the handle and parameterSize."""


class Peer(NamedTuple):
    """A TPM behind the swtpm protocol: data port ``port``, control port ``port + 1``."""

    name: str
    port: int

    def transmit(self, command: bytes) -> bytes:
        return tcp_transmit(self.port, command)

    def control(self, request: bytes) -> int:
        """A control request answered by a bare u32 result."""
        return U32.unpack(ctrl_tcp(self.port + 1, request))[0]

    def get_blob(self, blob_type: int) -> bytes:
        reply = get_stateblob_tcp(self.port + 1, cases.get_request(blob_type))
        assert reply[:4] == bytes(4), f"{self.name}: GET_STATEBLOB {reply[:16].hex()}"
        return reply[16:]

    def stop(self) -> None:
        assert self.control(U32.pack(sw.CMD_STOP)) == 0, self.name

    def init_and_startup(self) -> None:
        assert self.control(U32.pack(sw.CMD_INIT) + U32.pack(0)) == 0, self.name
        cmd_ok(self.transmit(cmd.startup()))


def cmd_ok(response: bytes) -> bytes:
    assert cmd.response_code(response) == 0, response.hex()
    return response


@contextlib.contextmanager
def swtpm_and_apfs(tmp: Path) -> Iterator[tuple[Peer, Peer]]:
    """Real swtpm (started, Startup(CLEAR) sent) and an apfs mount's swtpm front end."""
    with swtpm_tcp(tmp / "swtpm") as reference, \
            tpm_mount(tmp / "apfs", "--tpm-port", "0", "--tpm-protocol", "swtpm") as mounted:
        assert mounted.tcti.startswith("swtpm:"), mounted.stdout
        yield Peer("swtpm", reference.port), Peer("apfs", mounted.port)


def primary_public(peer: Peer) -> bytes:
    """The public area of tpm2_createprimary's default ECC key: derived from the owner
    seed, so equal on two TPMs with the same permanent state."""
    response = cmd_ok(peer.transmit(cmd.create_primary("ecc256")))
    cmd_ok(peer.transmit(cmd.flush_context(cmd.created_handle(response))))
    return cmd.public_area(response, PUBLIC_AT)


@pytest.mark.parametrize("source_name", ["swtpm", "apfs"])
def test_a_permanent_blob_moves_between_swtpm_and_apfs(tmp_path: Path,
                                                       source_name: str) -> None:
    with swtpm_and_apfs(tmp_path) as (swtpm, apfs):
        source, target = (swtpm, apfs) if source_name == "swtpm" else (apfs, swtpm)
        cmd_ok(source.transmit(cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, len(NV_DATA),
                                                   cmd.NV_ORDINARY_OWNER)))
        cmd_ok(source.transmit(cmd.nv_write(cmd.TPM_RH_OWNER, INDEX, NV_DATA)))
        public = primary_public(source)
        assert primary_public(target) != public  # seeds of its own, before the move
        permanent = source.get_blob(sw.BLOB_PERMANENT)

        target.stop()
        request = cases.SET_CASES[0].request(cases.Blobs(permanent, b""))
        assert target.control(request) == sw.TPM_SUCCESS
        target.init_and_startup()
        read = cmd_ok(target.transmit(cmd.nv_read(cmd.TPM_RH_OWNER, INDEX, len(NV_DATA))))
        assert cmd.parse_nv_read(read) == NV_DATA
        assert primary_public(target) == public


class Answers(NamedTuple):
    get: list[tuple[object, ...]]
    set: list[tuple[str, int]]


def get_answer(peer: Peer, blob_type: int, offset: int) -> tuple[object, ...]:
    """A GET_STATEBLOB reply, reduced to what two TPMs share: the whole reply of a refusal
    or an empty answer; for a blob, its layout (the data differs: seeds of its own)."""
    reply = get_stateblob_tcp(peer.port + 1, cases.get_request(blob_type, offset))
    res, flags, total, length = struct.unpack_from(">IIII", reply)
    if not length:
        return (reply,)
    return res, flags, total == length == len(reply) - 16, reply[16:22]


def run_table(peer: Peer) -> Answers:
    """The shared table against ``peer``: GETs while running, then SETs while stopped
    (each built from the peer's own blobs), then INIT and Startup work."""
    got = [get_answer(peer, blob_type, offset) for blob_type, offset, _ in cases.GET_CASES]
    blobs = cases.Blobs(peer.get_blob(sw.BLOB_PERMANENT), peer.get_blob(sw.BLOB_VOLATILE))
    peer.stop()
    stopped_get = ctrl_tcp(peer.port + 1, cases.get_request(sw.BLOB_PERMANENT))
    got.append((stopped_get,))
    answers = [(case.name, peer.control(case.request(blobs))) for case in cases.SET_CASES]
    peer.init_and_startup()
    cmd_ok(peer.transmit(cmd.get_random(8)))
    return Answers(got, answers)


def test_stateblob_requests_are_answered_as_swtpm_answers_them(tmp_path: Path) -> None:
    with swtpm_and_apfs(tmp_path) as (swtpm, apfs):
        reference = run_table(swtpm)
        ours = run_table(apfs)
    # The table is swtpm's: its expected results are what real swtpm answered ...
    for (blob_type, offset, expected), answer in zip(cases.GET_CASES, reference.get,
                                                     strict=False):
        if expected is not None:
            assert answer == (expected,), (blob_type, offset)
    assert reference.get[-1] == (U32.pack(sw.TPM_BAD_ORDINAL),)
    for case, (name, result) in zip(cases.SET_CASES, reference.set, strict=True):
        assert result == case.result or (case.result is None and result), \
            f"{name}: swtpm answered {result:#x}"
    # ... and apfs answers every request as swtpm does.
    assert ours == reference
