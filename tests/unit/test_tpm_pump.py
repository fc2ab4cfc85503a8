"""The swtpm data channel's loop in C (apfs.tpm._pump) against a real vTPM over socket pairs:
what it runs itself, what it hands back unrun, what it hands back run with the lock held,
and when it gives the accepting thread back."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from apfs.tpm import _pump
from tests.unit.tpm_helpers import ok, pcr, require_libtpms
from vdev.tpm import commands as cmd
from vdev.tpm import mssim
from vdev.tpm import swtpm as sw
from vdev.tpm.vtpm import VTpm

require_libtpms()

EXTEND_16 = cmd.pcr_extend(16, {"sha256": b"\x5a" * 32})
INDEX = 0x01000040


@pytest.fixture
def core(vtpm: VTpm) -> sw.Swtpm:
    return sw.Swtpm(vtpm)


@pytest.fixture
def pump(core: sw.Swtpm) -> _pump.Pump:
    path = core.fast_path()
    assert path is not None
    return _pump.Pump(path.process, path.locks, path.gate, path.stores, _pump.SWTPM)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    with client, server:
        yield client, server


def serve_one(pump: _pump.Pump, pair: tuple[socket.socket, socket.socket], request: bytes,
              listener: int = -1) -> tuple[int, bytes, bytes]:
    """Send ``request`` and end the client's side; what serve() returned, and what the
    client got back."""
    client, server = pair
    client.sendall(request)
    client.shutdown(socket.SHUT_WR)
    what, data, response = pump.serve(server.fileno(), listener)
    server.shutdown(socket.SHUT_WR)
    if what == _pump.TAIL:
        return what, response, client.recv(65536)
    assert response == b""
    return what, data, client.recv(65536)


def test_a_raw_command_runs_in_c_on_the_same_tpm(vtpm: VTpm, pump: _pump.Pump,
                                                 pair: tuple[socket.socket, socket.socket]
                                                 ) -> None:
    before = pcr(vtpm.engine, "sha256", 16)
    what, data, response = serve_one(pump, pair, EXTEND_16)
    assert (what, data) == (_pump.CLOSED, b"")
    ok(response)
    assert pcr(vtpm.engine, "sha256", 16) != before  # the TPM that Python sees
    assert not vtpm.busy


def refuse_power(vtpm: VTpm, core: sw.Swtpm) -> None:
    vtpm.engine.power_off()


def refuse_locality(vtpm: VTpm, core: sw.Swtpm) -> None:
    core.locality = 3  # CMD_SET_LOCALITY: the command must run at locality 3


def refuse_device(vtpm: VTpm, core: sw.Swtpm) -> None:
    vtpm.virtio.reset()  # no DRIVER_OK: VirtioTpm refuses with EIO


@pytest.mark.parametrize("close_gate", [refuse_power, refuse_locality, refuse_device])
def test_a_closed_gate_hands_the_bytes_back_unrun(vtpm: VTpm, core: sw.Swtpm, pump: _pump.Pump,
                                                  pair: tuple[socket.socket, socket.socket],
                                                  close_gate: object) -> None:
    assert callable(close_gate)
    close_gate(vtpm, core)
    what, data, response = serve_one(pump, pair, EXTEND_16)
    assert (what, data, response) == (_pump.OTHER, EXTEND_16, b"")
    assert not vtpm.busy


@pytest.mark.parametrize("request_bytes", [
    struct.pack(">IBI", sw.TPM_SEND_COMMAND, 0, len(EXTEND_16)) + EXTEND_16,  # TCG prefix
    EXTEND_16[:9],  # less than a header: swtpm reads on
    EXTEND_16 + b"\0" * (4097 - len(EXTEND_16)),  # beyond the virtio buffer
    b"\x12\x34" + EXTEND_16[2:],  # not a TPM 2.0 tag: the TPM answers it, in Python
], ids=["prefixed", "short", "oversized", "bad-tag"])
def test_what_python_frames_differently_comes_back_unrun(vtpm: VTpm, pump: _pump.Pump,
                                                         pair: tuple[socket.socket,
                                                                     socket.socket],
                                                         request_bytes: bytes) -> None:
    before = pcr(vtpm.engine, "sha256", 16)
    assert serve_one(pump, pair, request_bytes) == (_pump.OTHER, request_bytes, b"")
    assert pcr(vtpm.engine, "sha256", 16) == before


def test_a_tpm_held_by_another_caller_hands_the_command_back_to_wait_its_turn(
        vtpm: VTpm, pump: _pump.Pump, pair: tuple[socket.socket, socket.socket]) -> None:
    before = pcr(vtpm.engine, "sha256", 16)
    outcome = vtpm.exclusive(lambda send: serve_one(pump, pair, EXTEND_16))
    assert outcome == (_pump.OTHER, EXTEND_16, b"")
    assert pcr(vtpm.engine, "sha256", 16) == before


def test_a_change_of_permanent_state_is_finished_in_python_before_the_response_leaves(
        vtpm: VTpm, core: sw.Swtpm, pump: _pump.Pump,
        pair: tuple[socket.socket, socket.socket]) -> None:
    saved: list[bytes] = []
    vtpm.persist = saved.append
    define = cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, 8, cmd.NV_ORDINARY_OWNER)
    what, response, sent = serve_one(pump, pair, define)
    assert what == _pump.TAIL and sent == b""  # nothing left before the save
    assert vtpm.busy and not saved  # the vTPM's lock is still held
    path = core.fast_path()
    assert path is not None and path.finish is not None
    ok(path.finish(define, response))
    assert len(saved) == 1 and not vtpm.busy
    # What was saved is the state with the index: a fresh read finds it.
    ok(vtpm.transmit(cmd.nv_write(cmd.TPM_RH_OWNER, INDEX, b"8 bytes!")))


def test_a_waiting_client_takes_the_accepting_over_before_this_one_is_read(
        pump: _pump.Pump, pair: tuple[socket.socket, socket.socket]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0apfs-test-pump-listener")
        listener.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as newcomer:
            newcomer.connect("\0apfs-test-pump-listener")
            server = pair[1]
            assert pump.serve(server.fileno(), listener.fileno()) == (_pump.HANDOVER, b"", b"")


def test_a_second_command_marks_a_long_connection_and_takes_the_accepting_over(
        pump: _pump.Pump, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    responses: list[bytes] = []

    def two_commands() -> None:
        for _ in range(2):
            client.sendall(cmd.get_random(8))
            responses.append(client.recv(4096))

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0apfs-test-pump-quiet")
        listener.listen(1)
        talker = threading.Thread(target=two_commands)
        talker.start()
        try:
            assert pump.serve(server.fileno(), listener.fileno()) == (_pump.HANDOVER, b"", b"")
        finally:
            talker.join(10)
    assert [len(ok(response)) for response in responses] == [10 + 2 + 8] * 2


# -- the mssim command port ----------------------------------------------------------------

@pytest.fixture
def port(vtpm: VTpm) -> mssim.CommandPort:
    return mssim.CommandPort(vtpm, mssim.CommandSizes())


def mssim_pump(port: mssim.CommandPort) -> _pump.Pump:
    path = mssim.fast_path(port.tpm, port.sizes)
    assert path is not None and path.framing == "mssim"
    return _pump.Pump(path.process, path.locks, path.gate, path.stores, _pump.MSSIM,
                      path.limits)


def send_command(command: bytes, locality: int = 0) -> bytes:
    return struct.pack(">IBI", mssim.TPM_SEND_COMMAND, locality, len(command)) + command


def test_mssim_a_command_beyond_the_size_record_is_finished_by_python_which_records_it(
        port: mssim.CommandPort, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    pump = mssim_pump(port)
    big = cmd.get_random(32)

    def rest_later() -> None:
        time.sleep(0.05)  # most likely after the loop read the prefix (either way is right)
        client.sendall(send_command(big)[9:])
        client.shutdown(socket.SHUT_WR)

    # As tpm2-tss writes it: the prefix, then the command.  It is larger than anything
    # recorded: Python records it.
    client.sendall(send_command(big)[:9])
    talker = threading.Thread(target=rest_later)
    talker.start()
    what, request, response = pump.serve(server.fileno(), -1)
    talker.join(10)
    assert (what, request) == (_pump.TAIL, send_command(big))
    path = mssim.fast_path(port.tpm, port.sizes)
    assert path is not None and path.finish is not None
    framed = path.finish(request, response)
    size = struct.unpack(">I", framed[:4])[0]
    assert framed[4 + size:] == b"\0\0\0\0" and len(ok(framed[4:4 + size])) == 10 + 2 + 32
    assert [limit.value for limit in port.sizes.limits] == [len(big), 10 + 2 + 32]


def test_mssim_commands_within_the_record_run_in_c_and_come_back_framed(
        port: mssim.CommandPort, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    port.sizes.record(cmd.get_random(32), b"\0" * 64)  # a larger command went before
    pump = mssim_pump(port)
    client.sendall(send_command(cmd.get_random(8))[:9])
    client.sendall(send_command(cmd.get_random(8))[9:])
    client.shutdown(socket.SHUT_WR)
    assert pump.serve(server.fileno(), -1) == (_pump.CLOSED, b"", b"")
    framed = client.recv(4096)
    assert struct.unpack(">I", framed[:4])[0] == 10 + 2 + 8 and framed[-4:] == b"\0\0\0\0"
    ok(framed[4:-4])
    assert port.sizes.take()[4:8] == cmd.get_random(32)[6:10]  # the record is unchanged


@pytest.mark.parametrize("request_bytes", [
    send_command(cmd.get_random(8), locality=3),  # runs at locality 3: Python's
    struct.pack(">I", mssim.TPM_SIGNAL_HASH_START),  # not a command
    send_command(cmd.get_random(8)) * 2,  # two at once: Python answers both
], ids=["locality-3", "hash-start", "pipelined"])
def test_mssim_requests_python_serves_come_back_unrun(port: mssim.CommandPort,
                                                      pair: tuple[socket.socket,
                                                                  socket.socket],
                                                      request_bytes: bytes) -> None:
    port.sizes.record(b"\0" * 4096, b"\0" * 4096)
    assert serve_one(mssim_pump(port), pair, request_bytes) == (_pump.OTHER, request_bytes,
                                                                 b"")
