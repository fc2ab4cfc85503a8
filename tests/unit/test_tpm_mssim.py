"""The Microsoft simulator protocol core (vdev.tpm.mssim) against a real vTPM: every command
and platform code, requests split anywhere, what closes a connection."""

from __future__ import annotations

import struct

import pytest

from tests.unit.tpm_helpers import ok, require_libtpms
from vdev.tpm import commands
from vdev.tpm import mssim as ms
from vdev.tpm.frontend import Reply
from vdev.tpm.vtpm import VTpm

require_libtpms()

U32 = struct.Struct(">I")
ACK = bytes(4)


@pytest.fixture
def sizes() -> ms.CommandSizes:
    return ms.CommandSizes()


@pytest.fixture
def command_port(vtpm: VTpm, sizes: ms.CommandSizes) -> ms.CommandPort:
    return ms.CommandPort(vtpm, sizes)


@pytest.fixture
def platform(vtpm: VTpm, sizes: ms.CommandSizes) -> ms.PlatformPort:
    return ms.PlatformPort(vtpm, sizes)


def send_command(command: bytes, locality: int = 0) -> bytes:
    return struct.pack(">IBI", ms.TPM_SEND_COMMAND, locality, len(command)) + command


def tpm_response(reply: Reply) -> bytes:
    """The TPM response inside a SEND_COMMAND reply: ``u32 M, M bytes, u32 0``."""
    size = U32.unpack_from(reply.data)[0]
    assert len(reply.data) == 4 + size + 4 and reply.data[-4:] == ACK
    return reply.data[4:4 + size]


def signal(platform: ms.PlatformPort, code: int) -> Reply:
    [reply] = platform.receive(U32.pack(code))
    return reply


def test_send_command_prefix_and_command_in_separate_writes(
        command_port: ms.CommandPort) -> None:
    """tpm2-tss writes the 9-byte prefix, then the command: never one recv."""
    request = send_command(commands.get_random(8))
    assert command_port.receive(request[:9]) == []
    [reply] = command_port.receive(request[9:])
    assert len(ok(tpm_response(reply))) == 10 + 2 + 8


def test_send_command_byte_by_byte_and_two_in_one_read(command_port: ms.CommandPort) -> None:
    request = send_command(commands.get_random(4))
    replies = [r for b in range(len(request)) for r in command_port.receive(request[b:b + 1])]
    assert len(replies) == 1
    assert len(command_port.receive(request + request)) == 2


def test_send_command_locality_is_the_prefixs(command_port: ms.CommandPort) -> None:
    extend = commands.pcr_extend(17, {"sha256": bytes(32)})
    [at0] = command_port.receive(send_command(extend, 0))
    assert commands.response_code(tpm_response(at0)) == commands.TPM_RC_LOCALITY
    [at2] = command_port.receive(send_command(extend, 2))
    ok(tpm_response(at2))
    [at9] = command_port.receive(send_command(extend, 9))
    assert commands.response_code(tpm_response(at9)) == commands.TPM_RC_LOCALITY


def test_hash_signals_are_acknowledged(command_port: ms.CommandPort, vtpm: VTpm) -> None:
    stream = (U32.pack(ms.TPM_SIGNAL_HASH_START) + U32.pack(ms.TPM_SIGNAL_HASH_DATA)
              + U32.pack(3) + b"abc" + U32.pack(ms.TPM_SIGNAL_HASH_END))
    replies = command_port.receive(stream)
    assert [r.data for r in replies] == [ACK, ACK, ACK]
    assert vtpm.pcr_value("sha256", 17) != "F" * 64 + "\n"


def test_handshake_answers_version_and_flags_and_version_0_closes(
        command_port: ms.CommandPort, vtpm: VTpm, sizes: ms.CommandSizes) -> None:
    [reply] = command_port.receive(U32.pack(ms.TPM_REMOTE_HANDSHAKE) + U32.pack(1))
    assert reply.data == struct.pack(">III", 1, 0x0D, 0) and reply.close is None
    [alternative] = command_port.receive(U32.pack(ms.TPM_SET_ALTERNATIVE_RESULT) + U32.pack(7))
    assert alternative.data == ACK
    [zero] = ms.CommandPort(vtpm, sizes).receive(U32.pack(ms.TPM_REMOTE_HANDSHAKE) + bytes(4))
    assert zero.data == b"" and "client version 0" in (zero.close or "")


@pytest.mark.parametrize(("code", "quiet", "words"), [
    (ms.TPM_SESSION_END, True, "SESSION_END"),
    (ms.TPM_STOP, False, "STOP"),
    (0x63, False, "unknown command 0x63"),
])
def test_command_port_codes_that_close_without_reply(command_port: ms.CommandPort, code: int,
                                                     quiet: bool, words: str) -> None:
    replies = command_port.receive(U32.pack(code) + send_command(commands.get_random(1)))
    assert len(replies) == 1  # what followed is ignored
    assert replies[0].data == b"" and words in (replies[0].close or "")
    assert replies[0].quiet is quiet


@pytest.mark.parametrize("stream", [
    struct.pack(">IBI", ms.TPM_SEND_COMMAND, 0, 0xFFFFFFF0),
    U32.pack(ms.TPM_SIGNAL_HASH_DATA) + U32.pack(1 << 20),
])
def test_huge_lengths_close_the_connection(command_port: ms.CommandPort,
                                           stream: bytes) -> None:
    [reply] = command_port.receive(stream)
    assert reply.data == b"" and "exceeds" in (reply.close or "")


def test_power_on_is_idempotent_and_power_off_fails_commands(
        platform: ms.PlatformPort, command_port: ms.CommandPort, vtpm: VTpm) -> None:
    assert signal(platform, ms.TPM_SIGNAL_POWER_ON) == Reply(ACK)
    assert signal(platform, ms.TPM_SIGNAL_NV_ON) == Reply(ACK)
    ok(tpm_response(command_port.receive(send_command(commands.get_random(1)))[0]))
    assert signal(platform, ms.TPM_SIGNAL_POWER_OFF) == Reply(ACK)
    assert not vtpm.engine.powered
    [off] = command_port.receive(send_command(commands.get_random(1)))
    assert commands.response_code(tpm_response(off)) == 0x101
    signal(platform, ms.TPM_SIGNAL_POWER_ON)
    [fresh] = command_port.receive(send_command(commands.get_random(1)))
    assert commands.response_code(tpm_response(fresh)) == commands.TPM_RC_INITIALIZE


def test_reset_needs_startup_again(platform: ms.PlatformPort,
                                   command_port: ms.CommandPort) -> None:
    assert signal(platform, ms.TPM_SIGNAL_RESET) == Reply(ACK)
    [reply] = command_port.receive(send_command(commands.get_random(1)))
    assert commands.response_code(tpm_response(reply)) == commands.TPM_RC_INITIALIZE
    ok(tpm_response(command_port.receive(send_command(commands.startup()))[0]))


@pytest.mark.parametrize("code", [ms.TPM_SIGNAL_PHYS_PRES_ON, ms.TPM_SIGNAL_PHYS_PRES_OFF,
                                  ms.TPM_SIGNAL_CANCEL_ON, ms.TPM_SIGNAL_CANCEL_OFF,
                                  ms.TPM_SIGNAL_NV_ON, ms.TPM_SIGNAL_NV_OFF])
def test_platform_signals_are_acknowledged(platform: ms.PlatformPort, code: int) -> None:
    assert signal(platform, code) == Reply(ACK)


def test_failure_mode_is_acknowledged_and_logged(platform: ms.PlatformPort) -> None:
    reply = signal(platform, ms.TPM_TEST_FAILURE_MODE)
    assert reply.data == ACK and "cannot be emulated" in (reply.log or "")


def test_command_response_sizes_report_the_largest_then_clear(
        platform: ms.PlatformPort, command_port: ms.CommandPort) -> None:
    command_port.receive(send_command(commands.get_random(32)))
    reply = signal(platform, ms.TPM_GET_COMMAND_RESPONSE_SIZES)
    assert reply.data[:4] == U32.pack(16) and reply.data[-4:] == ACK
    command_size, command_code, response_size, _rc = struct.unpack("<I4sI4s", reply.data[4:20])
    assert (command_size, command_code, response_size) == (12, bytes.fromhex("0000017b"), 44)
    again = signal(platform, ms.TPM_GET_COMMAND_RESPONSE_SIZES)
    assert again.data == U32.pack(16) + bytes(16) + ACK


def test_act_get_signaled_takes_a_handle(platform: ms.PlatformPort) -> None:
    assert platform.receive(U32.pack(ms.TPM_ACT_GET_SIGNALED)) == []
    [reply] = platform.receive(U32.pack(0x40000110))
    assert reply.data == bytes(4) + ACK


@pytest.mark.parametrize(("code", "answer"), [
    (ms.TPM_SESSION_END, b""), (ms.TPM_STOP, b""), (18, U32.pack(1)), (13, U32.pack(1)),
])
def test_platform_codes_that_close(platform: ms.PlatformPort, code: int,
                                   answer: bytes) -> None:
    """SESSION_END and STOP close silently; an unknown code (18 RESTART and 13 KEY_CACHE are
    Microsoft's only) is answered 1, then closed."""
    replies = platform.receive(U32.pack(code) + U32.pack(ms.TPM_SIGNAL_POWER_ON))
    assert len(replies) == 1 and replies[0].data == answer and replies[0].close
