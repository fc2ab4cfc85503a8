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
from tests.integration.reference_swtpm import recv_response
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


def serve(pump: _pump.Pump, server: socket.socket, listener: int = -1
          ) -> tuple[int, bytes, bytes]:
    """serve() on ``server``: what came, the request, the response (the descriptor it
    returns is ``server``'s, no errno)."""
    what, fd, request, response, error = pump.serve(server.fileno(), listener)
    assert (fd, error) == (server.fileno(), 0)
    return what, request, response


def serve_one(pump: _pump.Pump, pair: tuple[socket.socket, socket.socket], request: bytes,
              listener: int = -1) -> tuple[int, bytes, bytes]:
    """Send ``request`` and end the client's side; what serve() returned, and what the
    client got back."""
    client, server = pair
    client.sendall(request)
    client.shutdown(socket.SHUT_WR)
    what, data, response = serve(pump, server, listener)
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
            assert serve(pump, server, listener.fileno()) == (_pump.HANDOVER, b"", b"")


def test_a_long_connection_takes_the_accepting_over(
        pump: _pump.Pump, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    responses: list[bytes] = []

    def commands() -> None:
        for _ in range(_pump.LONG_CONNECTION):
            client.sendall(cmd.get_random(8))
            responses.append(recv_response(client))

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0apfs-test-pump-quiet")
        listener.listen(1)
        talker = threading.Thread(target=commands)
        talker.start()
        try:
            assert serve(pump, server, listener.fileno()) == (_pump.HANDOVER, b"", b"")
        finally:
            talker.join(10)
    assert [len(ok(response)) for response in responses] == \
        [10 + 2 + 8] * _pump.LONG_CONNECTION


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
    what, request, response = serve(pump, server)
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
    assert serve(pump, server) == (_pump.CLOSED, b"", b"")
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


# -- accept(): a listener's connections ----------------------------------------------------

@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def connection_per_command(port: int, command: bytes) -> bytes:
    """What the swtpm TCTI does: connect, send, read the response, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(command)
        return recv_response(client)


def test_accept_serves_connection_after_connection_in_c_until_stopped(
        vtpm: VTpm, pump: _pump.Pump, listener: socket.socket) -> None:
    outcomes: list[tuple[int, int, bytes, bytes, int]] = []
    acceptor = threading.Thread(target=lambda: outcomes.append(pump.accept(listener.fileno())))
    acceptor.start()
    port = listener.getsockname()[1]
    before = pcr(vtpm.engine, "sha256", 16)
    for _ in range(5):
        ok(connection_per_command(port, EXTEND_16))
    assert pcr(vtpm.engine, "sha256", 16) != before and not outcomes  # all in C
    with socket.create_connection(("127.0.0.1", port)):  # idle, as C serves it
        time.sleep(0.05)  # most likely accepted by then (either way the test holds)
        pump.stop()
        listener.shutdown(socket.SHUT_RDWR)  # as Servers.close() does next
        acceptor.join(10)
    assert not acceptor.is_alive()
    what, fd, *_ = outcomes[0]
    assert what in (_pump.STOPPED, _pump.FAILED) and fd == -1


def test_accept_hands_a_connection_that_needs_python_over_with_what_it_read(
        pump: _pump.Pump, listener: socket.socket) -> None:
    prefixed = struct.pack(">IBI", sw.TPM_SEND_COMMAND, 0, len(EXTEND_16)) + EXTEND_16
    with socket.create_connection(listener.getsockname(), timeout=10) as client:
        client.sendall(prefixed)
        what, fd, request, response, error = pump.accept(listener.fileno())
        with socket.socket(fileno=fd) as handed:  # Python's now
            assert (what, request, response, error) == (_pump.OTHER, prefixed, b"", 0)
            assert handed.getpeername() == client.getsockname()
            # The options apfs.tpm.sockets gives its connections.
            assert handed.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            timeout = struct.unpack("ll", handed.getsockopt(socket.SOL_SOCKET,
                                                            socket.SO_SNDTIMEO, 16))
            assert timeout == (5, 0)


# -- swtpm's control channel: CMD_SET_LOCALITY ---------------------------------------------

@pytest.fixture
def control_pump(core: sw.Swtpm) -> _pump.Pump:
    path = core.control_fast_path()
    assert path is not None and path.framing == "swtpm-control"
    return _pump.Pump(path.process, path.locks, path.gate, path.stores, _pump.CONTROL,
                      locality=path.locality)


@pytest.mark.parametrize("request_bytes", [
    struct.pack(">IB", sw.CMD_SET_LOCALITY, 3),  # tpm2-tss: a bare u8
    struct.pack(">II", sw.CMD_SET_LOCALITY, 3 << 24),  # QEMU: padded to 4 bytes
], ids=["bare", "padded"])
def test_set_locality_is_answered_in_c_and_sets_the_front_ends_locality(
        core: sw.Swtpm, control_pump: _pump.Pump, pair: tuple[socket.socket, socket.socket],
        request_bytes: bytes) -> None:
    assert serve_one(control_pump, pair, request_bytes) == (_pump.CLOSED, b"", bytes(4))
    assert core.locality == 3


@pytest.mark.parametrize("request_bytes", [
    struct.pack(">IB", sw.CMD_SET_LOCALITY, 5),  # BAD_LOCALITY, with its log line: Python's
    struct.pack(">I", sw.CMD_GET_TPMESTABLISHED),  # any other request
    struct.pack(">IB", sw.CMD_SET_LOCALITY, 3) * 2,  # two at once
], ids=["locality-5", "other-request", "two-requests"])
def test_other_control_requests_come_back_unanswered(core: sw.Swtpm, control_pump: _pump.Pump,
                                                     pair: tuple[socket.socket,
                                                                 socket.socket],
                                                     request_bytes: bytes) -> None:
    assert serve_one(control_pump, pair, request_bytes) == (_pump.OTHER, request_bytes, b"")
    assert core.locality == 0


def test_set_locality_waits_its_turn_the_python_way_while_the_tpm_is_held(
        vtpm: VTpm, core: sw.Swtpm, control_pump: _pump.Pump,
        pair: tuple[socket.socket, socket.socket]) -> None:
    request = struct.pack(">IB", sw.CMD_SET_LOCALITY, 2)
    outcome = vtpm.exclusive(lambda send: serve_one(control_pump, pair, request))
    assert outcome == (_pump.OTHER, request, b"") and core.locality == 0


# -- the mssim platform port: signals with nothing to do -----------------------------------

@pytest.fixture
def platform_pump(vtpm: VTpm) -> _pump.Pump:
    path = mssim.platform_fast_path(vtpm)
    assert path is not None and path.framing == "mssim-platform"
    return _pump.Pump(path.process, path.locks, path.gate, path.stores, _pump.PLATFORM,
                      acks=path.acks)


@pytest.mark.parametrize("code", [mssim.TPM_SIGNAL_POWER_ON, mssim.TPM_SIGNAL_NV_ON])
def test_a_signal_with_nothing_to_do_is_acknowledged_in_c(
        vtpm: VTpm, platform_pump: _pump.Pump, pair: tuple[socket.socket, socket.socket],
        code: int) -> None:
    assert serve_one(platform_pump, pair, struct.pack(">I", code)) == \
        (_pump.CLOSED, b"", bytes(4))
    assert vtpm.engine.powered


def test_a_signal_that_does_something_is_pythons(vtpm: VTpm, platform_pump: _pump.Pump,
                                                 pair: tuple[socket.socket, socket.socket]
                                                 ) -> None:
    power_off = struct.pack(">I", mssim.TPM_SIGNAL_POWER_OFF)
    assert serve_one(platform_pump, pair, power_off) == (_pump.OTHER, power_off, b"")
    assert vtpm.engine.powered


def test_power_on_of_a_powered_off_tpm_is_pythons(vtpm: VTpm, platform_pump: _pump.Pump,
                                                  pair: tuple[socket.socket, socket.socket]
                                                  ) -> None:
    vtpm.engine.power_off()
    power_on = struct.pack(">I", mssim.TPM_SIGNAL_POWER_ON)
    assert serve_one(platform_pump, pair, power_on) == (_pump.OTHER, power_on, b"")
    assert not vtpm.engine.powered
