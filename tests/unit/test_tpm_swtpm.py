"""swtpm's protocol core (vdev.tpm.swtpm) against a real vTPM: every control command with
swtpm 0.7.1's result codes and reply layouts, framing of split and malformed input."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest

from tests.unit import swtpm_blob_cases as cases
from tests.unit.tpm_helpers import ok, require_libtpms
from vdev.tpm import commands, swtpm_blob
from vdev.tpm import swtpm as sw
from vdev.tpm.frontend import Malformed
from vdev.tpm.vtpm import VTpm

require_libtpms()

NOT_RUNNING = bytes.fromhex("80010000000a00000101")
U32 = struct.Struct(">I")


@pytest.fixture
def core(vtpm: VTpm) -> sw.Swtpm:
    return sw.Swtpm(vtpm)


def ctrl(core: sw.Swtpm, code: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> bytes:
    return core.control(U32.pack(code) + payload, fds).data


def result(core: sw.Swtpm, code: int, payload: bytes = b"") -> int:
    reply = ctrl(core, code, payload)
    assert len(reply) == 4, reply.hex()
    return U32.unpack(reply)[0]


def data(core: sw.Swtpm, command: bytes) -> bytes:
    framed = sw.DataReader().feed(command)
    assert framed is not None
    return core.execute(framed)


def test_get_capability_is_a_bare_u64_with_swtpm_0_7_1s_bits(core: sw.Swtpm) -> None:
    reply = ctrl(core, sw.CMD_GET_CAPABILITY)
    assert reply == bytes.fromhex("000000000000ffff")
    caps = struct.unpack(">Q", reply)[0]
    assert caps & 0x348F == 0x348F  # what QEMU needs for a TPM 2
    assert caps & 0x700 == 0x700  # state blobs and STOP: QEMU's migration


def test_qemus_start_sequence_stop_buffersize_init_then_startup_on_the_data_channel(
        core: sw.Swtpm) -> None:
    assert result(core, sw.CMD_STOP) == sw.TPM_SUCCESS
    size, low, high = struct.unpack(">III", ctrl(core, sw.CMD_SET_BUFFERSIZE, U32.pack(0))[4:])
    assert low <= size <= high
    assert ctrl(core, sw.CMD_SET_BUFFERSIZE, U32.pack(0x0F80))[:8] == bytes.fromhex(
        "0000000000000f80")
    # Before INIT every command gets TPM_RC_FAILURE, and TPM-bound controls BAD_ORDINAL.
    assert data(core, commands.get_random(8)) == NOT_RUNNING
    assert result(core, sw.CMD_GET_TPMESTABLISHED) == sw.TPM_BAD_ORDINAL
    assert result(core, sw.CMD_HASH_START) == sw.TPM_BAD_ORDINAL
    assert result(core, sw.CMD_INIT, U32.pack(0)) == sw.TPM_SUCCESS
    assert ctrl(core, sw.CMD_GET_TPMESTABLISHED) == bytes(8)  # result 0, bit 0, 3 pad
    assert result(core, sw.CMD_SET_LOCALITY, bytes(4)) == sw.TPM_SUCCESS
    # INIT sends no Startup: the client does.
    assert commands.response_code(data(core, commands.get_random(8))) == \
        commands.TPM_RC_INITIALIZE
    ok(data(core, commands.startup()))
    ok(data(core, commands.get_random(8)))


def test_set_buffersize_while_running_is_bad_ordinal_but_a_query_works(core: sw.Swtpm) -> None:
    assert result(core, sw.CMD_SET_BUFFERSIZE, U32.pack(0x1000)) == sw.TPM_BAD_ORDINAL
    assert ctrl(core, sw.CMD_SET_BUFFERSIZE, U32.pack(0))[:4] == bytes(4)
    assert result(core, sw.CMD_SET_BUFFERSIZE, b"\0\0") == sw.TPM_BAD_PARAMETER


@pytest.mark.parametrize(("code", "payload"), [
    (sw.CMD_INIT, b""), (sw.CMD_INIT, bytes(5)), (sw.CMD_STOP, b"\0"),
    (sw.CMD_SHUTDOWN, b"\0"), (sw.CMD_GET_TPMESTABLISHED, b"\0"),
    (sw.CMD_SET_LOCALITY, b""), (sw.CMD_HASH_START, b"x"), (sw.CMD_HASH_END, b"x"),
    (sw.CMD_HASH_DATA, b"\0\0"), (sw.CMD_CANCEL_TPM_CMD, b"x"),
    (sw.CMD_STORE_VOLATILE, b"x"), (sw.CMD_RESET_TPMESTABLISHED, b""),
    (sw.CMD_GET_STATEBLOB, bytes(8)), (sw.CMD_GET_CONFIG, b"x"), (sw.CMD_GET_INFO, bytes(8)),
])
def test_payload_of_the_wrong_length_is_bad_parameter(core: sw.Swtpm, code: int,
                                                      payload: bytes) -> None:
    reply = core.control(U32.pack(code) + payload)
    assert reply.data == U32.pack(sw.TPM_BAD_PARAMETER)
    assert reply.log and sw.CMD_NAMES[code] in reply.log


def test_unknown_command_and_a_request_without_command(core: sw.Swtpm) -> None:
    reply = core.control(U32.pack(0x99))
    assert reply.data == U32.pack(sw.TPM_BAD_ORDINAL) and "0x99" in (reply.log or "")
    assert core.control(b"\0\0").data == U32.pack(sw.TPM_BAD_PARAMETER)


def test_set_locality_accepts_a_bare_or_padded_byte_and_refuses_above_4(
        core: sw.Swtpm) -> None:
    assert result(core, sw.CMD_SET_LOCALITY, b"\x03") == sw.TPM_SUCCESS
    assert core.locality == 3
    assert result(core, sw.CMD_SET_LOCALITY, b"\x00\x00\x00\x00") == sw.TPM_SUCCESS
    assert result(core, sw.CMD_SET_LOCALITY, b"\x05\x00\x00\x00") == sw.TPM_BAD_LOCALITY
    assert core.locality == 0


def test_locality_applies_to_data_commands(core: sw.Swtpm) -> None:
    """PCR 17 may be extended from locality 2-4 only (TPM_RC_LOCALITY at 0)."""
    extend = commands.pcr_extend(17, {"sha256": bytes(32)})
    assert commands.response_code(data(core, extend)) == commands.TPM_RC_LOCALITY
    result(core, sw.CMD_SET_LOCALITY, b"\x02")
    ok(data(core, extend))


def test_hash_start_data_end_extends_pcr_17_and_sets_established(
        core: sw.Swtpm, vtpm: VTpm) -> None:
    assert result(core, sw.CMD_HASH_START) == sw.TPM_SUCCESS
    assert result(core, sw.CMD_HASH_DATA, U32.pack(3) + b"abc") == sw.TPM_SUCCESS
    assert result(core, sw.CMD_HASH_DATA, U32.pack(4) + b"abc") == sw.TPM_BAD_PARAMETER
    assert result(core, sw.CMD_HASH_END) == sw.TPM_SUCCESS
    expected = hashlib.sha256(bytes(32) + hashlib.sha256(b"abc").digest()).hexdigest()
    assert vtpm.pcr_value("sha256", 17).strip() == expected.upper()
    assert ctrl(core, sw.CMD_GET_TPMESTABLISHED)[4] == 1


def test_reset_established_needs_locality_3_or_4(core: sw.Swtpm) -> None:
    result(core, sw.CMD_HASH_START)
    result(core, sw.CMD_HASH_END)
    assert result(core, sw.CMD_RESET_TPMESTABLISHED, b"\x00\0\0\0") == sw.TPM_BAD_LOCALITY
    assert result(core, sw.CMD_RESET_TPMESTABLISHED, b"\x05") == sw.TPM_BAD_LOCALITY
    assert result(core, sw.CMD_RESET_TPMESTABLISHED, b"\x03") == sw.TPM_SUCCESS
    assert ctrl(core, sw.CMD_GET_TPMESTABLISHED)[4] == 0


def test_cancel_store_volatile_get_config(core: sw.Swtpm) -> None:
    assert result(core, sw.CMD_CANCEL_TPM_CMD) == sw.TPM_SUCCESS
    assert result(core, sw.CMD_STORE_VOLATILE) == sw.TPM_SUCCESS
    assert ctrl(core, sw.CMD_GET_CONFIG) == bytes(8)


def get_blob(core: sw.Swtpm, blob_type: int, offset: int = 0) -> bytes:
    """GET_STATEBLOB's data, after checking its reply header (result 0, all in one piece)."""
    reply = core.control(cases.get_request(blob_type, offset)).data
    res, flags, total, length = struct.unpack_from(">IIII", reply)
    assert (res, flags) == (0, 0) and total == length == len(reply) - 16
    return reply[16:]


def test_stateblobs_are_swtpms_wrapped_libtpms_blobs(core: sw.Swtpm, vtpm: VTpm) -> None:
    """GET_STATEBLOB while running: swtpm's header and TLVs around libtpms's blob, all of
    it in one reply or from an offset of the wrapped blob; SET_STATEBLOB only while stopped,
    checked by libtpms, in effect after INIT."""
    permanent = get_blob(core, sw.BLOB_PERMANENT)
    plain = vtpm.engine.get_state().permanent
    assert permanent == swtpm_blob.wrap(plain)
    assert permanent[:10] == bytes.fromhex("0201000a0004") + U32.pack(len(plain) + 22)
    assert get_blob(core, sw.BLOB_PERMANENT, 100) == permanent[100:]
    assert swtpm_blob.unwrap(get_blob(core, sw.BLOB_VOLATILE)) == \
        vtpm.engine.get_state().volatile

    set_blob = cases.SET_CASES[0].request(cases.Blobs(permanent, b""))
    assert core.control(set_blob).data == U32.pack(sw.TPM_BAD_ORDINAL)  # running
    result(core, sw.CMD_STOP)
    assert result(core, sw.CMD_GET_STATEBLOB, bytes(12)) == sw.TPM_BAD_ORDINAL  # stopped
    assert core.control(set_blob[:-1]).data == U32.pack(sw.TPM_BAD_PARAMETER)
    assert core.control(set_blob).data == bytes(4)
    assert result(core, sw.CMD_INIT, U32.pack(sw.INIT_DELETE_VOLATILE)) == sw.TPM_SUCCESS
    assert vtpm.engine.get_state().permanent == plain


@pytest.mark.parametrize(("blob_type", "offset", "expected"), cases.GET_CASES)
def test_get_stateblob_of_each_type_as_swtpm_answers(core: sw.Swtpm, blob_type: int,
                                                     offset: int,
                                                     expected: bytes | None) -> None:
    reply = core.control(cases.get_request(blob_type, offset))
    if expected is None:
        assert reply.data[16:22] == bytes.fromhex("0201000a0004")
        return
    assert reply.data == expected
    assert (reply.log is None) == (expected[:4] == bytes(4)), reply.log


def test_set_stateblob_refusals_as_swtpm_answers(core: sw.Swtpm, vtpm: VTpm) -> None:
    """The shared table (tests/unit/swtpm_blob_cases.py, proven against real swtpm by the
    differential test), each refusal with its log line; the TPM ends with its own state."""
    blobs = cases.Blobs(get_blob(core, sw.BLOB_PERMANENT), get_blob(core, sw.BLOB_VOLATILE))
    plain = blobs.plain
    result(core, sw.CMD_STOP)
    for case in cases.SET_CASES:
        reply = core.control(case.request(blobs))
        code = U32.unpack(reply.data)[0]
        if case.result is None:
            assert code not in (0, sw.TPM_FAIL), case.name  # libtpms's own refusal
        else:
            assert code == case.result, f"{case.name}: {code:#x}"
        assert (reply.log is None) == (code == 0), f"{case.name}: {reply.log}"
        if reply.log:
            assert reply.log.startswith("swtpm control CMD_SET_STATEBLOB"), reply.log
    assert result(core, sw.CMD_INIT, U32.pack(0)) == sw.TPM_SUCCESS
    assert vtpm.engine.get_state().permanent == plain


def test_shutdown_leaves_the_tpm_as_its_client_left_it(core: sw.Swtpm, vtpm: VTpm) -> None:
    """QEMU's graceful exit: swtpm would exit; the mount keeps the PCRs readable, and the
    next client's INIT restarts the TPM."""
    ok(data(core, commands.pcr_extend(16, {"sha256": b"\x01" * 32})))
    before = vtpm.pcr_value("sha256", 16)
    reply = core.control(U32.pack(sw.CMD_SHUTDOWN))
    assert reply.data == bytes(4) and "stays powered" in (reply.log or "")
    assert vtpm.pcr_value("sha256", 16) == before != "0" * 64 + "\n"
    assert result(core, sw.CMD_INIT, U32.pack(0)) == sw.TPM_SUCCESS
    assert data(core, commands.pcr_read("sha256", [16]))[6:10] == \
        commands.TPM_RC_INITIALIZE.to_bytes(4, "big")


def test_get_info_is_libtpms_json_by_flags_and_offset(core: sw.Swtpm) -> None:
    reply = ctrl(core, sw.CMD_GET_INFO, struct.pack(">QII", 1, 0, 0))
    res, total, length = struct.unpack_from(">III", reply)
    text = reply[12:]
    assert res == 0 and total == length == len(text) and text.endswith(b"\0")
    assert list(json.loads(text[:-1])) == ["TPMSpecification"]
    piece = ctrl(core, sw.CMD_GET_INFO, struct.pack(">QII", 1, 5, 0))
    assert piece[12:] == text[5:]
    assert result(core, sw.CMD_GET_INFO, struct.pack(">QII", 1, total - 1, 0)) == \
        sw.TPM_BAD_PARAMETER


def test_set_datafd_takes_one_descriptor_at_a_time(core: sw.Swtpm) -> None:
    assert result(core, sw.CMD_SET_DATAFD) == sw.TPM_BAD_PARAMETER  # no SCM_RIGHTS
    read_end, write_end = os.pipe()
    try:
        reply = core.control(U32.pack(sw.CMD_SET_DATAFD), (read_end,))
        assert reply.data == bytes(4) and reply.data_fd == read_end
        second = core.control(U32.pack(sw.CMD_SET_DATAFD), (write_end,))
        assert second.data == U32.pack(sw.TPM_IOERROR) and second.data_fd is None
    finally:
        os.close(read_end)
        os.close(write_end)


# -- framing -------------------------------------------------------------------------------

def test_control_reader_waits_for_the_fixed_part_and_announced_data() -> None:
    reader = sw.ControlReader()
    reader.feed(b"\0\0")
    assert reader.next_request() is None and reader.pending
    reader.feed(b"\0\x02\0\0")  # CMD_INIT needs 4 more bytes
    assert reader.next_request() is None
    reader.feed(b"\0\x01")
    assert reader.next_request() == bytes.fromhex("0000000200000001")
    reader.feed(U32.pack(sw.CMD_HASH_DATA) + U32.pack(5) + b"ab")
    assert reader.next_request() is None
    reader.feed(b"cde")
    assert reader.next_request() == U32.pack(7) + U32.pack(5) + b"abcde"
    assert not reader.pending


def test_control_reader_keeps_what_came_with_a_request_as_swtpm_reads_it() -> None:
    """QEMU's SET_LOCALITY is u8 + 3 pad: one read, one request of 8 bytes."""
    reader = sw.ControlReader()
    reader.feed(U32.pack(sw.CMD_SET_LOCALITY) + b"\x01\0\0\0")
    assert reader.next_request() == U32.pack(5) + b"\x01\0\0\0"


def test_control_reader_refuses_a_huge_length_and_gives_up_a_partial_request() -> None:
    reader = sw.ControlReader()
    reader.feed(U32.pack(sw.CMD_SET_STATEBLOB) + struct.pack(">III", 0, 1, 0xFFFFFFFF))
    with pytest.raises(Malformed, match="4294967295 exceeds"):
        reader.next_request()
    partial = sw.ControlReader()
    partial.feed(U32.pack(sw.CMD_INIT) + b"\0")
    assert partial.take_partial() == U32.pack(sw.CMD_INIT) + b"\0"


def test_data_reader_takes_what_a_read_returned_once_a_header_came(core: sw.Swtpm) -> None:
    """swtpm's SWTPM_IO_Read: reads until 10 bytes came; then those reads are the command,
    raw or behind the TCG prefix (whose own length is not looked at)."""
    command = commands.get_random(16)
    reader = sw.DataReader()
    assert reader.feed(command[:4]) is None and reader.pending
    assert reader.room == sw.READ_SIZE - 4
    assert reader.feed(command[4:]) == sw.DataCommand(command)
    assert not reader.pending and reader.room == sw.READ_SIZE
    prefixed = sw.DataReader().feed(struct.pack(">IBI", 8, 3, 9999) + command)
    assert prefixed == sw.DataCommand(command, 3, True)
    raw = core.execute(sw.DataCommand(command))
    framed = core.execute(sw.DataCommand(command, 0, True))
    size = U32.unpack_from(framed)[0]
    assert size == len(raw) and framed[4:4 + 10] == raw[:10] and framed[-4:] == bytes(4)


@pytest.mark.parametrize("stream", [
    bytes.fromhex("80010000000400000000"),  # size field shorter than a header
    bytes.fromhex("8001ffffffff0000017b"),  # size field beyond any buffer
    bytes.fromhex("8001000000000000017b"),  # size field 0
    commands.get_random(16) + commands.get_random(16),  # two commands in one read
])
def test_a_size_field_that_disagrees_is_the_tpms_command_size_error(core: sw.Swtpm,
                                                                     stream: bytes) -> None:
    assert commands.response_code(data(core, stream)) == commands.TPM_RC_COMMAND_SIZE
