"""/dev/tpm0's open-file semantics (vdev.tpm.chardev) against a real libtpms TPM.

Each test is a row of the kernel's tpm-dev-common.c behaviour: the write checks in their
order, reads in pieces through the file's own cursor, EOF, discarding, close, exclusivity,
nonblocking errors, the 120-s user-read timeout.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import pytest

from tests.unit.tpm_helpers import refused, require_libtpms
from vdev.tpm import commands as cmd
from vdev.tpm.chardev import TPM_BUFSIZE, USER_READ_TIMEOUT, TpmFile
from vdev.tpm.vtpm import VTpm

require_libtpms()

GET_RANDOM_8 = cmd.get_random(8)
GET_RANDOM_8_REPLY = 10 + 2 + 8


@pytest.fixture
def tpm0(vtpm: VTpm) -> Iterator[TpmFile]:
    file = vtpm.open_tpm()
    yield file
    file.release()


def test_a_command_is_written_whole_and_its_response_read_in_pieces(tpm0: TpmFile) -> None:
    assert tpm0.write(GET_RANDOM_8) == len(GET_RANDOM_8)
    header = tpm0.read(10)
    assert struct.unpack(">HII", header) == (cmd.TPM_ST_NO_SESSIONS, GET_RANDOM_8_REPLY, 0)
    rest = tpm0.read(4096)
    assert len(rest) == GET_RANDOM_8_REPLY - 10
    assert tpm0.read(4096) == b""  # nothing pending: EOF


def test_nothing_pending_reads_as_eof(tpm0: TpmFile) -> None:
    assert tpm0.read(4096) == b""


def test_write_checks_come_in_the_kernels_order(tpm0: TpmFile) -> None:
    tpm0.write(GET_RANDOM_8)  # a response pending and unread
    too_big = refused(tpm0.write, GET_RANDOM_8 + bytes(TPM_BUFSIZE))
    assert too_big.errno == errno.E2BIG and "4108 bytes exceeds the 4096-byte" in too_big.message
    busy = refused(tpm0.write, b"\x80")  # EBUSY before EINVAL
    assert busy.errno == errno.EBUSY and "20-byte response is unread" in busy.message
    assert len(tpm0.read(4096)) == GET_RANDOM_8_REPLY  # the pending response survived


def test_short_commands_are_einval_and_commandsize_0_is_enodata(tpm0: TpmFile) -> None:
    short = refused(tpm0.write, b"\x80\x01\x00\x00\x00")
    assert short.errno == errno.EINVAL and "shorter than 6 bytes" in short.message
    truncated = refused(tpm0.write, GET_RANDOM_8[:-1])
    assert truncated.errno == errno.EINVAL
    assert "shorter than its header's commandSize 12" in truncated.message
    empty = refused(tpm0.write, b"\x80\x01\x00\x00\x00\x00")
    assert empty.errno == errno.ENODATA


def test_bytes_after_commandsize_are_ignored(tpm0: TpmFile) -> None:
    tpm0.write(GET_RANDOM_8 + b"trailing junk")
    assert cmd.response_code(tpm0.read(4096)) == cmd.TPM_RC_SUCCESS


def test_any_partial_read_allows_the_next_write_which_drops_the_rest(tpm0: TpmFile) -> None:
    tpm0.write(GET_RANDOM_8)
    tpm0.read(1)
    tpm0.write(cmd.get_random(16))
    assert len(tpm0.read(4096)) == 10 + 2 + 16


def test_a_zero_byte_read_discards_the_response(tpm0: TpmFile) -> None:
    tpm0.write(GET_RANDOM_8)
    assert tpm0.read(0) == b""
    assert tpm0.read(4096) == b""
    tpm0.write(GET_RANDOM_8)  # not EBUSY


def test_an_unread_response_is_dropped_after_120_s(vtpm: VTpm) -> None:
    now = [1000.0]
    file = TpmFile("/dev/tpm0", vtpm.transmit, clock=lambda: now[0])
    file.write(GET_RANDOM_8)
    now[0] += USER_READ_TIMEOUT - 1
    assert refused(file.write, GET_RANDOM_8).errno == errno.EBUSY
    now[0] += 1
    file.write(GET_RANDOM_8)  # the timer dropped the first response
    assert len(file.read(4096)) == GET_RANDOM_8_REPLY


def test_tpm0_is_exclusive_until_its_opener_closes(vtpm: VTpm) -> None:
    first = vtpm.open_tpm()
    busy = refused(vtpm.open_tpm)
    assert busy.errno == errno.EBUSY and busy.message.startswith("/dev/tpm0: another process")
    rm = vtpm.open_tpmrm()  # the resource manager is not exclusive
    assert first.release() is None  # nothing to flush: tpm0 is free again at once
    first.release()  # a second release changes nothing
    vtpm.open_tpm().release()
    flush = rm.release()  # the space's flush, which sends commands, is handed back
    assert flush is not None
    flush()
    assert rm.release() is None


def test_close_drops_the_pending_response(vtpm: VTpm) -> None:
    file = vtpm.open_tpm()
    file.write(GET_RANDOM_8)
    file.release()
    assert file.read(4096) == b""


def test_a_nonblocking_file_reports_execution_errors_from_read(vtpm: VTpm) -> None:
    file = vtpm.open_tpm(nonblocking=True)
    try:
        assert file.write(b"\x80\x01\x00\x00\x00\x00") == 6  # commandSize 0: accepted...
        assert refused(file.read, 4096).errno == errno.ENODATA  # ...and failed on read
        assert file.read(4096) == b""
        short = refused(file.write, b"\x80\x01")  # the write's own checks stay on write
        assert short.errno == errno.EINVAL
    finally:
        file.release()


def test_a_powered_off_tpm_times_out(vtpm: VTpm, tpm0: TpmFile) -> None:
    vtpm.store_power("0")
    timed_out = refused(tpm0.write, GET_RANDOM_8)
    assert timed_out.errno == errno.ETIMEDOUT and "powered off" in timed_out.message
    vtpm.store_power("1")
    tpm0.write(GET_RANDOM_8)  # nothing was left pending by the failure
    assert cmd.response_code(tpm0.read(4096)) == cmd.TPM_RC_SUCCESS
